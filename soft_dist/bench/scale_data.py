"""A scale data set from real pixels: N distinct training images made from scikit-learn's 1,797 digits.

Each image draws one of the digits and puts it through its own seeded random geometry and colours, so
that no two of the N images are the same and a network has something to learn at any N:

* an affine warp: rotation within +-20 degrees, zoom 0.75-1.15, shear within +-0.2, shift within +-12%
  of the side (which also crops the digit at times);
* an elastic distortion: a random 4 x 4 displacement field (standard deviation 2.5% of the side),
  upsampled bicubically, added to the warp's sampling grid;
* colours: a dark and a light RGB colour, either one the ink, and pixel noise (sigma 8 of 255).

Written straight into shards with the project's writer (tar shards of 1,000 samples with their DALI index
files and a manifest), one shard in memory at a time, so that 300,000 images never sit in one process.
Images depend only on (seed, split, shard number): a set written twice is byte for byte the same.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SHARD_SIZE = 1000
SPLITS = ("train", "val")


def _digit_ink() -> tuple[torch.Tensor, np.ndarray]:
    """The digits as ink in [0, 1], float32 [1797, 1, 8, 8], and their labels [1797]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    ink = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    return ink, digits.target.astype(np.int64)


def _affine(count: int, gen: torch.Generator) -> torch.Tensor:
    """[count, 2, 3] sampling matrices for F.affine_grid: rotation, zoom, shear and shift per image."""
    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(count, generator=gen)

    angle = uniform(-math.pi / 9, math.pi / 9)
    zoom, shear = uniform(0.75, 1.15), uniform(-0.2, 0.2)
    shift = uniform(-0.24, 0.24), uniform(-0.24, 0.24)  # +-12% of the side in [-1, 1] coordinates
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = cos, -sin + shear * cos, shift[0]
    theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = sin, cos + shear * sin, shift[1]
    return theta


def scale_images(count: int, size: int, seed: int,
                 source: tuple[torch.Tensor, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``count`` new images, uint8 [count, size, size, 3], and their digit labels, int64 [count]; the same
    for the same (count, size, seed). ``source``: the digits' ink and labels (read once by the caller)."""
    ink, labels = source if source is not None else _digit_ink()
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, len(ink), (count,), generator=gen)
    grid = F.affine_grid(_affine(count, gen), [count, 1, size, size], align_corners=False)
    field = F.interpolate(0.05 * torch.randn(count, 2, 4, 4, generator=gen), size=(size, size), mode="bicubic",
                          align_corners=False)  # 0.05 in [-1, 1] coordinates: 2.5% of the side
    grid = grid + field.permute(0, 2, 3, 1)
    drawn = F.grid_sample(ink[pick], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    dark = 0.45 * torch.rand(count, 3, 1, 1, generator=gen)
    light = 0.55 + 0.45 * torch.rand(count, 3, 1, 1, generator=gen)
    inverted = (torch.rand(count, 1, 1, 1, generator=gen) < 0.5).float()  # light ink on dark, or dark on light
    paper = dark * (1 - inverted) + light * inverted
    pen = light * (1 - inverted) + dark * inverted
    image = paper + (pen - paper) * drawn + (8 / 255) * torch.randn(count, 3, size, size, generator=gen)
    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    return pixels, labels[pick.numpy()]


def write_scale_shards(out: Path, num_train: int, size: int = 48, seed: int = 0, quality: int = 90,
                       progress=None) -> Path:
    """A shard set at ``out``: ``num_train`` training and num_train // 10 validation images (see the module
    docstring) of the 10 digit classes. ``progress(n)`` is told of every n images written. Returns ``out``."""
    from PIL import Image

    from soft_dist.data.format import shard_name
    from soft_dist.data.sampler import derive_seed
    from soft_dist.shard.digits import DIGIT_CLASSES
    from soft_dist.shard.encode import jpeg_bytes
    from soft_dist.shard.writer import Sample, write_manifest, write_shard

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    source = _digit_ink()
    entries, first = {}, 0
    for split_number, (split, count) in enumerate(zip(SPLITS, (num_train, max(10, num_train // 10)))):
        shards, counts = [], Counter()
        for number, start in enumerate(range(0, count, SHARD_SIZE)):
            n = min(SHARD_SIZE, count - start)
            pixels, labels = scale_images(n, size, derive_seed(seed, split_number, number), source)
            samples = [Sample(idx=first + start + i, label=int(labels[i]),
                              jpeg=jpeg_bytes(Image.fromarray(pixels[i]), quality=quality),
                              meta={"source": f"scale/{split}/{first + start + i}", "label": int(labels[i])})
                       for i in range(n)]
            shards.append(write_shard(out / shard_name(split, number), samples))
            counts.update(DIGIT_CLASSES[label] for label in labels)
            if progress is not None:
                progress(n)
        entries[split] = {"num_samples": count, "class_counts": {c: counts[c] for c in DIGIT_CLASSES}, "shards": shards}
        first += count
    write_manifest(out, {"dataset": "digits", "classes": list(DIGIT_CLASSES), "splits": entries, "num_indices": first,
                         "generator": {"kind": "scale", "seed": seed, "size": size, "quality": quality}})
    return out


FOLDER_MARKER = ".scale_folder.json"


def write_scale_folder(root: Path, num_train: int, size: int = 48, seed: int = 0, quality: int = 90,
                       progress=None) -> Path:
    """An image folder at ``root`` for `soft-dist shard --layout imagefolder`: ``num_train`` JPEGs
    ``ROOT/train/<digit>/<n>.jpg`` made as :func:`scale_images` makes them (a train split only: the sharder
    carves the validation share, as it does for a user's folder). Written in chunks of 1,000 images, each
    from its own seed; ``ROOT/.scale_folder.json`` is written last and names the settings, so a folder
    that is there with the same settings is reused and a half-written one is written again."""
    import json

    from PIL import Image

    from soft_dist.data.sampler import derive_seed
    from soft_dist.shard.digits import DIGIT_CLASSES

    root = Path(root)
    settings = {"num_train": num_train, "size": size, "seed": seed, "quality": quality}
    marker = root / FOLDER_MARKER
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        return root
    for name in DIGIT_CLASSES:
        (root / "train" / name).mkdir(parents=True, exist_ok=True)
    source = _digit_ink()
    for number, start in enumerate(range(0, num_train, SHARD_SIZE)):
        n = min(SHARD_SIZE, num_train - start)
        pixels, labels = scale_images(n, size, derive_seed(seed, len(SPLITS), number), source)
        for i in range(n):
            Image.fromarray(pixels[i]).save(root / "train" / DIGIT_CLASSES[labels[i]] / f"{start + i:07d}.jpg",
                                            quality=quality)
        if progress is not None:
            progress(n)
    marker.write_text(json.dumps(settings))
    return root
