"""The loaders one training process uses for a run, built from the config's shard folder (staged to local
disk when it is a URL) and the splits the run trains and evaluates on (see soft_dist.data.loader)."""

from __future__ import annotations

from soft_dist.config import Config
from soft_dist.data.format import load_manifest
from soft_dist.data.splits import run_splits
from soft_dist.data.stage import local_shards
from soft_dist.data.loader import Loaders, build_eval_loader, build_train_loader


def shard_loaders(cfg: Config, rank: int = 0, world_size: int = 1, device: str = "cpu",
                  diagnostics: bool = True) -> Loaders:
    """Train (two views), val, test (when the manifest has it) and an un-augmented train pass for the
    Table 2 diagnostics, each split across ``world_size`` ranks."""
    d = cfg.data
    shards = str(local_shards(d.shards, d.cache_dir, d.cache_max_gb))  # a URL is staged to local disk
    splits = run_splits(load_manifest(shards), d)  # the shards' splits, or the ones the config carves
    common = dict(rank=rank, world_size=world_size, device=device)

    def evaluation(split):
        return build_eval_loader(shards, split, d, cfg.train.eval_batch_size, **common)

    return Loaders(
        train=build_train_loader(shards, splits["train"], d, cfg.train.batch_size, seed=cfg.train.seed, **common),
        val=evaluation(splits["val"]),
        test=evaluation(splits["test"]) if "test" in splits else None,
        train_eval=evaluation(splits["train"]) if diagnostics else None,
        shards_dir=shards,
    )
