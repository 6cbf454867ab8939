"""Epoch-level training and evaluation shared by the single-process run and the Ray workers
(no Ray, no DALI imports): one training epoch, evaluation of both branches, the results record and
the per-run logs."""

from __future__ import annotations

import sys
import time
from typing import Callable

import numpy as np
import torch

from soft_dist.config import Config
from soft_dist.metrics import noisy_part_diagnostics
from soft_dist.noise.table import NoiseTable
from soft_dist.train.loop import RunningMeans, SoftLearner, choose_branch, predict, report_predictions


def train_epoch(
    learner: SoftLearner,
    loader,
    epoch: int,
    on_step: Callable[[int], None] | None = None,
    progress: bool = False,
) -> dict:
    """Train one epoch; returns mean loss parts, images/s (valid rows only) and the step count.

    ``on_step(global_step)`` runs after every step (teacher-buffer sync, failure injection)."""
    learner.start_epoch(epoch)
    means = RunningMeans()
    steps = len(loader)
    images = 0
    bar = None
    if progress and sys.stderr.isatty():  # a bar for people; logs and CI get the epoch line only
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=f"epoch {epoch}", unit="step", leave=False)
    start = time.perf_counter()
    for i, batch in enumerate(loader.epoch(epoch)):
        means.add(learner.train_step(batch, epoch + i / max(steps, 1)))
        images += int(batch.valid.sum()) if getattr(batch, "valid", None) is not None else len(batch.idx)
        if on_step is not None:
            on_step(learner.global_step)
        if bar is not None:
            bar.update(1)
    if learner.device.type == "cuda":
        torch.cuda.synchronize(learner.device)
    elapsed = time.perf_counter() - start
    if bar is not None:
        bar.close()
    out = means.result()
    out.update(images=images, steps=steps, seconds=elapsed, images_per_s=images / max(elapsed, 1e-9))
    return out


def predictions(learner: SoftLearner, loader) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """branch -> (preds, labels, idx) over ``loader``'s valid rows (this process's share)."""
    return {
        name: predict(module, loader.epoch(0), learner.device, autocast=learner.autocast)
        for name, module in learner.branches().items()
    }


def reports(preds_by_branch: dict, num_classes: int, label_lookup: np.ndarray | None = None) -> dict:
    """branch -> {accuracy, mean_class_accuracy, num_samples}."""
    return {b: report_predictions(*p, num_classes, label_lookup) for b, p in preds_by_branch.items()}


def noise_diagnostics(preds_by_branch: dict, table: NoiseTable) -> dict:
    """branch -> Table 2 diagnostics on training predictions, using the table's clean/noisy labels.

    Rows whose idx is not in the table are left out."""
    order = np.argsort(table.idx, kind="stable")  # a noise file given by the user need not be sorted
    idx_sorted, clean, noisy = table.idx[order], table.clean[order], table.noisy[order]
    out = {}
    for branch, (preds, _, idx) in preds_by_branch.items():
        pos = np.searchsorted(idx_sorted, idx)
        keep = (pos < len(idx_sorted)) & (idx_sorted[np.minimum(pos, len(idx_sorted) - 1)] == idx)
        pos = pos[keep]
        out[branch] = noisy_part_diagnostics(preds[keep], clean[pos], noisy[pos])
    return out


def with_chosen(reports_by_branch: dict, chosen: str) -> dict:
    return {**reports_by_branch, "chosen": dict(reports_by_branch[chosen])}


def epoch_summary_line(epoch: int, epochs: int, train: dict, val: dict, workers: int | None = None) -> str:
    parts = [f"epoch {epoch + 1}/{epochs}", f"loss {train.get('loss', float('nan')):.3f}"]
    if "share_k_gt_1" in train:
        parts.append(f"k>1 {train['share_k_gt_1']:.2f}")
    parts += [f"val {b} {r['accuracy']:.3f}" for b, r in val.items()]
    parts.append(f"{train['images_per_s']:.0f} img/s" + (f" x {workers} workers" if workers else ""))
    return " | ".join(parts)


def final_results(
    cfg: Config,
    val: dict,
    test: dict | None,
    table: NoiseTable | None,
    diagnostics: dict | None,
    throughput: dict,
    epochs_run: int,
    wall_time_s: float,
    teacher_sync: dict | None = None,
) -> dict:
    """The results.json record (see README 'Results')."""
    chosen = choose_branch(val, cfg.train.select_metric)
    return {
        "method": cfg.method.name,
        "chosen_branch": chosen,
        "select_metric": cfg.train.select_metric,
        "val": with_chosen(val, chosen),
        "test": with_chosen(test, chosen) if test else None,
        "noise": {
            "kind": table.kind if table is not None else "none",
            "rate": table.rate if table is not None else 0.0,
            "seed": table.seed if table is not None else None,
            "flipped": int(table.flipped.sum()) if table is not None else 0,
            "table_sha256": table.digest() if table is not None else None,
            "diagnostics": diagnostics,
        },
        "teacher_sync": teacher_sync or {"checks": 0, "mismatches": 0},
        "throughput": throughput,
        "epochs": epochs_run,
        "wall_time_s": wall_time_s,
    }
