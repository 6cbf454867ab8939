"""Stage 1 of `soft-dist predict`: photo files -> aligned face crops, exactly as `soft-dist shard` made
the training images (the settings come from the model's metadata).

A batch is a dict of numpy columns (Ray Data's "numpy" batch format, also used in one process):

    in:  path [B] str, and optionally data [B] bytes: the photo files' contents, read instead of the
         files themselves (`soft-dist serve` gets photos in requests; ``path`` then only names them).
         Other columns (e.g. Ray Data's row order) pass through.
    out: path [B] str, status [B] str, error [B] str, face_found [B] int8 (1 yes, 0 no, -1 not looked for),
         box [B, 4] float64 (x0, y0, x1, y1 in the photo's pixels; NaN without a face),
         face_prob [B] float64 (the detector's probability; NaN without a face),
         jpeg [B] bytes (the aligned face, JPEG-encoded at the shards' quality; b"" when not classified)

The aligned face is re-encoded as JPEG at the shards' quality so that a photo that was also sharded is
classified from the same pixels as in `soft-dist eval` (and the bytes are small between Ray stages).
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass

import numpy as np

# Row statuses; every row has one.
OK = "ok"  # classified (the face found by MTCNN, or the whole photo with --align none)
CENTRE_CROP = "no_face_centre_crop"  # no face found; the centred crop was classified (--on-no-face crop)
NO_FACE = "no_face"  # no face found; not classified (--on-no-face skip)
UNREADABLE = "unreadable"  # not an image, corrupt or truncated; ``error`` says why
MISSING = "missing"  # no such file (or a pattern that matched nothing)
CLASSIFIED = (OK, CENTRE_CROP)

ALIGN_CHOICES = ("model", "mtcnn", "none")
NO_FACE_CHOICES = ("skip", "crop")
# Photos are decoded to at most this many pixels (about 2000 x 2000): MTCNN looks at the photo at no more
# than 640 px on its long side and the aligned crop is at most 224 px, while a 9000 x 9000 photo decoded
# at full size takes 243 MB (`predict --max-pixels`).
DEFAULT_MAX_PIXELS = 4_000_000
DEFAULT_JPEG_QUALITY = 95  # `soft-dist shard --quality`'s default, for models whose metadata predates the field


@dataclass(frozen=True)
class AlignSettings:
    """How to turn a photo into the classifier's input, as at shard time.

    method: "mtcnn" (detect, then warp the five landmarks onto the template) or "none" (centred square
    crop, for photos that are already aligned face crops); size: side of the crop in pixels (the shards');
    margin: the template's context; jpeg_quality: the shards' JPEG quality; on_no_face: "skip" or "crop"."""

    method: str
    size: int
    margin: float
    jpeg_quality: int
    on_no_face: str = "skip"
    max_pixels: int = DEFAULT_MAX_PIXELS

    @classmethod
    def from_model(cls, alignment: dict, image_size: int, align: str = "model",
                   on_no_face: str = "skip", max_pixels: int = DEFAULT_MAX_PIXELS) -> "AlignSettings":
        """Settings from model metadata's ``alignment`` dict ({} for a model trained on unnamed data),
        with ``align`` "mtcnn" or "none" overriding the model's method."""
        if align not in ALIGN_CHOICES:
            raise ValueError(f"--align must be one of {ALIGN_CHOICES}, got {align!r}")
        if on_no_face not in NO_FACE_CHOICES:
            raise ValueError(f"--on-no-face must be one of {NO_FACE_CHOICES}, got {on_no_face!r}")
        method = (alignment.get("method") or "none") if align == "model" else align
        margin = alignment.get("margin")
        return cls(method=method, size=int(alignment.get("shard_image_size") or image_size),
                   margin=0.2 if margin is None else float(margin),
                   jpeg_quality=int(alignment.get("jpeg_quality") or DEFAULT_JPEG_QUALITY), on_no_face=on_no_face,
                   max_pixels=max_pixels)


def _empty_columns(paths: np.ndarray) -> dict[str, np.ndarray]:
    n = len(paths)
    return {
        "path": np.asarray(paths, dtype=object),
        "status": np.full(n, OK, dtype=object),
        "error": np.full(n, "", dtype=object),
        "face_found": np.full(n, -1, dtype=np.int8),
        "box": np.full((n, 4), math.nan),
        "face_prob": np.full(n, math.nan),
        "jpeg": np.full(n, b"", dtype=object),
    }


class FacePreparer:
    """Callable on a batch of paths (see the module docstring). One MTCNN per instance, loaded on first use,
    so a Ray actor loads it once and a process that only uses --align none never imports torch."""

    def __init__(self, settings: AlignSettings, device: str = "cpu", detector_batch: int = 16,
                 torch_threads: int | None = None):
        self.settings, self.device, self.detector_batch = settings, device, detector_batch
        self.torch_threads = torch_threads
        self._detector = None

    @property
    def detector(self):
        if self._detector is None:
            from soft_dist.shard.align import FaceDetector

            if self.torch_threads is not None:
                import torch

                torch.set_num_threads(self.torch_threads)
            self._detector = FaceDetector(device=self.device, batch_size=self.detector_batch)
        return self._detector

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from soft_dist.shard.align import centre_crop, warp
        from soft_dist.shard.encode import jpeg_bytes, read_rgb_capped

        s = self.settings
        contents = batch.get("data")
        out = {**{k: v for k, v in batch.items() if k not in ("path", "data")}, **_empty_columns(batch["path"])}
        photos: dict[int, object] = {}
        scales: dict[int, float] = {}  # photo's long side / decoded long side
        for i, path in enumerate(out["path"]):
            if contents is not None:
                path = io.BytesIO(contents[i])
            elif not os.path.isfile(path):
                out["status"][i] = MISSING
                out["error"][i] = ("not a file" if os.path.exists(path) else
                                   "no file matches this pattern" if any(c in path for c in "*?[") else "no such file")
                continue
            try:
                photos[i], scales[i] = read_rgb_capped(path, s.max_pixels)
            except Exception as err:  # any decoder error is a bad input, never a crash
                out["status"][i] = UNREADABLE
                out["error"][i] = f"{type(err).__name__}: {err}"
        rows = list(photos)
        if s.method == "mtcnn" and rows:
            detections = self.detector.detect([photos[i] for i in rows])
        else:
            detections = [None] * len(rows)
        for i, det in zip(rows, detections):
            photo = photos[i]
            if s.method == "mtcnn" and det is not None:
                face = warp(photo, det.landmarks, s.size, s.margin)
                out["face_found"][i] = 1
                out["box"][i] = [float(v) * scales[i] for v in det.box]  # in the photo's own pixels
                out["face_prob"][i] = det.score
            elif s.method == "mtcnn":
                out["face_found"][i] = 0
                if s.on_no_face == "skip":
                    out["status"][i] = NO_FACE
                    continue
                out["status"][i] = CENTRE_CROP
                face = centre_crop(photo, s.size)
            else:
                face = centre_crop(photo, s.size)
            out["jpeg"][i] = jpeg_bytes(face, s.jpeg_quality)
        return out
