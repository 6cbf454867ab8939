"""scikit-learn's bundled digits (1,797 real 8x8 handwritten digits): the offline data set for the demo
and the tests. Images are upsampled to RGB squares so they pass through the same pipelines as faces."""

from __future__ import annotations

import numpy as np

DIGIT_CLASSES = tuple(str(d) for d in range(10))


def load_digits_rgb(image_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 [N, S, S, 3], labels int64 [N]) with N = 1797, S = image_size.

    Upsampling is bilinear (PIL); the 0..16 grey levels are stretched to 0..255."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = (digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    out = np.empty((len(grey), image_size, image_size, 3), dtype=np.uint8)
    for i, img in enumerate(grey):
        big = Image.fromarray(img, mode="L").resize((image_size, image_size), Image.BILINEAR)
        out[i] = np.asarray(big.convert("RGB"))
    return out, digits.target.astype(np.int64)


def harden_digits(grey: np.ndarray, seed: int = 0, block: int = 2, noise_sd: float = 12.0,
                  max_shift: int = 0) -> np.ndarray:
    """A harder copy of 8x8 grey digits ``grey`` uint8 [N, 8, 8] (0..255) -> uint8 [N, 8, 8].

    Each image is shifted by up to ``max_shift`` pixels in x and y, loses a random ``block`` x ``block``
    patch (set to black: part of a stroke is gone, so 1/7, 3/9, 5/6 and 8/9 get confused) and gets Gaussian
    pixel noise of standard deviation ``noise_sd``. The defaults were calibrated so that plain CE at 30%
    symmetric noise ends near 80% (a 1-pixel shift on top brought it to 65%). Seeded with numpy's PCG64, so
    every machine writes the same images (the shifts are drawn even when 0, which keeps that stream)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    n, h, w = grey.shape
    out = np.zeros_like(grey, dtype=np.float32)
    shifts = rng.integers(-max_shift, max_shift + 1, size=(n, 2))
    corners = rng.integers(0, [h - block + 1, w - block + 1], size=(n, 2))
    noise = rng.normal(0.0, noise_sd, size=grey.shape)
    for i in range(n):
        dy, dx = shifts[i]
        shifted = np.zeros((h, w), dtype=np.float32)
        shifted[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            grey[i, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
        y, x = corners[i]
        shifted[y:y + block, x:x + block] = 0.0
        out[i] = shifted
    return np.clip(out + noise, 0, 255).round().astype(np.uint8)


def split_indices(
    labels: np.ndarray, fractions: dict[str, float], seed: int = 0
) -> dict[str, np.ndarray]:
    """Stratified, seeded split of sample positions into named parts.

    ``fractions`` maps split name -> share (e.g. {"train": 0.7, "val": 0.1, "test": 0.2}); the last split
    takes the remainder of each class. Returns sorted position arrays; the same seed gives the same split
    on any machine (numpy's PCG64)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    names = list(fractions)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        members = members[rng.permutation(len(members))]
        start = 0
        for n in names[:-1]:
            count = int(round(fractions[n] * len(members)))
            parts[n].append(members[start : start + count])
            start += count
        parts[names[-1]].append(members[start:])
    return {n: np.sort(np.concatenate(p)) for n, p in parts.items()}
