"""Training in this process, without Ray: the run loop as rank 0 of 1, with checkpoints written straight
into the run directory. Used by tests, `soft-dist bench train` and small runs."""

from __future__ import annotations

from pathlib import Path

from soft_dist.config import Config, resolve_for_classes, with_absolute_paths
from soft_dist.data.format import load_manifest
from soft_dist.data.loader import Loaders
from soft_dist.data.run_loaders import shard_loaders
from soft_dist.noise.setup import make_noise_table
from soft_dist.noise.table import NoiseTable
from soft_dist.run_files import CONFIG_FILE
from soft_dist.run_inputs import write_run_inputs
from soft_dist.storage import RunStore
from soft_dist.train.checkpoints import drop_resumable_state
from soft_dist.train.run import Placement, Trainer
from soft_dist.train.selection import DatasetInfo


def fit_local(
    cfg: Config,
    loaders: Loaders,
    num_classes: int,
    table: NoiseTable,
    run_dir: str | Path,
    device: str = "cpu",
    progress: bool = True,
    verbose: bool = True,
    data: DatasetInfo | None = None,
) -> dict:
    """Train ``cfg`` into ``run_dir`` (a new run, or the continuation of one that holds checkpoints);
    returns the results record, also written to RUN/results.json."""
    import torch

    cfg = with_absolute_paths(resolve_for_classes(cfg, num_classes))  # config.yaml usable from any folder
    store = RunStore(run_dir)
    if not store.exists(CONFIG_FILE):
        write_run_inputs(store, cfg, table)
    trainer = Trainer(cfg, store, table, data or DatasetInfo.unnamed(num_classes), loaders,
                      Placement(device=torch.device(device)), echo=_print if verbose else None, progress=progress)
    results = trainer.fit()
    if not cfg.train.keep_state:
        drop_resumable_state(store)
    return results


def fit_from_shards(cfg: Config, run_dir: str | Path) -> dict:
    """Train ``cfg`` from its shards (data.shards) into ``run_dir`` in this process, quietly: its noise
    table, its shard loaders (closed after), model.pt naming the shards' classes. Returns the results."""
    table, num_classes = make_noise_table(cfg)
    loaders = shard_loaders(cfg, diagnostics=False)
    try:
        return fit_local(cfg, loaders, num_classes, table, run_dir, progress=False, verbose=False,
                         data=DatasetInfo.from_manifest(load_manifest(loaders.shards_dir)))
    finally:
        loaders.close()


def _print(line: str) -> None:
    print(line, flush=True)
