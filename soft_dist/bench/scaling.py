"""`soft-dist bench scaling`: Ray Train images/s with 1..N workers and the scaling efficiency.

Every worker count W runs the same short training (``--repeats`` + 1 epochs; epoch 0 is the warm-up)
with train.workers=W and a FIXED number of CPUs and torch threads per worker (``--threads``), so that
adding workers adds compute instead of splitting it. On a cluster (RAY_ADDRESS set) Ray places the
workers on whatever nodes have room; on one machine they share its cores. With ``--local-nodes N`` the
benchmark starts N raylets on this machine (``ray.cluster_utils.Cluster``, ``--threads`` CPUs each) and
W = 1..N workers then run one per node, talking across nodes as on a real cluster.

    images_per_s(W) = median over timed epochs of the summed images/s of all W workers
    efficiency(W)   = images_per_s(W) / (W * images_per_s(1))          (1.0 = linear scaling)

Each worker reports training images / training seconds of its own shard of the epoch (evaluation and
checkpointing excluded); the total is the sum over workers. Beside it, per W, from the run's results.json:
rank 0's share of its training time spent keeping the teachers identical (buffer all-reduce and checks)
and the median time to write and report an epoch checkpoint.
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
    parser.add_argument("--local-nodes", action="store_true",
                        help="start --workers nodes of --threads CPUs on this machine and run one worker per node")
    add_training_run_arguments(parser, "config overrides for every run")


def efficiencies(images_per_s: dict[int, float]) -> list[dict]:
    """{workers: images/s} -> the ``runs`` list [{workers, images_per_s, efficiency}] (W ascending)."""
    base = images_per_s[min(images_per_s)] / min(images_per_s)  # per-worker rate of the smallest run
    return [{"workers": w, "images_per_s": ips, "efficiency": ips / (w * base)}
            for w, ips in sorted(images_per_s.items())]


def run(args: argparse.Namespace) -> dict:
    import ray

    from soft_dist.ray_cluster import local_nodes

    if args.workers < 1 or args.threads < 1:
        raise SystemExit("soft-dist bench scaling: --workers and --threads must be >= 1")
    if not args.local_nodes:
        return _measure(args)
    print(f"[bench scaling] starting {args.workers} local node(s) of {args.threads} CPU(s)", flush=True)
    with local_nodes(args.workers, args.threads):
        out = _measure(args)
        out["config"]["local_nodes"] = sum(node["Alive"] for node in ray.nodes())
    return out


def _measure(args: argparse.Namespace) -> dict:
    """Train with W = 1..--workers workers on the connected cluster (or a new local one)."""
    from soft_dist.shard.build import ensure_digit_shards
    from soft_dist.config import load_config
    from soft_dist.train.ray_trainer import run_training

    measured: dict[int, float] = {}
    per_epoch: dict[int, list[float]] = {}
    costs: dict[int, dict] = {}
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
            sync = results.get("teacher_sync") or {}
            costs[workers] = {"teacher_sync_share": sync.get("share_of_train_time"),
                              "checkpoint_seconds": results["checkpoints"]["median_seconds"]}
    runs = efficiencies(measured)
    for row in runs:
        row["images_per_s_per_worker"] = row["images_per_s"] / row["workers"]
        row.update(costs[row["workers"]])
    return {
        "config": {"method": cfg.method.name, "image_size": cfg.data.image_size, "batch_size_per_worker":
                   cfg.train.batch_size, "threads_per_worker": args.threads, "loader": cfg.data.loader,
                   "epochs": cfg.train.epochs, "timed_epochs": cfg.train.epochs - 1,
                   "model": cfg.model.name, "local_nodes": None},
        "runs": runs,
        "per_epoch_images_per_s_total": {str(w): v for w, v in per_epoch.items()},
    }
