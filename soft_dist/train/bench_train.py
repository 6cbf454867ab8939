"""`soft-dist bench train`: images/s of the same tiny config in the plain single-process loop and in
Ray Train with 1 worker. Each epoch is one repeat; the first epoch is the warm-up and is not counted."""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", type=Path, help="shard folder (default: digits shards written to a temp folder)")
    parser.add_argument("--config", type=Path, help="config file (default: configs/digits_cpu.yaml)")
    parser.add_argument("--method", default="soft")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for both runs")


def _timed(per_epoch: list[float]) -> dict:
    timed = per_epoch[1:]  # epoch 0 is the warm-up
    return {"images_per_s": statistics.median(timed), "per_epoch_images_per_s": per_epoch, "repeats": len(timed)}


def run(args: argparse.Namespace) -> dict:
    import torch

    from soft_dist.commands.demo import DEMO_CONFIG, ensure_digit_shards
    from soft_dist.config import load_config
    from soft_dist.train.data import shard_loaders
    from soft_dist.train.ray_trainer import make_noise_table, run_training
    from soft_dist.train.single import fit_single

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = args.shards or ensure_digit_shards(tmp / "digits32")
        # One worker that owns the machine's cores, in both runs alike.
        overrides = [f"data.shards={shards}", f"method.name={args.method}", "train.workers=1",
                     f"train.epochs={args.repeats + 1}", "method.stage1_epochs=0",
                     f"train.cpus_per_worker={torch.get_num_threads()}", *args.overrides]
        cfg = load_config(args.config or DEMO_CONFIG, overrides)
        table, num_classes = make_noise_table(cfg)
        torch.set_num_threads(cfg.train.torch_threads or cfg.train.cpus_per_worker)
        loaders = shard_loaders(cfg, diagnostics=False)
        try:
            plain = fit_single(cfg, loaders, num_classes, table, tmp / "plain", progress=False, verbose=False)
        finally:
            loaders.close()
        ray = run_training(cfg, tmp / "ray")
    out = {
        "config": {"method": cfg.method.name, "image_size": cfg.data.image_size, "batch_size": cfg.train.batch_size,
                   "loader": cfg.data.loader, "threads": cfg.train.torch_threads or cfg.train.cpus_per_worker,
                   "epochs": cfg.train.epochs},
        "plain": _timed(plain["throughput"]["per_epoch_images_per_s"]),
        "ray": _timed(ray["throughput"]["per_epoch_images_per_s"]),
    }
    out["ratio_plain_over_ray"] = out["plain"]["images_per_s"] / out["ray"]["images_per_s"]
    sync = ray.get("teacher_sync") or {}
    if "share_of_train_time" in sync:
        out["teacher_sync_share_of_train_time"] = sync["share_of_train_time"]
    return out
