"""Turning a chunk of records into encoded shard samples (runs in worker processes or Ray tasks).

A chunk is the list of (idx, Record) pairs planned for one shard. The result depends only on the chunk
and the options, never on which worker ran it, so shards are identical with any parallelism.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps

from soft_dist.shard.layouts import Record
from soft_dist.shard.writer import Sample


@dataclass(frozen=True)
class EncodeOptions:
    dataset: str
    classes: tuple[str, ...]
    size: int = 224
    align: str = "mtcnn"  # "mtcnn" or "none"
    margin: float = 0.2
    quality: int = 95
    on_no_face: str = "crop"  # "crop": centred crop, counted; "skip": leave the sample out, counted
    device: str = "cpu"
    batch_size: int = 16
    box_context: float = 0.3  # a dataset face box is grown by this share on each side before detection


@dataclass
class ChunkResult:
    """Samples in chunk order, plus what happened to the rest."""

    samples: list[Sample]
    faces_found: int = 0
    fallbacks: list[str] = field(default_factory=list)  # sources given a centred crop
    skipped_no_face: list[str] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)  # {"source", "reason"}: unreadable images


_DETECTORS: dict = {}  # one detector per process and (device, batch size): loaded on first use
_THREADS: int | None = None  # torch threads for this process (init_worker), None: torch's default


def _detector(options: EncodeOptions):
    from soft_dist.shard.align import FaceDetector

    key = (options.device, options.batch_size)
    if key not in _DETECTORS:
        if _THREADS is not None:
            import torch

            torch.set_num_threads(_THREADS)
        _DETECTORS[key] = FaceDetector(device=options.device, batch_size=options.batch_size)
    return _DETECTORS[key]


def read_rgb(path) -> Image.Image:
    """The RGB image in the file ``path``, turned upright by its EXIF orientation; raises (OSError,
    ValueError, ...) for unreadable, corrupt or truncated files and for non-images."""
    with Image.open(path) as img:
        img.load()  # decodes fully now: truncated files fail here, not later
        img = ImageOps.exif_transpose(img)
        return img.convert("RGB")


def read_rgb_capped(path, max_pixels: int) -> tuple[Image.Image, float]:
    """:func:`read_rgb` holding at most ``max_pixels`` pixels -> (image, scale), ``scale`` = the photo's
    long side / the returned long side (1.0 when it was small enough).

    A JPEG is reduced while it is decoded (1/2, 1/4 or 1/8 scale, never below the cap's size); other
    formats are decoded, then box-reduced by an integer factor before any other copy is made, so one
    full-size decode at a time is the most a huge photo costs."""
    with Image.open(path) as img:
        full_long = max(img.size)
        if img.size[0] * img.size[1] > max_pixels:
            f = math.sqrt(max_pixels / (img.size[0] * img.size[1]))
            img.draft("RGB", (max(1, int(img.size[0] * f)), max(1, int(img.size[1] * f))))
        img.load()
        if img.mode not in ("RGB", "RGBA", "L", "LA"):
            img = img.convert("RGB")  # e.g. palette images, which reduce() does not take
        pixels = img.size[0] * img.size[1]
        if pixels > max_pixels:
            img = img.reduce(math.ceil(math.sqrt(pixels / max_pixels)))
        img = ImageOps.exif_transpose(img)
        if img.mode != "RGB":
            img = img.convert("RGB")
    return img, full_long / max(img.size)


def load_image(record: Record) -> Image.Image:
    """RGB image of a record; raises (OSError, ValueError, ...) for unreadable, corrupt or truncated files."""
    if record.pixels is not None:
        return Image.fromarray(np.asarray(record.pixels, dtype=np.uint8)).convert("RGB")
    return read_rgb(record.path)


def _region(image: Image.Image, box, context: float) -> tuple[Image.Image, tuple[float, float]]:
    """The part of ``image`` to look for a face in: a dataset face box grown by ``context`` (a square
    around its centre, padded with black outside the image), or the whole image."""
    if box is None:
        return image, (0.0, 0.0)
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * (1 + 2 * context)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    right, bottom = left + int(round(side)), top + int(round(side))
    return image.crop((left, top, right, bottom)), (float(left), float(top))


def jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    """``image`` encoded as a shard sample's JPEG (also what `soft-dist predict` classifies, for the same pixels)."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_chunk(items: list[tuple[int, Record]], options: EncodeOptions) -> ChunkResult:
    """Load, align (or crop), JPEG-encode ``items``; samples keep the chunk order."""
    result = ChunkResult(samples=[])
    loaded: list[tuple[int, Record, Image.Image, tuple[float, float]]] = []
    for idx, rec in items:
        try:
            image = load_image(rec)
            region, offset = _region(image, rec.box, options.box_context)
        except Exception as err:  # any decoder error is a bad input, never a crash
            result.failures.append({"source": rec.source, "reason": f"{type(err).__name__}: {err}"})
            continue
        loaded.append((idx, rec, region, offset))

    detections = [None] * len(loaded)
    if options.align == "mtcnn" and loaded:
        detections = _detector(options).detect([region for _, _, region, _ in loaded])

    size = options.size
    for (idx, rec, region, (ox, oy)), det in zip(loaded, detections):
        meta = {
            "source": rec.source,
            "dataset": options.dataset,
            "split": rec.split,
            "label": rec.label,
            "class": options.classes[rec.label],
            "orig_label": rec.orig_label,
            "orig_index": rec.orig_index,
            "box": [round(float(v), 2) for v in rec.box] if rec.box is not None else None,
            "landmarks": None,
            "score": None,
            "align": options.align,
            **rec.extra,
        }
        if options.align == "mtcnn" and det is not None:
            from soft_dist.shard.align import warp

            face = warp(region, det.landmarks, size, options.margin)
            result.faces_found += 1
            meta["box"] = (det.box + [ox, oy, ox, oy]).round(2).tolist()
            meta["landmarks"] = (det.landmarks + [ox, oy]).round(2).tolist()
            meta["score"] = det.score
        elif options.align == "mtcnn" and options.on_no_face == "skip":
            result.skipped_no_face.append(rec.source)
            continue
        else:
            from soft_dist.shard.align import centre_crop

            face = centre_crop(region, size)
            if options.align == "mtcnn":
                result.fallbacks.append(rec.source)
                meta["align"] = "centre-crop"
        result.samples.append(Sample(idx=idx, label=rec.label, jpeg=jpeg_bytes(face, options.quality), meta=meta))
    return result


def init_worker(threads: int) -> None:
    """Process-pool initialiser: bound torch's threads (set when the detector loads, so workers that do
    not align never import torch) so N workers do not oversubscribe the cores."""
    global _THREADS
    _THREADS = max(1, threads)
