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
