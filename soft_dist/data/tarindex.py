"""Random access into the WebDataset shards of one split.

Both loaders (DALI and the torch fallback) need to read sample ``i`` of a split in any order, because
every epoch draws one global permutation of the split and hands each rank its share of it
(soft_dist.data.sampler). A streaming tar reader cannot do that, so this module records where each
sample's members lie inside its tar file and reads each JPEG's bytes with one positioned read.

Not through ``mmap``: a mapped shard's pages count in the process's resident memory once touched (the
kernel maps 64 KB around each fault), so over an epoch a worker's RSS grew with the dataset, up to the
size of all its shards (measured by `soft-dist bench scale`: +145 MB from 10k to 300k images after 48
steps). Read, the bytes sit in the page cache, which the kernel shares and reclaims. The open files are
kept in a small least-recently-used set, so a split of thousands of shards never nears the limit on
open files.

Offsets come from the DALI index files beside the shards (``wds2idx`` format v1.2, written by the
sharder), and for a shard without one from a pass of :mod:`tarfile` over it.
The label and idx members are read once here (8 bytes each, see soft_dist.data.format), so the loaders
know every sample's label and idx before decoding anything.
"""

from __future__ import annotations

import os
import tarfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from soft_dist.data.format import (
    IMAGE_EXT,
    INDEX_EXT,
    LABEL_EXT,
    ManifestError,
    SplitSelection,
    decode_int64,
    load_manifest,
)
from soft_dist.data.jpeg_header import JpegHeaderError, jpeg_size

WDS_INDEX_VERSION = "v1.2"


def _split_member(name: str) -> tuple[str, str]:
    """``dir/000000012.jpg`` -> (``dir/000000012``, ``jpg``): WebDataset's rule, first dot of the basename."""
    dot = name.find(".", name.rfind("/") + 1)
    return (name, "") if dot < 0 else (name[:dot], name[dot + 1 :])


def _members_from_wds_index(path: Path) -> list[dict[str, tuple[int, int]]] | None:
    """Parse a wds2idx v1.2 file: per sample {ext: (data offset, size)}; None when it is another version."""
    lines = path.read_text().splitlines()
    if not lines or lines[0].split()[:1] != [WDS_INDEX_VERSION]:
        return None
    samples = []
    for line in lines[1:]:
        fields = line.split()
        if len(fields) % 4:  # v1.2 lines are (ext, offset, size, name) quadruples
            return None
        samples.append({fields[i]: (int(fields[i + 1]), int(fields[i + 2])) for i in range(0, len(fields), 4)})
    return samples


def _members_from_tar(path: Path) -> list[dict[str, tuple[int, int]]]:
    """One tarfile pass: per sample {ext: (data offset, size)}, samples in tar order."""
    samples: list[dict[str, tuple[int, int]]] = []
    last = None
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base, ext = _split_member(member.name)
            if base != last:
                samples.append({})
                last = base
            samples[-1][ext] = (member.offset_data, member.size)
    return samples


OPEN_SHARDS = 64  # files a SampleTable keeps open (an epoch reads every shard in random order)


@dataclass
class SampleTable:
    """Where every sample of a split lives, in shard order (position ``p`` = p-th sample of the split).

    Arrays, all of length N: ``shard`` (int32, into ``paths``), ``offset``/``size`` (int64, the JPEG's bytes
    in that tar), ``label`` and ``idx`` (int64, from the shard's cls/idx members)."""

    paths: list[Path]
    shard: np.ndarray
    offset: np.ndarray
    size: np.ndarray
    label: np.ndarray
    idx: np.ndarray
    used_index_files: bool = False
    _files: OrderedDict = field(default_factory=OrderedDict, repr=False)  # shard -> open fd, least recent first
    _hw: np.ndarray | None = field(default=None, repr=False)  # int32 [N, 2], -1 until read

    def __len__(self) -> int:
        return len(self.shard)

    def _fd(self, shard: int) -> int:
        # Opened lazily, so that forked DataLoader workers open their own files.
        fd = self._files.get(shard)
        if fd is None:
            if len(self._files) >= OPEN_SHARDS:
                os.close(self._files.popitem(last=False)[1])
            fd = self._files[shard] = os.open(self.paths[shard], os.O_RDONLY)
        else:
            self._files.move_to_end(shard)
        return fd

    def jpeg(self, position: int) -> np.ndarray:
        """The encoded JPEG of sample ``position`` as a uint8 array [nbytes] (read-only)."""
        shard, size = int(self.shard[position]), int(self.size[position])
        data = os.pread(self._fd(shard), size, int(self.offset[position]))
        if len(data) != size:
            raise ManifestError(f"{self.paths[shard]}: ends inside the image of sample idx={int(self.idx[position])} "
                                f"(byte offset {int(self.offset[position])}); the shard was cut short")
        return np.frombuffer(data, dtype=np.uint8)

    def image_hw(self, positions: np.ndarray) -> np.ndarray:
        """(height, width) of the JPEGs at ``positions`` as int32 [len(positions), 2], read from their
        headers the first time each is asked for and remembered."""
        if self._hw is None:
            self._hw = np.full((len(self), 2), -1, dtype=np.int32)
        for p in positions[self._hw[positions, 0] < 0]:
            try:
                self._hw[p] = jpeg_size(self.jpeg(p))
            except JpegHeaderError as e:
                raise ManifestError(
                    f"{self.paths[int(self.shard[p])]}: the image of sample idx={int(self.idx[p])} "
                    f"(byte offset {int(self.offset[p])}): {e}"
                ) from None
        return self._hw[positions]

    def close(self) -> None:
        while self._files:
            os.close(self._files.popitem()[1])

    def __getstate__(self):  # file descriptors do not travel; a worker process opens its own
        state = dict(self.__dict__)
        state["_files"] = OrderedDict()
        return state


def load_sample_table(shards_dir: str | Path, split: str | SplitSelection) -> SampleTable:
    """Index the split ``split`` of the shard folder ``shards_dir`` (see the module docstring). A carved
    :class:`SplitSelection` gives the selected samples of its source splits, in shard order."""
    if isinstance(split, SplitSelection):
        return _selected_table(shards_dir, split)
    manifest = load_manifest(shards_dir)
    paths = manifest.shard_paths(split)
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise ManifestError(f"{missing[0]}: shard listed in the manifest is missing"
                            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    index_paths = manifest.index_paths(split) or [None] * len(paths)
    # One shard at a time, straight into arrays: parsing every index file first and collecting Python ints
    # in lists held about 840 bytes per sample at the peak (`soft-dist bench metadata`); the arrays take 36.
    parts, from_index_files = [], []
    for number, (path, index_path, info) in enumerate(zip(paths, index_paths, manifest.split(split).shards)):
        samples = _members_from_wds_index(index_path) if index_path is not None else None
        from_index_files.append(samples is not None)
        if samples is None:
            samples = _members_from_tar(path)
        if len(samples) != info.num_samples:
            raise ManifestError(f"{path}: holds {len(samples)} samples, the manifest says {info.num_samples}")
        parts.append(_shard_columns(path, number, samples))
    shard, offset, size, label, idx = (np.concatenate(column) for column in zip(*parts))
    return SampleTable(paths=paths, shard=shard, offset=offset, size=size, label=label, idx=idx,
                       used_index_files=all(from_index_files))


def _shard_columns(path: Path, number: int, samples: list[dict[str, tuple[int, int]]]) -> tuple[np.ndarray, ...]:
    """(shard [n] int32 = ``number``, JPEG offset [n], JPEG size [n], label [n], idx [n] int64) of one shard's
    samples, reading the 8-byte label and idx members at their offsets."""
    n = len(samples)
    offset, size, label, idx = (np.empty(n, dtype=np.int64) for _ in range(4))
    with open(path, "rb") as f:
        for i, members in enumerate(samples):
            missing = [e for e in (IMAGE_EXT, LABEL_EXT, INDEX_EXT) if e not in members]
            if missing:
                raise ManifestError(f"{path}: a sample lacks the members {missing}")
            offset[i], size[i] = members[IMAGE_EXT]
            for column, ext in ((label, LABEL_EXT), (idx, INDEX_EXT)):
                at, length = members[ext]
                f.seek(at)
                column[i] = decode_int64(f.read(length))
    return np.full(n, number, dtype=np.int32), offset, size, label, idx


def _selected_table(shards_dir: str | Path, selection: SplitSelection) -> SampleTable:
    """The samples of ``selection``: its source splits' tables joined, then filtered by idx."""
    tables = [load_sample_table(shards_dir, source) for source in selection.sources]
    paths: list[Path] = []
    shard_numbers = []
    for table in tables:
        shard_numbers.append(table.shard + len(paths))  # shard numbers index the joined path list
        paths.extend(table.paths)
    joined = {name: np.concatenate([getattr(t, name) for t in tables]) for name in ("offset", "size", "label", "idx")}
    shard = np.concatenate(shard_numbers).astype(np.int32)
    keep = selection.keep(joined["idx"])
    if int(keep.sum()) != len(selection.idx):
        missing = np.setdiff1d(selection.idx, joined["idx"][keep])[:5].tolist()
        raise ManifestError(f"{shards_dir}: {len(selection.idx) - int(keep.sum())} samples of the carved "
                            f"{selection.name} split are not in {list(selection.sources)} (idx {missing} ...)")
    return SampleTable(paths=paths, shard=shard[keep], offset=joined["offset"][keep], size=joined["size"][keep],
                       label=joined["label"][keep], idx=joined["idx"][keep],
                       used_index_files=all(t.used_index_files for t in tables))
