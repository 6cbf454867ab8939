"""Read (idx, clean label) of a split straight from its shards, without decoding any image; the
training driver uses this to build the noise table before any worker starts."""

from __future__ import annotations

import tarfile

import numpy as np

from soft_dist.data.format import INDEX_EXT, LABEL_EXT, Manifest, ManifestError, SplitSelection, decode_int64


def read_split_labels(manifest: Manifest, split: str | SplitSelection) -> tuple[np.ndarray, np.ndarray]:
    """(idx [N] int64, labels [N] int64) of ``split`` (a shard split name or a carved selection), sorted
    by idx; a named split's N must match the manifest."""
    if isinstance(split, SplitSelection):
        idx, labels = read_pooled_labels(manifest, split.sources)
        keep = split.keep(idx)
        return idx[keep], labels[keep]
    by_key: dict[str, dict[str, int]] = {}
    for path in manifest.shard_paths(split):
        if not path.is_file():
            raise ManifestError(f"{path}: shard listed in the manifest is missing")
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                if ext in (LABEL_EXT, INDEX_EXT):
                    by_key.setdefault(key, {})[ext] = decode_int64(tar.extractfile(member).read())
    expected = manifest.split(split).num_samples
    if len(by_key) != expected:
        raise ManifestError(f"{manifest.root}: split '{split}' has {len(by_key)} samples in its shards, manifest says {expected}")
    idx = np.array([v[INDEX_EXT] for v in by_key.values()], dtype=np.int64)
    labels = np.array([v[LABEL_EXT] for v in by_key.values()], dtype=np.int64)
    order = np.argsort(idx)
    return idx[order], labels[order]


def read_pooled_labels(manifest: Manifest, splits: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(idx [N] int64, labels [N] int64) of the shard splits ``splits`` together, sorted by idx."""
    parts = [read_split_labels(manifest, name) for name in splits]
    idx = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    order = np.argsort(idx, kind="stable")
    return idx[order], labels[order]
