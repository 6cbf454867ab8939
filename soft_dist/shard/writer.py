"""Writing WebDataset shards and the manifest (format in soft_dist.data.format).

Shards are written under a temporary name and renamed only when complete, so an interrupted run never
leaves a half-written shard under its final name. Tar members get fixed metadata (mtime 0, uid/gid 0,
sorted order within a sample), so the same inputs give byte-identical shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from soft_dist.data.format import (
    IMAGE_EXT,
    INDEX_EXT,
    LABEL_EXT,
    MANIFEST_NAME,
    META_EXT,
    encode_int64,
    sample_key,
    shard_name,
)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Sample:
    """One encoded sample ready for a shard."""

    idx: int
    label: int
    jpeg: bytes
    meta: dict = field(default_factory=dict)

    def members(self) -> list[tuple[str, bytes]]:
        key = sample_key(self.idx)
        meta = json.dumps(self.meta, sort_keys=True).encode()
        return [
            (f"{key}.{IMAGE_EXT}", self.jpeg),
            (f"{key}.{LABEL_EXT}", encode_int64(self.label)),
            (f"{key}.{INDEX_EXT}", encode_int64(self.idx)),
            (f"{key}.{META_EXT}", meta),
        ]


def write_shard(path: Path, samples: list[Sample], index: bool = True) -> dict:
    """Write ``samples`` to ``path`` atomically; return {name, num_samples, sha256}.

    With ``index`` the DALI index file (``path.with_suffix('.idx')``) is written too, before the shard is
    renamed into place, so a shard under its final name always has its index beside it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            for name, data in sample.members():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = 0
                info.mode = 0o644
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    if index:
        write_index(tmp, path.with_suffix(".idx"))
    os.replace(tmp, path)
    return {"name": path.name, "num_samples": len(samples), "sha256": sha256_file(path)}


INDEX_VERSION = "v1.2"  # the version line nvidia.dali's wds2idx writes and fn.readers.webdataset reads


def index_text(tar_path: Path) -> str:
    """The DALI index (wds2idx format) of a tar: a line ``v1.2 <num_samples>``, then one line per sample
    listing ``<ext> <data offset> <size> <member name>`` for each of its members, in tar order."""
    samples: list[list[str]] = []
    last = None
    with tarfile.open(tar_path, mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = member.name
            dot = name.find(".", name.rfind("/") + 1)
            base, ext = name[:dot], name[dot + 1 :]
            if not base or base.endswith("/"):
                continue
            entry = f"{ext} {member.offset_data} {member.size} {name}"
            if base != last:
                samples.append([entry])
                last = base
            else:
                samples[-1].append(entry)
    if not samples:
        raise ValueError(f"{tar_path}: empty shard, DALI cannot index it")
    return f"{INDEX_VERSION} {len(samples)}\n" + "".join(" ".join(s) + "\n" for s in samples)


def write_index(tar_path: Path, idx_path: Path) -> Path:
    """Write the DALI index of ``tar_path`` to ``idx_path`` atomically."""
    idx_path = Path(idx_path)
    tmp = idx_path.with_name(idx_path.name + ".partial")
    tmp.write_text(index_text(tar_path))
    os.replace(tmp, idx_path)
    return idx_path


def write_split(out: Path, split: str, samples: list[Sample], shard_size: int) -> list[dict]:
    """Cut ``samples`` into shards of at most ``shard_size``; return the manifest's shard entries."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for number, start in enumerate(range(0, len(samples), shard_size)):
        entries.append(write_shard(out / shard_name(split, number), samples[start : start + shard_size]))
    return entries


def write_manifest(out: Path, manifest: dict) -> Path:
    """Write manifest.json atomically."""
    path = Path(out) / MANIFEST_NAME
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False))
    os.replace(tmp, path)
    return path
