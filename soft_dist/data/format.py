"""The on-disk contract between `soft-dist shard` and every reader (DALI, torch, training).

A shard set is a folder::

    OUT/manifest.json
    OUT/<split>-<NNNNNN>.tar      WebDataset tar shards
    OUT/<split>-<NNNNNN>.idx      DALI index files (wds2idx format), optional but written by the sharder

Each sample in a shard has the key ``f"{idx:09d}"`` and these members:

    <key>.jpg    the (aligned) face as JPEG
    <key>.cls    canonical class index as 8 little-endian bytes (np.int64(v).tobytes())
    <key>.idx    global sample index, unique across all splits, 8 bytes int64
    <key>.json   metadata: source path, dataset, original label, face box, landmarks, detector score

Labels and indices are fixed-size binary int64 because DALI returns text members as ASCII bytes of
varying length (DESIGN.md section 3). Shards store CLEAN labels only; injected noise lives in a noise
table keyed by ``idx`` and is applied at training time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MANIFEST_NAME = "manifest.json"
IMAGE_EXT = "jpg"
LABEL_EXT = "cls"
INDEX_EXT = "idx"
META_EXT = "json"
SAMPLE_EXTS = (IMAGE_EXT, LABEL_EXT, INDEX_EXT, META_EXT)


def sample_key(idx: int) -> str:
    return f"{idx:09d}"


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def encode_int64(value: int) -> bytes:
    return np.int64(value).tobytes()


def decode_int64(data: bytes) -> int:
    if len(data) != 8:
        raise ValueError(f"expected 8 bytes of int64, got {len(data)} bytes")
    return int(np.frombuffer(data, dtype="<i8")[0])


class ManifestError(ValueError):
    """A shard folder or manifest that cannot be used, naming the file and what is wrong."""


@dataclass(frozen=True)
class ShardInfo:
    name: str
    num_samples: int
    sha256: str


@dataclass(frozen=True)
class SplitInfo:
    name: str
    num_samples: int
    class_counts: dict[str, int]
    shards: tuple[ShardInfo, ...]


@dataclass(frozen=True)
class Manifest:
    """The parts of manifest.json that readers need; ``raw`` keeps everything else."""

    root: Path
    dataset: str
    classes: tuple[str, ...]
    splits: dict[str, SplitInfo]
    raw: dict

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> SplitInfo:
        if name not in self.splits:
            raise ManifestError(
                f"{self.root / MANIFEST_NAME}: no split '{name}'; the manifest has {sorted(self.splits)}"
            )
        return self.splits[name]

    def shard_paths(self, split: str) -> list[Path]:
        return [self.root / s.name for s in self.split(split).shards]

    def index_paths(self, split: str) -> list[Path] | None:
        """DALI index files beside the shards, or None when any is missing."""
        paths = [p.with_suffix(".idx") for p in self.shard_paths(split)]
        return paths if all(p.is_file() for p in paths) else None


@dataclass(frozen=True)
class SplitSelection:
    """A split carved by the run (soft_dist.data.splits): the samples of the shard splits ``sources``
    whose idx is in ``idx``. Readers accept it wherever they accept a split name."""

    name: str  # the role: train | val | test
    sources: tuple[str, ...]  # shard split names, read in this order
    idx: np.ndarray  # [N] int64, sorted

    def __repr__(self) -> str:  # short, for error messages and logs
        return f"SplitSelection({self.name!r}, {len(self.idx)} samples of {list(self.sources)})"

    def keep(self, idx: np.ndarray) -> np.ndarray:
        """Boolean mask [len(idx)]: which of these sample indices belong to the selection."""
        return np.isin(idx, self.idx)


def _shard_folders_near(root: Path) -> str:
    """" Shard folders there: a, b" for the folders beside (or inside) ``root`` that hold a manifest, or
    "" when there are none: a mistyped data.shards then shows what exists."""
    found = []
    for parent in (root, root.parent):
        if parent.is_dir():
            found += sorted(str(p.parent) for p in parent.glob(f"*/{MANIFEST_NAME}"))
    return f" Shard folders there: {', '.join(dict.fromkeys(found))}" if found else ""


def load_manifest(root: str | Path) -> Manifest:
    """Read and check ``root/manifest.json``; errors name the file and the field."""
    if "://" in str(root) and not str(root).startswith("file://"):
        # Path() would turn s3://b/x into s3:/b/x and report a confusing "not found".
        raise ManifestError(
            f"{root}: a URL, not a local folder; stage it first with "
            "soft_dist.data.stage.local_shards (training does this for data.shards)"
        )
    root = Path(root)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path}: not found; is '{root}' a folder written by `soft-dist shard`?"
                            f"{_shard_folders_near(root)}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path}: not valid JSON: {err}") from err
    for key in ("dataset", "classes", "splits"):
        if key not in raw:
            raise ManifestError(f"{path}: missing field '{key}'")
    splits = {}
    for split_name, s in raw["splits"].items():
        try:
            shards = tuple(ShardInfo(x["name"], int(x["num_samples"]), x["sha256"]) for x in s["shards"])
            splits[split_name] = SplitInfo(split_name, int(s["num_samples"]), dict(s["class_counts"]), shards)
        except (KeyError, TypeError) as err:
            raise ManifestError(f"{path}: split '{split_name}' is malformed (missing {err})") from err
        if sum(x.num_samples for x in shards) != splits[split_name].num_samples:
            raise ManifestError(f"{path}: split '{split_name}': shard sample counts do not add up to num_samples")
    return Manifest(root=root, dataset=str(raw["dataset"]), classes=tuple(raw["classes"]), splits=splits, raw=raw)
