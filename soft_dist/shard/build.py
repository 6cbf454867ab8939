"""`soft-dist shard` as a library call: read a layout, plan shards, encode chunks in parallel, write
shards in place one by one, resume, and write the manifest.

Plan: records are sorted by (split, source) and numbered; ``idx`` is that global number, so it is
unique across splits and does not depend on the listing order. Each split is cut into shards of
near-equal size (at most ``shard_size``, at least ``min_shards`` when there are enough samples); a
shard's records are one chunk of work. Samples that fail (corrupt image, no face with
``on_no_face=skip``) leave a gap in ``idx``; ``num_indices`` in the manifest bounds every idx.

Resume: after each shard the driver rewrites ``OUT/.shard-progress.json`` (the shard entries done so
far, with a fingerprint of the inputs and content-affecting arguments). A rerun with the same
fingerprint keeps every shard whose file still has the recorded sha256 and redoes the rest.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

from soft_dist.shard.layouts import SPLITS, Dataset, Record, carve_val, read_layout
from soft_dist.shard.encode import ChunkResult, EncodeOptions, encode_chunk, init_worker
from soft_dist.config import ConfigError, check_fields, setting
from soft_dist.data.format import MANIFEST_NAME, shard_name
from soft_dist.progress import progress_bar
from soft_dist.shard.writer import sha256_file, write_index, write_manifest, write_shard

PROGRESS_NAME = ".shard-progress.json"
SHARD_FILE = re.compile(r"^(train|val|test)-\d{6}\.(tar|idx)(\.partial)?$")
FORMAT_VERSION = 1


LAYOUTS = ("rafdb", "affectnet", "ferplus", "imagefolder", "csv", "digits", "digits_hard")


def _option(default, doc: str, group: str, **constraints):
    """A shard option: declared once (soft_dist.config.setting), read by validation, the CLI and the docs.
    ``group`` is its section in ``soft-dist shard --help``."""
    return setting(default, doc, extra={"group": group}, **constraints)


def option_flag(name: str) -> str:
    """The command-line flag of a ShardConfig field: csv_file -> --csv, on_no_face -> --on-no-face."""
    return "--csv" if name == "csv_file" else "--" + name.replace("_", "-")


@dataclass
class ShardConfig:
    """The options of `soft-dist shard` (each is also a --flag of that command)."""

    layout: str | None = _option(None, "input layout (docs/sharding.md)", "input", choices=LAYOUTS)
    root: str | None = _option(None, "dataset folder (not needed for digits)", "input")
    out: str | None = _option(None, "output folder (default data_shards/<layout>)", "input")
    size: int = _option(224, "output side in pixels", "images", lo=8)
    align: str = _option("auto", "auto: mtcnn, except none for digits, ferplus and RAF-DB's Image/aligned", "images",
                         choices=("auto", "mtcnn", "none"))
    margin: float = _option(0.2, "context around the face: the template shrinks by 1/(1+margin)", "images", lo=0.0)
    quality: int = _option(95, "JPEG quality", "images", lo=1, hi=100)
    on_no_face: str = _option("crop", "no face found: centred crop (counted) or leave the image out (counted)",
                              "images", choices=("crop", "skip"))
    shard_size: int = _option(1000, "most samples per shard", "splits and shards", lo=1)
    min_shards: int = _option(128, "at least this many shards per split when there are enough samples "
                                   "(128 = 32 ranks x 4 loader workers)", "splits and shards", lo=1)
    val_fraction: float = _option(0.1, "share of train carved into val when the layout has no val split",
                                  "splits and shards", lo=0.0, hi=1.0, hi_open=True)
    seed: int = _option(0, "seed of the stratified val split", "splits and shards")
    classes: list | None = _option(None, "class order, comma-separated on the command line (imagefolder, csv); "
                                         "digits layouts: the digits kept, e.g. 0,1,2,3,4,5,6", "layout options")
    image_dir: str = _option("auto", "rafdb: which image folder (auto: original with mtcnn, aligned with none)",
                             "layout options", choices=("auto", "original", "aligned"))
    affectnet_classes: int = _option(8, "affectnet: 7 or 8 classes", "layout options", choices=(7, 8))
    csv_file: str | None = _option(None, "csv layout: the CSV file (default ROOT/labels.csv)", "layout options")
    workers: int | None = _option(None, "worker processes (default: all cores)", "execution", lo=1)
    backend: str = _option("process", "process pool, or Ray tasks over chunks (RAY_ADDRESS joins a cluster)",
                           "execution", choices=("process", "ray"))
    device: str = _option("cpu", "MTCNN device, e.g. cpu or cuda:0", "execution")
    batch_size: int = _option(16, "MTCNN batch size", "execution", lo=1)
    progress: bool = True  # --no-progress turns the bar off
    reader_options: dict = field(default_factory=dict)  # extra keyword arguments of the layout reader (tests)

    # Arguments that change shard contents; the others (parallelism, progress) do not.
    CONTENT_FIELDS = ("layout", "size", "align", "margin", "quality", "on_no_face", "shard_size", "min_shards",
                      "val_fraction", "seed", "classes", "image_dir", "affectnet_classes")

    def validate(self) -> None:
        """Check every option against its declaration; a ConfigError names the --flag."""
        if self.layout is None:
            raise ConfigError("--layout", "is required (or --verify OUT)")
        check_fields(self, name_of=option_flag)


@dataclass
class ShardPlan:
    name: str
    split: str
    items: list[tuple[int, Record]]


def plan_shards(records: list[Record], shard_size: int, min_shards: int) -> list[ShardPlan]:
    """Number records by (split, source) and cut each split into near-equal shards."""
    order = {s: i for i, s in enumerate(SPLITS)}
    ranked = sorted(records, key=lambda r: (order[r.split], r.source))
    numbered = list(enumerate(ranked))
    plans = []
    for split in SPLITS:
        items = [(i, r) for i, r in numbered if r.split == split]
        if not items:
            continue
        count = min(len(items), max(math.ceil(len(items) / shard_size), min_shards))
        base, extra = divmod(len(items), count)
        start = 0
        for number in range(count):
            stop = start + base + (1 if number < extra else 0)
            plans.append(ShardPlan(shard_name(split, number), split, items[start:stop]))
            start = stop
    return plans


def fingerprint(config: ShardConfig, dataset: Dataset, records: list[Record]) -> str:
    """Hash of the content-affecting arguments and the planned inputs (source, split, label). Image
    bytes are not hashed: a file edited in place under the same name needs a fresh --out."""
    h = hashlib.sha256()
    h.update(json.dumps({k: getattr(config, k) for k in ShardConfig.CONTENT_FIELDS}, sort_keys=True).encode())
    h.update(dataset.name.encode())
    for r in sorted(records, key=lambda r: (r.split, r.source)):
        h.update(f"{r.split}\0{r.source}\0{r.label}\n".encode())
    return h.hexdigest()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _previous_entries(out: Path, fp: str) -> dict[str, dict]:
    """Shard entries recorded by an earlier run with the same fingerprint (manifest or progress file)."""
    entries: dict[str, dict] = {}
    manifest = _read_json(out / MANIFEST_NAME)
    if manifest and manifest.get("fingerprint") == fp:
        for split in manifest.get("splits", {}).values():
            for entry in split.get("shards", []):
                entries[entry["name"]] = entry
        for entry in manifest.get("empty_shards", []):
            entries[entry["name"]] = entry
    progress = _read_json(out / PROGRESS_NAME)
    if progress and progress.get("fingerprint") == fp:
        entries.update(progress.get("shards", {}))
    return entries


def _still_valid(out: Path, entry: dict) -> bool:
    if entry.get("num_samples", 0) == 0:
        return not (out / entry["name"]).exists()
    path = out / entry["name"]
    return path.is_file() and sha256_file(path) == entry.get("sha256")


def _clean_stale(out: Path, plans: list[ShardPlan]) -> None:
    """Remove half-written files and shard files that are not in this plan (an earlier, different run)."""
    planned = {p.name for p in plans} | {p.name[:-4] + ".idx" for p in plans}
    for path in out.iterdir():
        if SHARD_FILE.match(path.name) and (path.name.endswith(".partial") or path.name not in planned):
            path.unlink()
    for name in (MANIFEST_NAME + ".partial", PROGRESS_NAME + ".partial"):
        (out / name).unlink(missing_ok=True)


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _shard_entry(plan: ShardPlan, result: ChunkResult, classes: tuple[str, ...], written: dict | None) -> dict:
    counts = {c: 0 for c in classes}
    for sample in result.samples:
        counts[classes[sample.label]] += 1
    return {
        "name": plan.name,
        "num_samples": len(result.samples),
        "sha256": written["sha256"] if written else None,
        "class_counts": counts,
        "faces_found": result.faces_found,
        "fallbacks": result.fallbacks,
        "skipped_no_face": result.skipped_no_face,
        "failures": result.failures,
    }


# ----------------------------------------------------------------------------------------- execution


def _run_serial(plans, options):
    for plan in plans:
        yield plan, encode_chunk(plan.items, options)


_SERVER_PRELOAD: tuple[str, ...] | None = None  # what this process's fork server imported when it started


def _forkserver_context(preload: list[str]):
    """The forkserver context, its server having imported ``preload``. A server this process started
    earlier without them (a build without alignment, then one with MTCNN) is stopped first: a running
    server ignores a new preload list, and every MTCNN worker forked from it then imported torch and
    facenet itself, which made 2 processes slower than 1 (measured: 90 vs 118 images/s)."""
    import multiprocessing
    from multiprocessing import forkserver

    global _SERVER_PRELOAD
    ctx = multiprocessing.get_context("forkserver")
    if _SERVER_PRELOAD is not None and not set(preload) <= set(_SERVER_PRELOAD):
        forkserver._forkserver._stop()  # private, kept since Python 3.8 (its own tests use it); no pool is open
        _SERVER_PRELOAD = None
    if _SERVER_PRELOAD is None:
        ctx.set_forkserver_preload(preload)
        _SERVER_PRELOAD = tuple(preload)
    return ctx


def _run_processes(plans, options, workers):
    # forkserver, not fork: the parent may hold torch/Ray threads, and fork under threads can deadlock.
    # The server imports the heavy modules once (before any thread starts); workers fork from it, so
    # each does not pay the torch import again (spawn would).
    threads = max(1, (os.cpu_count() or 1) // workers)
    preload = ["soft_dist.shard.encode"]
    if options.align == "mtcnn":
        preload += ["torch", "facenet_pytorch", "soft_dist.shard.align"]
    ctx = _forkserver_context(preload)
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker, initargs=(threads,)) as pool:
        pending, queue = {}, list(plans)
        while queue or pending:
            while queue and len(pending) < 2 * workers:  # bounded: results are consumed as they arrive
                plan = queue.pop(0)
                pending[pool.submit(encode_chunk, plan.items, options)] = plan
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield pending.pop(future), future.result()


def _run_ray(plans, options, workers):
    import ray

    from soft_dist.ray_cluster import init_ray

    init_ray(log_to_driver=False)  # RAY_ADDRESS joins that cluster; otherwise a new local one
    remote = ray.remote(num_cpus=1)(encode_chunk)
    window = 2 * max(workers, int(ray.cluster_resources().get("CPU", 1)))
    options_ref = ray.put(options)
    pending, queue = {}, list(plans)
    while queue or pending:
        while queue and len(pending) < window:
            plan = queue.pop(0)
            pending[remote.remote(plan.items, options_ref)] = plan
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            yield pending.pop(ref), ray.get(ref)


# ------------------------------------------------------------------------------------------- build


def build_shards(config: ShardConfig, log=None) -> dict:
    """Build (or resume) the shard set described by ``config``; returns the manifest written."""
    from soft_dist import __version__

    log = log or (lambda msg: print(msg, file=sys.stderr))
    config.validate()
    out = Path(config.out or Path("data_shards") / config.layout)
    started = time.perf_counter()

    options = {"classes": config.classes, "seed": config.seed, "image_dir": config.image_dir,
               "affectnet_classes": config.affectnet_classes, "csv_file": config.csv_file,
               "align": config.align if config.align != "auto" else "mtcnn", **config.reader_options}
    dataset = read_layout(config.layout, config.root, **options)
    align = dataset.default_align if config.align == "auto" else config.align
    dataset.notes["val_carved"] = not any(r.split == "val" for r in dataset.records) and config.val_fraction > 0
    records = carve_val(dataset.records, config.val_fraction, config.seed)
    if not records:
        raise ValueError(f"{config.layout}: no usable images under '{config.root}' "
                         f"({len(dataset.problems)} problems, first: {dataset.problems[:3]})")
    plans = plan_shards(records, config.shard_size, config.min_shards)
    fp = fingerprint(config, dataset, records)

    out.mkdir(parents=True, exist_ok=True)
    _clean_stale(out, plans)
    previous = _previous_entries(out, fp)
    done: dict[str, dict] = {}
    for plan in plans:
        entry = previous.get(plan.name)
        if entry and _still_valid(out, entry):
            if entry["num_samples"] and not (out / plan.name).with_suffix(".idx").is_file():
                write_index(out / plan.name, (out / plan.name).with_suffix(".idx"))
            done[plan.name] = entry
    todo = [p for p in plans if p.name not in done]
    if done:
        log(f"soft-dist shard: resuming: {len(done)} of {len(plans)} shards kept (sha256 matches)")

    encode_options = EncodeOptions(dataset=dataset.name, classes=tuple(dataset.classes), size=config.size,
                                   align=align, margin=config.margin, quality=config.quality,
                                   on_no_face=config.on_no_face, device=config.device,
                                   batch_size=config.batch_size)
    workers = config.workers or os.cpu_count() or 1
    if config.backend == "ray":
        results = _run_ray(todo, encode_options, workers)
    elif workers == 1 or len(todo) <= 1:
        results = _run_serial(todo, encode_options)
    else:
        results = _run_processes(todo, encode_options, min(workers, len(todo)))

    bar = progress_bar(sum(len(p.items) for p in plans), f"shard {dataset.name}", "img", enabled=config.progress,
                       initial=sum(len(p.items) for p in plans if p.name in done), leave=True)
    progress_path = out / PROGRESS_NAME
    for plan, result in results:
        written = write_shard(out / plan.name, result.samples) if result.samples else None
        done[plan.name] = _shard_entry(plan, result, dataset.classes, written)
        # The progress file is what a rerun trusts; it is replaced atomically after every shard.
        _write_json_atomic(progress_path, {"fingerprint": fp, "shards": done})
        bar.update(len(plan.items))
    bar.close()

    manifest = _manifest(config, dataset, align, plans, done, fp, __version__,
                         elapsed=time.perf_counter() - started, kept=len(plans) - len(todo))
    write_manifest(out, manifest)
    progress_path.unlink(missing_ok=True)
    return manifest


def _manifest(config, dataset, align, plans, done, fp, version, elapsed, kept) -> dict:
    splits, empty = {}, []
    stats = {"method": align, "margin": config.margin if align == "mtcnn" else None, "faces_found": 0,
             "fallbacks": 0, "fallback_files": [], "skipped_no_face": 0, "skipped_files": [],
             "failures": 0, "failed_files": []}
    max_idx = -1
    for plan in plans:
        entry = done[plan.name]
        max_idx = max(max_idx, max(i for i, _ in plan.items))
        stats["faces_found"] += entry["faces_found"]
        stats["fallbacks"] += len(entry["fallbacks"])
        stats["fallback_files"] += entry["fallbacks"]
        stats["skipped_no_face"] += len(entry["skipped_no_face"])
        stats["skipped_files"] += entry["skipped_no_face"]
        stats["failures"] += len(entry["failures"])
        stats["failed_files"] += entry["failures"]
        if entry["num_samples"] == 0:
            empty.append(entry)
            continue
        split = splits.setdefault(plan.split, {"num_samples": 0, "class_counts": {c: 0 for c in dataset.classes},
                                               "shards": []})
        split["num_samples"] += entry["num_samples"]
        for c, n in entry["class_counts"].items():
            split["class_counts"][c] += n
        split["shards"].append(entry)
    args = {k: v for k, v in asdict(config).items() if k not in ("progress",)}
    return {
        "format_version": FORMAT_VERSION,
        "dataset": dataset.name,
        "classes": list(dataset.classes),
        "label_map": dataset.label_map,  # the dataset's own label -> canonical class name
        "splits": {s: splits[s] for s in SPLITS if s in splits},
        "num_indices": max_idx + 1,  # every idx is < this; failed samples leave gaps
        "alignment": stats,
        "input_problems": {"count": len(dataset.problems), "items": dataset.problems},
        "notes": dataset.notes,
        "empty_shards": empty,
        "args": args,
        "fingerprint": fp,
        "package": {"name": "soft-dist", "version": version},
        "build": {"seconds": round(elapsed, 3), "shards_kept": kept, "shards_written": len(plans) - kept},
    }


def ensure_digit_shards(out: Path) -> Path:
    """The 32 px digits shards of the demo, benchmarks and tests in ``out``, written first if missing."""
    if not (out / MANIFEST_NAME).is_file():
        print(f"writing digits shards to {out} ...", flush=True)
        build_shards(ShardConfig(layout="digits", out=str(out), size=32, min_shards=8, progress=False))
    return out
