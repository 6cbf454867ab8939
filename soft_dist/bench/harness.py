"""What every benchmark shares: timing (warm-up calls, then the median of repeats), the machine
description recorded with each result, and the table printed on the console.

The benchmarks are the other modules of soft_dist.bench, one per ``soft-dist bench`` kind
(registered in soft_dist.cli.bench)."""

from __future__ import annotations

import hashlib
import importlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable



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


def print_table(result: dict, out=None) -> None:
    """Print the flat numeric leaves of a result as a two-column table (to ``out``, default: sys.stdout as
    it is at the call, not as it was at import, so a caller that redirects stdout gets the table)."""
    out = out if out is not None else sys.stdout

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


def add_training_run_arguments(parser, overrides_help: str) -> None:
    """The options of the benchmarks that train real runs (train, scaling): shards, config, method, overrides."""
    parser.add_argument("--shards", type=Path, help="shard folder (default: digits shards written to a temp folder)")
    parser.add_argument("--config", type=Path, metavar="NAME|FILE", help="run config (default: digits_cpu)")
    parser.add_argument("--method", default="soft")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=overrides_help)
