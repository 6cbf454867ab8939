"""`soft-dist bench scaling`: Ray Train images/s with 1..N workers and the scaling efficiency.

Every worker count W runs the same short training (``--repeats`` + 1 epochs; epoch 0 is the warm-up)
with train.workers=W and a FIXED number of CPUs and torch threads per worker (``--threads``), so that
adding workers adds compute instead of splitting it. On a cluster (RAY_ADDRESS set) Ray places the
workers on whatever nodes have room; on one machine they share its cores.

    images_per_s(W) = median over timed epochs of the summed images/s of all W workers
    efficiency(W)   = images_per_s(W) / (W * images_per_s(1))          (1.0 = linear scaling)

Each worker reports training images / training seconds of its own shard of the epoch (evaluation and
checkpointing excluded); the total is the sum over workers.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from soft_dist.bench.harness import add_training_run_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=2, help="largest worker count N (runs 1..N)")
    parser.add_argument("--threads", type=int, default=1, help="CPUs and torch threads per worker (fixed)")
    add_training_run_arguments(parser, "config overrides for every run")


def efficiencies(images_per_s: dict[int, float]) -> list[dict]:
    """{workers: images/s} -> the ``runs`` list [{workers, images_per_s, efficiency}] (W ascending)."""
    base = images_per_s[min(images_per_s)] / min(images_per_s)  # per-worker rate of the smallest run
    return [{"workers": w, "images_per_s": ips, "efficiency": ips / (w * base)}
            for w, ips in sorted(images_per_s.items())]


def run(args: argparse.Namespace) -> dict:
    from soft_dist.shard.build import ensure_digit_shards
    from soft_dist.config import load_config
    from soft_dist.train.ray_trainer import run_training

    if args.workers < 1 or args.threads < 1:
        raise SystemExit("soft-dist bench scaling: --workers and --threads must be >= 1")
    measured: dict[int, float] = {}
    per_epoch: dict[int, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = args.shards or ensure_digit_shards(tmp / "digits32")
        for workers in range(1, args.workers + 1):
            overrides = [f"data.shards={shards}", f"method.name={args.method}", f"train.workers={workers}",
                         f"train.cpus_per_worker={args.threads}", f"train.torch_threads={args.threads}",
                         f"train.epochs={args.repeats + 1}",
                         # the head on from the start: every epoch costs the same
                         "method.stage1_epochs=0", *args.overrides]
            cfg = load_config(args.config or "digits_cpu", overrides)
            print(f"[bench scaling] {workers} worker(s) x {args.threads} thread(s), {cfg.train.epochs} epochs",
                  flush=True)
            results = run_training(cfg, tmp / f"w{workers}")
            # per_epoch_images_per_s is the mean over workers of each epoch: x W gives the total.
            totals = [workers * s for s in results["throughput"]["per_epoch_images_per_s"]]
            per_epoch[workers] = totals
            measured[workers] = statistics.median(totals[1:])  # epoch 0 is the warm-up
    return {
        "config": {"method": cfg.method.name, "image_size": cfg.data.image_size, "batch_size_per_worker":
                   cfg.train.batch_size, "threads_per_worker": args.threads, "loader": cfg.data.loader,
                   "epochs": cfg.train.epochs, "timed_epochs": cfg.train.epochs - 1,
                   "model": cfg.model.name},
        "runs": efficiencies(measured),
        "per_epoch_images_per_s_total": {str(w): v for w, v in per_epoch.items()},
    }
