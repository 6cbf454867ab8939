"""`soft-dist bench metadata`: how the stages that touch every sample's metadata, but no pixels, grow with
the number of samples N.

For each N in ``--sizes`` a shard set of N training samples (and N/10 validation samples) is written in
the project's own format with its writer: real tar shards of 1,000 samples with their DALI index files,
each sample a real 8 px JPEG digit with its label, global index and metadata members. Then each stage
runs ``--repeats`` times after one untimed call, and reports the median seconds, microseconds per sample
and, from one more call traced by tracemalloc (which sees numpy's arrays and Python's objects), the peak of
memory it allocated:

    manifest     load_manifest: the split and shard tables
    labels       read_split_labels of the training split: the driver's input to the noise table
    splits       carve_splits with 5 stratified folds and a carved validation share (labels read included)
    noise_table  build_noise_table, symmetric 30 %, over the carved train and validation splits
    sampler      epoch_plan of one rank of 8 for one epoch (a seeded permutation of N, then its share)
    audit_rank   the audit's ranking of N samples (default score, the confident-joint noise estimate) from
                 teacher and student probabilities over 7 classes

``per_sample_growth`` is the time per sample at the largest N over that at the smallest (1.0: linear).
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

SHARD_SIZE = 1000
AUDIT_CLASSES = 7


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="10000,100000,1000000",
                        help="comma-separated training-set sizes N (default 10000,100000,1000000)")
    parser.add_argument("--plot", type=Path, default=None,
                        help="also draw each stage's seconds and peak memory against N (log-log) into this PNG")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="also write the stage x size table as Markdown to this file (docs/scale.md holds one)")
    parser.add_argument("--folder", type=Path, default=None,
                        help="where the shard sets are written, one at a time (default: a temporary folder; "
                             "1M samples take about 4 GB)")


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise SystemExit(f"soft-dist bench metadata: --sizes must be comma-separated integers, got {text!r}") from None
    if not sizes or sizes[0] < 100:
        raise SystemExit("soft-dist bench metadata: every size in --sizes must be at least 100")
    return sizes


def write_metadata_shards(out: Path, num_train: int) -> Path:
    """A shard set at ``out``: ``num_train`` training and num_train // 10 validation samples of 8 px digits
    (labels cycling through the digits' own), written with the project's writer. Returns ``out``."""
    from PIL import Image

    from soft_dist.shard.digits import DIGIT_CLASSES, load_digits_rgb
    from soft_dist.shard.encode import jpeg_bytes
    from soft_dist.shard.writer import Sample, write_manifest, write_split

    images, labels = load_digits_rgb(8)
    jpegs = [jpeg_bytes(Image.fromarray(image), quality=90) for image in images[:100]]  # the sharder's encoder
    entries, first = {}, 0
    for split, count in (("train", num_train), ("val", max(10, num_train // 10))):
        samples = [Sample(idx=first + i, label=int(labels[(first + i) % 100]), jpeg=jpegs[(first + i) % 100],
                          meta={"source": f"digits/{(first + i) % 100}", "label": int(labels[(first + i) % 100])})
                   for i in range(count)]
        shards = write_split(out, split, samples, SHARD_SIZE)
        counts = Counter(DIGIT_CLASSES[s.label] for s in samples)
        entries[split] = {"num_samples": count, "class_counts": dict(counts), "shards": shards}
        first += count
        del samples
    write_manifest(out, {"dataset": "digits", "classes": list(DIGIT_CLASSES), "splits": entries})
    return out


def measure(fn: Callable[[], object], repeats: int) -> dict:
    """Median seconds of ``repeats`` calls after one untimed call, then the peak of memory allocated (MB)
    during one more call, traced by tracemalloc (apart: tracing slows Python code several times).

    Each call starts after a garbage collection, so that no call pays for the previous one's garbage. The
    heap that was there before is frozen first (gc.freeze): a full collection of a process holding torch and
    Ray (a test process: about 470,000 objects) took 0.2 s, longer than most stages at small N."""
    fn()
    gc.collect()
    gc.freeze()
    try:
        seconds = []
        for _ in range(repeats):
            gc.collect()
            start = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - start)
        gc.collect()
        tracemalloc.start()
        try:
            fn()
            peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()
    finally:
        gc.unfreeze()
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds),
            "peak_mb": peak_mb, "repeats": repeats}


def stages(shards: Path) -> dict[str, Callable[[], object]]:
    """name -> the call that runs the stage once on the shard set ``shards``."""
    from soft_dist.audit.report import rank
    from soft_dist.audit.scores import DEFAULT_SCORE, NetworkOutputs
    from soft_dist.config import load_config
    from soft_dist.data.format import load_manifest
    from soft_dist.data.labels import read_split_labels
    from soft_dist.data.sampler import epoch_plan
    from soft_dist.data.splits import carve_splits
    from soft_dist.noise.table import build_noise_table

    manifest = load_manifest(shards)
    data_cfg = load_config(None, ["data.folds=5", "data.fold=0"]).data
    carved = carve_splits(manifest, data_cfg)
    roles = {role: read_split_labels(manifest, carved[role]) for role in ("train", "val")}
    n = manifest.split("train").num_samples
    gen = np.random.default_rng(0)
    given = gen.integers(0, AUDIT_CLASSES, n)
    outputs = NetworkOutputs(idx=np.arange(n), given=given, student=gen.dirichlet(np.ones(AUDIT_CLASSES), n),
                             teacher=gen.dirichlet(np.ones(AUDIT_CLASSES), n))
    return {
        "manifest": lambda: load_manifest(shards),
        "labels": lambda: read_split_labels(manifest, "train"),
        "splits": lambda: carve_splits(manifest, data_cfg),
        "noise_table": lambda: build_noise_table(roles, manifest.num_classes, "symmetric", 0.3, seed=0),
        "sampler": lambda: epoch_plan(n, 64, rank=0, world_size=8, seed=0, epoch=3, shuffle=True),
        "audit_rank": lambda: rank(outputs, DEFAULT_SCORE),
    }


def run(args: argparse.Namespace) -> dict:
    from soft_dist.progress import progress_bar

    sizes = parse_sizes(args.sizes)
    parent = args.folder or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    by_size = {}
    for n in sizes:
        folder = Path(tempfile.mkdtemp(prefix=f"soft-dist-bench-metadata-{n}-", dir=parent))
        try:
            start = time.perf_counter()
            write_metadata_shards(folder, n)
            written_s = time.perf_counter() - start
            calls = stages(folder)
            bar = progress_bar(len(calls), f"N={n}", "stage", enabled=True, lines_in_logs=False)
            results = {}
            for name, fn in calls.items():
                results[name] = measure(fn, args.repeats)
                results[name]["us_per_sample"] = results[name]["median_s"] / n * 1e6
                bar.update(1)
            bar.close()
            by_size[str(n)] = {"num_samples": n, "write_shards_s": written_s, "stages": results}
            del calls
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    small, large = by_size[str(sizes[0])]["stages"], by_size[str(sizes[-1])]["stages"]
    growth = {name: large[name]["us_per_sample"] / small[name]["us_per_sample"] if small[name]["median_s"] > 0 else None
              for name in small}
    result = {"sizes": sizes, "by_size": by_size, "per_sample_growth": growth}
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown_table(result))
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot(result, args.plot)
    return result


def plot(result: dict, path: Path) -> None:
    """Two log-log panels against N, one line per stage: seconds per call (a line of slope 1 is linear
    cost) and the peak memory it allocates, with the 60 s goal drawn on the first."""
    from soft_dist.headless_pyplot import log_log_axes, pyplot

    plt = pyplot()
    sizes = result["sizes"]
    names = list(result["by_size"][str(sizes[0])]["stages"])
    fig, (seconds_ax, memory_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for name in names:
        entries = [result["by_size"][str(n)]["stages"][name] for n in sizes]
        seconds_ax.plot(sizes, [e["median_s"] for e in entries], marker="o", label=name)
        memory_ax.plot(sizes, [e["peak_mb"] for e in entries], marker="o", label=name)
    seconds_ax.axhline(60, color="grey", linestyle="--", linewidth=1)
    seconds_ax.text(sizes[0], 60, "goal: 60 s at the largest N", va="bottom", fontsize=8, color="grey")
    log_log_axes(seconds_ax, "samples N", "seconds per call (median)")
    log_log_axes(memory_ax, "samples N", "peak allocated, MB (tracemalloc)")
    memory_ax.legend(fontsize=8, loc="upper left")
    fig.suptitle("soft-dist bench metadata: the stages that touch every sample's metadata", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_table(result: dict) -> str:
    """One row per stage: microseconds per sample and allocation peak (MB) at each N, and the growth."""
    sizes = result["sizes"]
    head = ["stage", *(f"N={n:,}: us/sample, peak MB" for n in sizes), "us/sample largest / smallest N"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in result["by_size"][str(sizes[0])]["stages"]:
        cells = []
        for n in sizes:
            entry = result["by_size"][str(n)]["stages"][name]
            cells.append(f"{entry['us_per_sample']:.3g} us ({entry['median_s']:.3g} s), {entry['peak_mb']:.3g} MB")
        growth = result["per_sample_growth"][name]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'-' if growth is None else f'{growth:.2f}'} |")
    writes = ", ".join(f"{result['by_size'][str(n)]['write_shards_s']:.0f} s at N={n:,}" for n in sizes)
    return "\n".join(lines) + f"\n\nWriting the shard sets (not a stage of a run, for scale): {writes}.\n"
