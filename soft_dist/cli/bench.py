"""`soft-dist bench KIND`: run one benchmark, print its table, write its JSON.

Each benchmark is a module of soft_dist.bench with ``add_arguments(parser)`` (light imports only, so
``--help`` stays fast) and ``run(args) -> dict``. The harness adds the machine description."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

from soft_dist.bench.harness import machine_description, print_table

# benchmark name -> (module, help). The module has add_arguments(parser) and run(args) -> dict.
BENCHMARKS = {
    "step": ("soft_dist.bench.step", "time per training step: CE vs mean teacher vs SOFT"),
    "train": ("soft_dist.bench.train", "images/s: plain single-process loop vs Ray Train with 1 worker"),
    "pipeline": ("soft_dist.bench.pipeline", "two-view input throughput: DALI CPU vs torch loader"),
    "shard": ("soft_dist.bench.shard", "sharding throughput: images/s with and without MTCNN, 1 and 2 processes"),
    "scaling": ("soft_dist.bench.scaling", "Ray Train images/s and scaling efficiency with 1..N workers"),
    "predict": ("soft_dist.bench.predict", "soft-dist predict photos/s: one process vs Ray Data stages"),
    "serve": ("soft_dist.bench.serve", "soft-dist serve under load on loopback: requests/s and p50/p95/p99 at concurrency 1/4/16 vs a bare loop"),
    "metadata": ("soft_dist.bench.metadata", "the stages that touch every sample's metadata (labels, splits, noise, sampler, audit ranking) against N"),
    "scale": ("soft_dist.bench.scale", "training from shards at 10k / 100k / 300k generated images: images/s, memory, eval, checkpoint"),
    "shard-scale": ("soft_dist.bench.shard_scale", "soft-dist shard of an image folder of 10k / 100k photos: time per image and peak memory, 1 / 2 processes and Ray"),
    "tools-scale": ("soft_dist.bench.tools_scale", "eval, audit and predict over whole splits / folders of 10k / 100k images: time per image and peak memory"),
    "audit": ("soft_dist.bench.audit", "finding wrong labels: SOFT audit vs CE loss vs cleanlab K-fold (AUROC, compute)"),
}


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
