"""Tiny real shard sets for the loader tests: scikit-learn digits as RGB JPEGs, written with the
project's own shard writer (soft_dist.data.shards) and manifest fields (soft_dist.data.format)."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from soft_dist.data.digits import DIGIT_CLASSES, load_digits_rgb
from soft_dist.data.shards import Sample, write_manifest, write_split


def jpeg_bytes(image: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_digit_shards(
    out: Path, splits: dict[str, int], *, image_size: int = 32, shard_size: int = 16, first_idx: int = 1000
) -> Path:
    """Write ``{split: num_samples}`` of digits into ``out``; global idx start at ``first_idx`` and are
    unique across splits (so tests can tell an idx from a position). Returns ``out``."""
    images, labels = load_digits_rgb(image_size)
    entries, start = {}, 0
    for split, count in splits.items():
        samples = [
            Sample(idx=first_idx + start + i, label=int(labels[start + i]), jpeg=jpeg_bytes(images[start + i]),
                   meta={"source": f"digits/{start + i}"})
            for i in range(count)
        ]
        shards = write_split(out, split, samples, shard_size)
        counts = Counter(DIGIT_CLASSES[s.label] for s in samples)
        entries[split] = {"num_samples": count, "class_counts": dict(counts), "shards": shards}
        start += count
    write_manifest(out, {"dataset": "digits", "classes": list(DIGIT_CLASSES), "splits": entries})
    return out
