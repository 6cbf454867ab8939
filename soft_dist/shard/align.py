"""Face alignment: MTCNN five-point landmarks -> similarity transform onto a canonical template.

Points are (x, y) in pixels, ordered left eye, right eye (as seen in the image), nose tip, left mouth
corner, right mouth corner. The detector (facenet-pytorch MTCNN, weights inside its wheel) is created
lazily, once per process, so importing this module stays cheap and worker processes each own one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# Mean five-point positions of a frontal face in a 112x112 crop (the common ArcFace reference layout).
# Eyes sit at 46% of the height, so brows and mouth (the expression cues) stay inside the crop.
TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)


def template(size: int, margin: float = 0.0) -> np.ndarray:
    """Template points [5, 2] for a ``size`` x ``size`` output. ``margin`` m shrinks the template about the
    centre by 1 / (1 + m): m = 0.2 leaves 20% more context around the face."""
    if margin <= -1:
        raise ValueError(f"--margin must be > -1, got {margin}")
    centre = 56.0
    return ((TEMPLATE_112 - centre) / (1.0 + margin) + centre) * (size / 112.0)


def similarity_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) taking src [N, 2] onto dst [N, 2];
    returns the 2x3 matrix M with dst ~ M @ [x, y, 1]. Umeyama's closed form (no reflection)."""
    src, dst = np.asarray(src, float), np.asarray(dst, float)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # keep a proper rotation, never a mirror
        sign[1, 1] = -1
    rot = u @ sign @ vt
    var_s = (s0**2).sum() / len(src)
    scale = (sig * np.diag(sign)).sum() / var_s
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def apply_matrix(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, float)
    return points @ m[:, :2].T + m[:, 2]


def warp(image: Image.Image, landmarks: np.ndarray, size: int, margin: float = 0.0) -> Image.Image:
    """Warp ``image`` so ``landmarks`` [5, 2] land on :func:`template` (size, margin); RGB size x size."""
    m = similarity_matrix(landmarks, template(size, margin))
    # PIL wants the output -> input map: invert the 2x3 matrix.
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)[:2]
    return image.transform((size, size), Image.AFFINE, data=tuple(inv.ravel()), resample=Image.BILINEAR)


def centre_crop(image: Image.Image, size: int) -> Image.Image:
    """The largest centred square, resized to size x size (the fallback when no face is found)."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)


@dataclass
class Detection:
    box: np.ndarray  # [4] x0, y0, x1, y1 in the input image's pixels
    landmarks: np.ndarray  # [5, 2]
    score: float


class FaceDetector:
    """Batched MTCNN. Images are rescaled so the longer side is at most ``max_side`` (speed) and the
    shorter side at least ``min_side`` (MTCNN misses faces under ~20 px), then batched with the photos of
    the same scaled size (never padded: a photo's detection does not depend on its batch). Results are mapped back to each
    input image and rounded to 1/100 px, so tiny float differences between thread counts do not change
    the warped pixels."""

    def __init__(self, device: str = "cpu", batch_size: int = 16, max_side: int = 640, min_side: int = 112):
        self.device, self.batch_size, self.max_side, self.min_side = device, batch_size, max_side, min_side
        self._mtcnn = None

    @property
    def mtcnn(self):
        if self._mtcnn is None:
            from facenet_pytorch import MTCNN

            from soft_dist.shard import mtcnn_nms

            mtcnn_nms.install()  # a photo's detection must not depend on its batch-mates

            self._mtcnn = MTCNN(keep_all=True, select_largest=True, device=self.device)
        return self._mtcnn

    def _scale(self, w: int, h: int) -> float:
        s = min(1.0, self.max_side / max(w, h))
        if min(w, h) * s < self.min_side:
            s = min(self.min_side / min(w, h), 4 * self.max_side / max(w, h))
        return s

    def detect(self, images: list[Image.Image]) -> list[Detection | None]:
        """One Detection (the largest face) or None per RGB image."""
        scaled, scales = [], []
        for img in images:
            s = self._scale(*img.size)
            size = (max(1, round(img.width * s)), max(1, round(img.height * s)))
            scaled.append(np.asarray(img.resize(size, Image.BILINEAR) if size != img.size else img))
            scales.append((size[0] / img.width, size[1] / img.height))
        # Only photos of the same (scaled) size share a forward pass: MTCNN picks its image pyramid from the
        # batch's size, so padding a photo to a larger batch-mate changed its detection (by 2-3 px on a real
        # face), and a photo's answer must not depend on which photos came with it (predict's batches,
        # Serve's request batches).
        by_size: dict[tuple[int, int], list[int]] = {}
        for i in range(len(images)):
            by_size.setdefault(scaled[i].shape[:2], []).append(i)
        batches = [same[start : start + self.batch_size] for _, same in sorted(by_size.items())
                   for start in range(0, len(same), self.batch_size)]
        out: list[Detection | None] = [None] * len(images)
        for batch in batches:
            stack = np.stack([scaled[i] for i in batch])
            boxes, probs, points = self.mtcnn.detect(stack, landmarks=True)
            for j, i in enumerate(batch):
                if boxes[j] is None:
                    continue
                # facenet-pytorch returns object arrays under numpy 2: convert explicitly.
                box = np.asarray(np.asarray(boxes[j]).tolist(), float)[0]
                pts = np.asarray(np.asarray(points[j]).tolist(), float)[0]
                score = float(np.asarray(np.asarray(probs[j]).tolist(), float).reshape(-1)[0])
                sx, sy = scales[i]
                box = np.round(box / [sx, sy, sx, sy], 2)
                pts = np.round(pts / [sx, sy], 2)
                out[i] = Detection(box=box, landmarks=pts, score=round(score, 6))
        return out
