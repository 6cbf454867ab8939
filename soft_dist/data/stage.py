"""Stage a shard set from object storage into a size-bounded cache on the local disk of each node.

DALI and the label reader read local files, so ``data.shards=s3://bucket/shards/rafdb`` is first
copied to ``<cache_dir>/<hash of the URL>/`` with the same layout as the bucket folder::

    manifest.json, <split>-NNNNNN.tar, <split>-NNNNNN.idx     the shard set (see data/format.py)
    .<shard>.tar.ok     verified marker: {"sha256", "size", "mtime_ns", "idx_size"} of the staged copy
    .inuse              flock'ed shared by every process that uses the set (eviction skips it)
    .used               touched on every use: the least recently used set is evicted first
    .url                the URL, for people looking at the cache

A shard is verified against the manifest's sha256 once when downloaded; later calls (other epochs,
processes, restarts) trust a copy whose size and mtime still match its marker. One flock on
``<cache_dir>/.lock`` serialises staging and eviction on a node, so two workers never download the
same shards twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from soft_dist.data.format import MANIFEST_NAME, ManifestError, load_manifest
from soft_dist.progress import progress_bar
from soft_dist.storage import RunStore, is_remote

log = logging.getLogger(__name__)

CACHE_ENV = "SOFT_DIST_CACHE"
_HASH_CHUNK = 8 << 20

# Shared locks on the sets this process uses, kept open for the life of the process (see _hold).
_IN_USE: dict[Path, int] = {}


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "soft-dist" / "shards").expanduser()


def local_shards(shards: str, cache_dir: str | None, max_gb: float, progress: bool = False) -> Path:
    """A local folder holding the shard set ``shards``.

    A local path is returned unchanged. A URL is staged into ``<cache_dir>/<hash of the URL>/``
    (``cache_dir`` None: $SOFT_DIST_CACHE, else ~/.cache/soft-dist/shards): manifest.json, every
    shard listed in it (checked against its sha256) and its DALI index when the bucket has one.
    Other sets are evicted, least recently used first, while the cache would exceed ``max_gb``.
    """
    if not is_remote(shards):
        return Path(shards)
    url = str(shards).rstrip("/")
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    # A stable name across processes and nodes: Python's hash() is salted per process.
    dest = cache / hashlib.sha256(url.encode()).hexdigest()[:16]
    with open(cache / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        dest.mkdir(exist_ok=True)
        _hold(dest)
        (dest / ".url").write_text(url + "\n")
        (dest / ".used").touch()
        _stage(url, dest, cache, int(max_gb * 1e9), progress)
    return dest


def _stage(url: str, dest: Path, cache: Path, max_bytes: int, progress: bool) -> None:
    store = RunStore(url)
    try:
        manifest_bytes = store.read_bytes(MANIFEST_NAME)
    except FileNotFoundError as err:
        raise ManifestError(f"{store.path(MANIFEST_NAME)}: not found; upload a folder written by `soft-dist shard`") from err
    with tempfile.TemporaryDirectory(dir=dest, prefix=".manifest.") as tmp:
        (Path(tmp) / MANIFEST_NAME).write_bytes(manifest_bytes)
        try:
            manifest = load_manifest(tmp)
        except ManifestError as err:  # name the bucket's file, not the temp copy
            raise ManifestError(str(err).replace(tmp, url)) from None
    digests = {s.name: s.sha256 for split in manifest.splits.values() for s in split.shards}

    # One listing gives every size: the bound is checked before anything is downloaded.
    sizes = _remote_sizes(store)
    for name in digests:
        if name not in sizes:
            raise ManifestError(f"{store.path(name)}: listed in {store.path(MANIFEST_NAME)} but not in the bucket")
    wanted = {MANIFEST_NAME, *digests, *(_idx(n) for n in digests if _idx(n) in sizes)}
    need = sum(sizes[n] for n in wanted)
    if need > max_bytes:
        raise ValueError(
            f"{url}: the shard set is {need / 1e9:.2f} GB, more than the shard cache's bound of "
            f"{max_bytes / 1e9:.2f} GB (data.cache_max_gb); raise the bound or use a smaller set"
        )
    _evict(cache, keep=dest, max_bytes=max_bytes - need)

    todo = [n for n in digests if not _is_staged(dest, n, digests[n], _idx(n) in sizes)]
    bar = progress_bar(len(todo), f"staging {url}", "shard", enabled=progress and bool(todo), leave=True)
    for name in todo:
        _download_shard(store, dest, name, digests[name], has_idx=_idx(name) in sizes)
        bar.update()
    bar.close()

    # Drop files of an older version of this set (renamed or removed shards) and .part files of a
    # download that crashed, then publish the manifest: readers only ever load_manifest() this folder.
    for path in dest.iterdir():
        name = path.name
        stale_marker = name.endswith(".tar.ok") and name[1:].removesuffix(".ok") not in digests
        stale_data = name.endswith((".tar", ".idx")) and name not in wanted
        if path.is_file() and (stale_marker or stale_data or name.endswith(".part")):
            path.unlink()
    _write_atomic(dest / MANIFEST_NAME, manifest_bytes)


def _idx(tar_name: str) -> str:
    return tar_name.removesuffix(".tar") + ".idx"


def _marker(dest: Path, name: str) -> Path:
    return dest / f".{name}.ok"


def _is_staged(dest: Path, name: str, digest: str, has_idx: bool) -> bool:
    """True when the marker of ``name`` matches the file beside it, the manifest's digest, and the
    index file (when the bucket has one)."""
    try:
        mark = json.loads(_marker(dest, name).read_text())
        stat = (dest / name).stat()
        if (stat.st_size, stat.st_mtime_ns) != (mark["size"], mark["mtime_ns"]):
            return False
        if has_idx and (dest / _idx(name)).stat().st_size != mark["idx_size"]:
            return False
    except (OSError, ValueError, KeyError):
        return False
    return mark["sha256"] == digest


def _download_shard(store: RunStore, dest: Path, name: str, digest: str, has_idx: bool) -> None:
    """Download one tar (and its index), check the tar's sha256, then write its marker."""
    _marker(dest, name).unlink(missing_ok=True)
    part = dest / f".{name}.part"
    store.download_file(name, part)
    try:
        got = _sha256(part)
        if got != digest:
            raise ManifestError(
                f"{store.path(name)}: sha256 is {got}, the manifest says {digest}; "
                "the shard or the manifest in the bucket is stale or corrupt"
            )
        os.replace(part, dest / name)
    finally:
        part.unlink(missing_ok=True)  # never leave an unverified copy behind
    idx_size = None
    if has_idx:
        store.download_file(_idx(name), dest / _idx(name))
        idx_size = (dest / _idx(name)).stat().st_size
    stat = (dest / name).stat()
    mark = {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "idx_size": idx_size}
    _write_atomic(_marker(dest, name), json.dumps(mark).encode())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _remote_sizes(store: RunStore) -> dict[str, int]:
    """{name: size} of the files directly in the bucket folder (RunStore.listdir has no sizes)."""
    fs, root = store._filesystem()  # the store's own filesystem: no second region lookup
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    return {i.base_name: i.size for i in infos if i.type == pafs.FileType.File}


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------- eviction


def _hold(dest: Path) -> None:
    """Take a shared flock on ``dest/.inuse`` for the life of this process, so that staging in another
    process does not evict a set this one is training from (files are reopened every epoch)."""
    if dest not in _IN_USE:
        fd = os.open(dest / ".inuse", os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(fd, fcntl.LOCK_SH)
        _IN_USE[dest] = fd


def _set_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _evict(cache: Path, keep: Path, max_bytes: int) -> None:
    """Delete other sets, least recently used first, until they take at most ``max_bytes``.
    Called with the cache lock held; sets locked by a live process are skipped."""
    for trash in cache.glob(".evicted-*"):  # left by an eviction that crashed
        _rmtree(trash)
    others = [p for p in cache.iterdir() if p.is_dir() and p != keep and not p.name.startswith(".")]
    sizes = {p: _set_size(p) for p in others}
    total = sum(sizes.values())

    def last_used(p: Path) -> float:
        used = p / ".used"
        return used.stat().st_mtime if used.exists() else p.stat().st_mtime

    for folder in sorted(others, key=last_used):
        if total <= max_bytes:
            return
        if folder in _IN_USE:
            continue
        with open(folder / ".inuse", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            log.info("shard cache: evicting %s (%s)", folder, _read_url(folder))
            _rmtree(folder)
        total -= sizes[folder]
    if total > max_bytes:
        log.warning("shard cache %s stays over its bound: the other sets are in use by running processes", cache)


def _read_url(folder: Path) -> str:
    try:
        return (folder / ".url").read_text().strip()
    except OSError:
        return "unknown URL"


def _rmtree(folder: Path) -> None:
    # Rename first so that a crash mid-delete leaves a hidden folder, not a half set under a live name.
    trash = folder if folder.name.startswith(".") else folder.with_name(f".evicted-{folder.name}-{os.getpid()}")
    os.rename(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)
