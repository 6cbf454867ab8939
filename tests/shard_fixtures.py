"""Tiny real shard sets for the loader tests: scikit-learn digits as RGB JPEGs, written with the
project's own shard writer (soft_dist.shard.writer) and manifest fields (soft_dist.data.format)."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from soft_dist.shard.digits import DIGIT_CLASSES, load_digits_rgb
from soft_dist.shard.writer import Sample, write_manifest, write_split


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


def write_rafdb_root(root: Path, rows: list[tuple[str, int]], *, size: int = 30) -> Path:
    """A RAF-DB "basic" folder in the layout RAF-DB publishes: ``EmoLabel/list_patition_label.txt`` with a
    ``name label`` row per image (labels 1..7 in RAF-DB's order) and ``Image/aligned/<stem>_aligned.jpg``
    for each; the pictures are real scikit-learn digits. ``rows`` is [(name like "train_00001.jpg", 1..7)].
    Returns ``root``."""
    images, _ = load_digits_rgb(size)
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("".join(f"{n} {label}\n" for n, label in rows))
    aligned = root / "Image" / "aligned"
    aligned.mkdir(parents=True, exist_ok=True)
    for i, (name, _) in enumerate(rows):
        (aligned / f"{Path(name).stem}_aligned.jpg").write_bytes(jpeg_bytes(images[i]))
    return root
