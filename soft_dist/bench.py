"""`soft-dist bench`: one harness for every benchmark.

Each benchmark is a function ``run(args) -> dict`` in its own module, registered in BENCHMARKS with a
function adding its own options. The harness adds the machine description, writes the JSON (``--json``)
and prints a table. Timings use :func:`median_time`: warm-up calls first, then the median of repeats.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

# benchmark name -> (module, help). The module has add_arguments(parser) and run(args) -> dict.
BENCHMARKS = {
    "step": ("soft_dist.train.bench_step", "time per training step: CE vs mean teacher vs SOFT"),
    "train": ("soft_dist.train.bench_train", "images/s: plain single-process loop vs Ray Train with 1 worker"),
    "pipeline": ("soft_dist.data.bench_pipeline", "two-view input throughput: DALI CPU vs torch loader"),
    "shard": ("soft_dist.data.bench_shard", "sharding throughput: images/s with and without MTCNN, 1 and 2 processes"),
    "scaling": ("soft_dist.train.bench_scaling", "Ray Train images/s and scaling efficiency with 1..N workers"),
}


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> dict:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": len(times)}


def median_times_interleaved(fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1) -> dict:
    """:func:`median_time` for several functions whose timings are compared: the calls alternate
    (a, b, a, b, ...) so that load from other processes on a shared machine falls on all of them alike.
    Returns {name: median_time's dict}."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            times[name].append(median_time(fn, repeats=1, warmup=0)["median_s"])
    return {
        name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "repeats": len(t)}
        for name, t in times.items()
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> dict:
    """CPU, cores, GPU and library versions, recorded with every benchmark result."""
    import numpy
    import torch

    info = {
        # Distinguishes machines without naming them; hashlib, since Python's hash() is salted per process.
        "hostname_hash": hashlib.sha256(platform.node().encode()).hexdigest()[:8],
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for name in ("nvidia.dali", "ray", "webdataset"):
        try:
            info[name.split(".")[-1]] = importlib.import_module(name).__version__
        except Exception:  # not installed or no version: leave it out
            pass
    return info


def print_table(result: dict, out=sys.stdout) -> None:
    """Print the flat numeric leaves of a result as a two-column table."""

    def leaves(node, prefix=""):
        if isinstance(node, dict):
            for key, value in node.items():
                if key != "machine":
                    yield from leaves(value, f"{prefix}{key}.")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from leaves(value, f"{prefix}{i}.")
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            yield prefix[:-1], node

    rows = list(leaves(result))
    width = max((len(k) for k, _ in rows), default=10)
    for key, value in rows:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {text}", file=out)
    m = result.get("machine", {})
    print(f"  machine: {m.get('cpu')} x{m.get('cores')}, gpu={m.get('gpu')}, torch {m.get('torch')}", file=out)


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks (median of repeats, JSON + table)")
    kinds = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, (module, help_text) in BENCHMARKS.items():
        bench_module = importlib.import_module(module)
        sub = kinds.add_parser(name, help=help_text)
        sub.add_argument("--json", type=Path, default=None, help="write the result to this JSON file")
        sub.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported), >= 5")
        bench_module.add_arguments(sub)
        sub.set_defaults(func=_run, bench_module=module)


def _run(args: argparse.Namespace) -> int:
    if args.repeats < 5:
        raise SystemExit("soft-dist bench: --repeats must be >= 5 (medians of fewer are not reported)")
    result = importlib.import_module(args.bench_module).run(args)
    result = {"benchmark": args.benchmark, **result, "machine": machine_description()}
    print(f"soft-dist bench {args.benchmark}:")
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"  written to {args.json}")
    return 0
