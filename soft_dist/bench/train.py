"""`soft-dist bench train`: Ray Train's overhead on one worker, in interleaved pairs.

Each pair trains the same config twice, 1 worker owning the machine's cores: once in the plain
single-process loop (``fit_local``) and once with Ray Train (``run_training``); the side that goes first
alternates (plain-Ray, Ray-plain, ...) so that drift on a shared machine falls on both alike. The local
Ray cluster starts once, before the first pair, so pairs time training and not cluster start-up.

A run's images/s is the median of the run loop's own ``per_epoch_images_per_s`` (timed around the step
loop only) over its epochs after the first, which is the warm-up. Per pair::

    ratio = plain_images_per_s / ray_images_per_s     (a time ratio: > 1 means Ray is slower)

reported with its median, min, max and interquartile range over the pairs. (The harness's ``--repeats``
is not used here: ``--pairs`` are the repeats.)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from soft_dist.bench.harness import add_training_run_arguments

RATIO = "plain_images_per_s / ray_images_per_s (time ratio: > 1 means Ray is slower)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", type=int, default=5, help="interleaved plain/Ray pairs, >= 5 (default 5)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run, the first untimed (default 3)")
    add_training_run_arguments(parser, "config overrides for both sides")


def spread(values: list[float]) -> dict:
    """median, min, max and the interquartile range (inclusive quartiles) of ``values``."""
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": median, "min": min(values), "max": max(values), "q1": q1, "q3": q3, "iqr": q3 - q1}


def run(args: argparse.Namespace) -> dict:
    import ray
    import torch

    from soft_dist.shard.build import ensure_digit_shards
    from soft_dist.config import load_config
    from soft_dist.ray_cluster import init_ray
    from soft_dist.noise.setup import make_noise_table
    from soft_dist.data.run_loaders import shard_loaders
    from soft_dist.train.ray_trainer import run_training
    from soft_dist.train.local import fit_local

    if args.pairs < 5 or args.epochs < 2:
        raise SystemExit("soft-dist bench train: --pairs must be >= 5 and --epochs >= 2")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = args.shards or ensure_digit_shards(tmp / "digits32")
        # One worker that owns the machine's cores, on both sides alike.
        overrides = [f"data.shards={shards}", f"method.name={args.method}", "train.workers=1",
                     f"train.epochs={args.epochs}", "method.stage1_epochs=0",  # every epoch costs the same
                     f"train.cpus_per_worker={torch.get_num_threads()}", *args.overrides]
        cfg = load_config(args.config or "digits_cpu", overrides)
        threads = cfg.train.torch_threads or cfg.train.cpus_per_worker

        def plain(run_dir: Path) -> dict:
            table, num_classes = make_noise_table(cfg)
            torch.set_num_threads(threads)  # as the Ray worker does
            loaders = shard_loaders(cfg)
            try:
                return fit_local(cfg, loaders, num_classes, table, run_dir, progress=False, verbose=False)
            finally:
                loaders.close()

        sides = {"plain": plain, "ray": lambda run_dir: run_training(cfg, run_dir, echo=None)}
        init_ray()
        pairs = []
        try:
            for i in range(args.pairs):
                order = ("plain", "ray") if i % 2 == 0 else ("ray", "plain")
                pair = {"first": order[0]}
                for side in order:
                    with tempfile.TemporaryDirectory(dir=tmp) as run_dir:
                        per_epoch = sides[side](Path(run_dir) / "run")["throughput"]["per_epoch_images_per_s"]
                    pair[f"{side}_images_per_s"] = statistics.median(per_epoch[1:])  # epoch 0: warm-up
                pair["ratio"] = pair["plain_images_per_s"] / pair["ray_images_per_s"]
                print(f"[bench train] pair {i + 1}/{args.pairs} ({order[0]} first): plain "
                      f"{pair['plain_images_per_s']:.0f}, Ray {pair['ray_images_per_s']:.0f} img/s, "
                      f"ratio {pair['ratio']:.3f}", flush=True)
                pairs.append(pair)
        finally:
            ray.shutdown()
    return {
        "config": {"method": cfg.method.name, "model": cfg.model.name, "image_size": cfg.data.image_size,
                   "batch_size": cfg.train.batch_size, "loader": cfg.data.loader, "workers": 1,
                   "threads": threads, "loader_threads": cfg.data.num_threads, "epochs": cfg.train.epochs,
                   "timed_epochs": cfg.train.epochs - 1, "pairs": args.pairs, "order": "ABBA"},
        "ratio_definition": RATIO,
        "pairs": pairs,
        "plain_images_per_s": spread([p["plain_images_per_s"] for p in pairs]),
        "ray_images_per_s": spread([p["ray_images_per_s"] for p in pairs]),
        "ratio": spread([p["ratio"] for p in pairs]),
    }
