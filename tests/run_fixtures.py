"""Real runs trained in the test process (no Ray): the fixtures of the serve and audit tests."""

from __future__ import annotations

from pathlib import Path

# The tiny SOFT run the fixtures share: digits at 16 px through the torch loader, one loader thread.
SMALL_RUN = ["data.loader=torch", "data.image_size=16", "method.rampup_epochs=1", "train.batch_size=128",
             "data.num_threads=1"]
# The reference run of the session (conftest.reference_run): 3 epochs reach the head's stage and give the
# audit a ranking well above chance; noise seed 3 is the audit's noise draw.
REFERENCE_RUN = ["train.epochs=3", "method.stage1_epochs=1", "noise.kind=symmetric", "noise.rate=0.3", "noise.seed=3"]


def train_in_process(run_dir: Path, digit_shards: Path, overrides: list[str]) -> Path:
    """Train the digits_cpu config on ``digit_shards`` with SMALL_RUN and ``overrides`` into ``run_dir``,
    in this process (soft_dist.train.local); model.pt names the shards' classes."""
    from soft_dist.config import load_config
    from soft_dist.data.format import load_manifest
    from soft_dist.noise.setup import make_noise_table
    from soft_dist.data.run_loaders import shard_loaders
    from soft_dist.train.selection import DatasetInfo
    from soft_dist.train.local import fit_local

    cfg = load_config("digits_cpu", [f"data.shards={digit_shards}", *SMALL_RUN, *overrides])
    table, num_classes = make_noise_table(cfg)
    loaders = shard_loaders(cfg, diagnostics=False)
    try:
        fit_local(cfg, loaders, num_classes, table, run_dir, progress=False, verbose=False,
                   data=DatasetInfo.from_manifest(load_manifest(loaders.shards_dir)))
    finally:
        loaders.close()
    return run_dir
