"""One epoch of the learner: its training pass, and the evaluation of its branches (predictions, accuracy
reports, the Table 2 noise diagnostics). Shared by the in-process run and the Ray workers; no Ray, no DALI."""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from soft_dist.metrics import (classification_report, confusion_matrix, diagnostics_of_counts, noisy_part_counts,
                               report_of_confusion)
from soft_dist.noise.table import NoiseTable
from soft_dist.progress import progress_bar
from soft_dist.train.collectives import all_reduce_sum
from soft_dist.train.step import RunningMeans, SoftLearner


@dataclass
class EpochProgress:
    """How far one epoch's training has come: ``steps`` of it done, ``samples`` of its order trained by all
    ranks together (soft_dist.data.sampler), the running sums of its epoch line and its seconds so far.
    A mid-epoch checkpoint keeps it; a resumed run continues the epoch from it."""

    steps: int = 0
    samples: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    count: int = 0
    seconds: float = 0.0

    def state(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> "EpochProgress":
        return cls(**state)


# on_step(global step, epoch index, step of the epoch from 1, batch): after every step (teacher-buffer
# sync, failure injection, the sample trace); at_checkpoint(progress): every ``checkpoint_every`` steps
# of an epoch but its last (the epoch's own checkpoint follows that one).
StepHook = Callable[[int, int, int, object], None]


def train_epoch(
    learner: SoftLearner,
    loader,
    epoch: int,
    on_step: StepHook | None = None,
    progress: bool = False,
    resume: EpochProgress | None = None,
    checkpoint_every: int = 0,
    at_checkpoint: Callable[[EpochProgress], None] | None = None,
) -> dict:
    """Train one epoch (the rest of it after ``resume``); returns mean loss parts, images/s (valid rows
    only), the step count and ``resumed_at_step`` (0 for a whole epoch). ``images`` and ``seconds`` count
    this process's part; the means run over the whole epoch."""
    learner.start_epoch(epoch)
    resume = resume or EpochProgress()
    means = RunningMeans(resume.sums, resume.count)
    steps = resume.steps + loader.steps(resume.samples)
    samples_per_step = loader.batch_size * loader.world_size  # all valid until the last step (sampler)
    images = 0
    # a bar for people on a terminal; logs and CI get the epoch line only
    bar = progress_bar(steps, f"epoch {epoch + 1}", "step", enabled=progress, lines_in_logs=False,
                       initial=resume.steps)
    start = time.perf_counter()
    for i, batch in enumerate(loader.epoch(epoch, resume.samples)):
        done = resume.steps + i + 1
        means.add(learner.train_step(batch, epoch + (done - 1) / max(steps, 1)))
        images += int(batch.valid.sum()) if getattr(batch, "valid", None) is not None else len(batch.idx)
        if on_step is not None:
            on_step(learner.global_step, epoch, done, batch)
        if at_checkpoint is not None and checkpoint_every and done % checkpoint_every == 0 and done < steps:
            sums, count = means.state()
            at_checkpoint(EpochProgress(done, resume.samples + (i + 1) * samples_per_step, sums, count,
                                        resume.seconds + time.perf_counter() - start))
        bar.update(1)
    if learner.device.type == "cuda":
        torch.cuda.synchronize(learner.device)
    elapsed = time.perf_counter() - start
    bar.close()
    out = means.result()
    out.update(images=images, steps=steps, seconds=resume.seconds + elapsed, images_per_s=images / max(elapsed, 1e-9),
               resumed_at_step=resume.steps)
    return out


@torch.no_grad()
def predict_branches(modules: dict[str, nn.Module], batches: Iterable, device: torch.device | str = "cpu",
                     autocast: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Arg-max predictions of every module in eval mode over ONE pass of batches with ``image``/``label``/
    ``idx``/``valid`` (each batch is decoded once and fed to every module: evaluating the student and the
    teacher costs one pass of the loader, not one per branch).

    Returns name -> numpy arrays (preds, labels, idx) [N] over the valid rows."""
    device = torch.device(device)
    was_training = {name: module.training for name, module in modules.items()}
    for module in modules.values():
        module.eval()
    preds = {name: [] for name in modules}
    labels, idxs = [], []
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if autocast and device.type == "cuda" else contextlib.nullcontext()
    try:
        for batch in batches:
            image = batch.image.to(device, non_blocking=True)
            keep = batch.valid.to(device) if getattr(batch, "valid", None) is not None else None
            lab, idx = batch.label.to(device), batch.idx.to(device)
            if keep is not None:
                lab, idx = lab[keep], idx[keep]
            labels.append(lab.cpu())
            idxs.append(idx.cpu())
            for name, module in modules.items():
                with ctx:
                    pred = module(image).argmax(dim=-1)
                preds[name].append((pred[keep] if keep is not None else pred).cpu())
    finally:
        for name, module in modules.items():
            module.train(was_training[name])
    cat = lambda xs: torch.cat(xs).numpy() if xs else np.zeros(0, dtype=np.int64)  # noqa: E731
    label_array, idx_array = cat(labels), cat(idxs)
    return {name: (cat(preds[name]), label_array, idx_array) for name in modules}


def predict(module: nn.Module, batches: Iterable, device: torch.device | str = "cpu", autocast: bool = False):
    """Arg-max predictions of ``module`` in eval mode over batches with ``image``/``label``/``idx``/``valid``.

    Returns numpy arrays (preds, labels, idx) [N] over the valid rows."""
    return predict_branches({"model": module}, batches, device, autocast)["model"]


def _targets(labels: np.ndarray, idx: np.ndarray, label_lookup: np.ndarray | None) -> np.ndarray:
    """The labels a report scores against: ``label_lookup`` [max idx + 1] by idx (noisy val), else ``labels``."""
    return label_lookup[idx] if label_lookup is not None else labels


def report_predictions(preds, labels, idx, num_classes: int, label_lookup: np.ndarray | None = None) -> dict:
    """Accuracy and mean class accuracy; ``label_lookup`` [max idx + 1] replaces labels by idx (noisy val)."""
    return classification_report(_targets(labels, idx, label_lookup), preds, num_classes)


def predictions(learner: SoftLearner, loader) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """branch -> (preds, labels, idx) over ``loader``'s valid rows (this process's share)."""
    return predict_branches(learner.branches(), loader.epoch(0), learner.device, autocast=learner.autocast)


def evaluate(learner: SoftLearner, loader, num_classes: int, label_lookup: np.ndarray | None = None) -> dict:
    """branch -> {accuracy, mean_class_accuracy, num_samples} over the whole split (a collective: every
    rank calls it); ``label_lookup`` as in :func:`report_predictions`.

    Each rank counts a confusion matrix [C, C] per branch on its share and the ranks sum them (a tensor of
    branches x C x C integers): nothing that grows with the split crosses the ranks. The split's shares
    are disjoint (padding rows are not valid), so the sums are the whole split's matrices."""
    mine = predictions(learner, loader)
    counts = np.stack([confusion_matrix(_targets(labels, idx, label_lookup), preds, num_classes)
                       for preds, labels, idx in mine.values()])
    summed = all_reduce_sum(counts, learner.device)
    return {branch: report_of_confusion(cm) for branch, cm in zip(mine, summed)}


def noise_diagnostics(learner: SoftLearner, loader, table: NoiseTable) -> dict:
    """branch -> Table 2 diagnostics of the branch's predictions on ``loader`` (the training split without
    augmentation) against the table's clean and noisy labels; rows whose idx is not in the table are left
    out. A collective: each rank counts on its share, the ranks sum the counts."""
    order = np.argsort(table.idx, kind="stable")  # a noise file given by the user need not be sorted
    idx_sorted, clean, noisy = table.idx[order], table.clean[order], table.noisy[order]
    mine = predictions(learner, loader)
    counts = []
    for preds, _, idx in mine.values():
        pos = np.searchsorted(idx_sorted, idx)
        keep = (pos < len(idx_sorted)) & (idx_sorted[np.minimum(pos, len(idx_sorted) - 1)] == idx)
        pos = pos[keep]
        counts.append(noisy_part_counts(preds[keep], clean[pos], noisy[pos]))
    summed = all_reduce_sum(np.stack(counts), learner.device)
    return {branch: diagnostics_of_counts(c) for branch, c in zip(mine, summed)}
