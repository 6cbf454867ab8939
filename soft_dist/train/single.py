"""Single-process training: the reference loop (no Ray), used by tests, `bench train` and small runs."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from soft_dist.config import Config, save_config
from soft_dist.method.model import build_student
from soft_dist.noise import NoiseTable
from soft_dist.train.fit import (
    Loaders,
    RunLog,
    epoch_summary_line,
    final_results,
    noise_diagnostics,
    predictions,
    reports,
    train_epoch,
)
from soft_dist.train.loop import SoftLearner


def noisy_lookup(table: NoiseTable) -> torch.Tensor:
    """[max idx + 1] int64 tensor of noisy labels by sample idx (-1 where no training sample)."""
    return torch.from_numpy(table.lookup())


def fit_single(
    cfg: Config,
    loaders: Loaders,
    num_classes: int,
    table: NoiseTable,
    run_dir: str | Path,
    device: str = "cpu",
    progress: bool = True,
    verbose: bool = True,
) -> dict:
    """Train for cfg.train.epochs in this process, evaluate both branches, write results.json."""
    import json

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    table.save(run_dir / "noise_table.csv")
    torch.manual_seed(cfg.train.seed)
    student, weights = build_student(
        cfg.model.name, num_classes, cfg.data.image_size, cfg.model.small_stem, cfg.model.pretrained,
        uncertainty=cfg.preset["head"],
    )
    learner = SoftLearner(cfg, student, device, noisy_labels=noisy_lookup(table))
    val_lookup = table.lookup() if cfg.data.val_labels == "noisy" else None
    log = RunLog(run_dir)
    start = time.perf_counter()
    speeds = []
    val = {}
    for epoch in range(cfg.train.epochs):
        train = train_epoch(learner, loaders.train, epoch, progress=progress)
        speeds.append(train["images_per_s"])
        val = reports(predictions(learner, loaders.val), num_classes, val_lookup)
        log.log(epoch, {"train": train, "val": val, "head": learner.head_on})
        if verbose:
            print(epoch_summary_line(epoch, cfg.train.epochs, train, val), flush=True)
    test = reports(predictions(learner, loaders.test), num_classes) if loaders.test is not None else None
    diagnostics = None
    if loaders.train_eval is not None:
        diagnostics = noise_diagnostics(predictions(learner, loaders.train_eval), table)
    results = final_results(
        cfg, val, test, table, diagnostics,
        throughput={"images_per_s_per_worker": float(np.median(speeds)), "workers": 1,
                    "per_epoch_images_per_s": speeds},
        epochs_run=cfg.train.epochs, wall_time_s=time.perf_counter() - start,
    )
    if weights is not None:
        results["pretrained"] = {"source": weights.source, "unexpected_keys": weights.unexpected}
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    torch.save(learner.state_dict(), run_dir / "final.pt")
    log.close()
    return results
