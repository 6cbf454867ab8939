"""An epoch's evaluation across ranks: each rank counts confusion matrices (and the Table 2 counts) on its
share and the ranks sum them with a tensor collective. On two real gloo ranks the reports must be exactly
those of one process over the whole split, and those of the per-sample formulas."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from soft_dist.config import load_config
from soft_dist.data.memory_loaders import MemoryLoader
from soft_dist.method.model import build_student
from soft_dist.metrics import classification_report, confusion_matrix, diagnostics_of_counts, noisy_part_counts
from soft_dist.noise.table import NoiseTable
from soft_dist.train.epoch import evaluate, noise_diagnostics, predict
from soft_dist.train.step import SoftLearner
from two_ranks import on_two_ranks

CLASSES = 4
SAMPLES = 53  # not a multiple of the batch (8) nor of the world size: padding rows must not count


def _learner() -> SoftLearner:
    cfg = load_config(None, ["method.name=soft", "data.image_size=16", "model.width=16"])
    torch.manual_seed(0)  # the same weights on every rank
    student, _ = build_student("resnet18", CLASSES, 16, small_stem=False, pretrained=None, width=16, uncertainty=True)
    learner = SoftLearner(cfg, student)
    with torch.no_grad():  # a teacher that differs from the student, so the two branches' numbers differ
        for p in learner.teacher.teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return learner


def _split():
    """(images [N, 3, 16, 16], labels [N], idx [N]) and a noise table over 40 of the N samples (the rest
    are not in it and are left out of the diagnostics); noisy validation labels are every sample's."""
    gen = np.random.default_rng(0)
    images = torch.from_numpy(gen.normal(size=(SAMPLES, 3, 16, 16)).astype(np.float32))
    labels = torch.from_numpy(gen.integers(0, CLASSES, SAMPLES))
    idx = torch.arange(100, 100 + SAMPLES)  # global sample indices, not positions
    noisy = labels.numpy().copy()
    noisy[::3] = (noisy[::3] + 1) % CLASSES
    table = NoiseTable(idx=idx.numpy()[:40], clean=labels.numpy()[:40], noisy=noisy[:40], kind="symmetric", rate=0.3)
    return images, labels, idx, table, NoiseTable(idx=idx.numpy(), clean=labels.numpy(), noisy=noisy).lookup()


def _loader(images, labels, idx, rows) -> MemoryLoader:
    return MemoryLoader(images[rows], labels[rows], idx[rows], batch_size=8, train=False, seed=0, flip=False)


def _evaluations(learner, loader, table, val_labels) -> dict:
    return {"val": evaluate(learner, loader, CLASSES, val_labels), "test": evaluate(learner, loader, CLASSES),
            "diagnostics": noise_diagnostics(learner, loader, table)}


def _one_rank(rank: int, out_dir: str) -> None:
    images, labels, idx, table, val_labels = _split()
    share = _loader(images, labels, idx, torch.arange(rank, SAMPLES, 2))  # 27 and 26 rows
    result = _evaluations(_learner(), share, table, val_labels)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


def _same(a, b) -> bool:
    """Equal, nan included (json turns nan into NaN and back)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_two_ranks_report_exactly_what_one_process_reports_on_the_whole_split(tmp_path):
    images, labels, idx, table, val_labels = _split()
    learner = _learner()
    whole = _evaluations(learner, _loader(images, labels, idx, torch.arange(SAMPLES)), table, val_labels)
    on_two_ranks(_one_rank, tmp_path, str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert _same(ranks[0], ranks[1]) and _same(ranks[0], whole)
    assert whole["val"]["student"]["num_samples"] == SAMPLES and whole["diagnostics"]["teacher"]["num_flipped"] == 14

    # ... and those are the per-sample formulas' numbers
    for branch, module in learner.branches().items():
        preds, _, pred_idx = predict(module, _loader(images, labels, idx, torch.arange(SAMPLES)).epoch(0))
        assert whole["test"][branch] == classification_report(labels.numpy(), preds, CLASSES)
        assert whole["val"][branch] == classification_report(val_labels[pred_idx], preds, CLASSES)
        in_table = pred_idx < 140
        clean, noisy, p = table.clean, table.noisy, preds[in_table]
        flipped = clean != noisy
        expected = {"num_flipped": int(flipped.sum()),
                    "clean_part_accuracy": float(np.mean(p[~flipped] == clean[~flipped])),
                    "noisy_predicted_correct": float(np.mean(p[flipped] == clean[flipped])),
                    "noisy_predicted_noise": float(np.mean(p[flipped] == noisy[flipped]))}
        assert whole["diagnostics"][branch] == expected
    assert whole["test"]["student"] != whole["test"]["teacher"]  # two branches, told apart


def test_reports_of_counts_match_the_per_sample_formulas_and_mark_empty_parts_nan():
    gen = np.random.default_rng(1)
    targets, preds = gen.integers(0, 5, 200), gen.integers(0, 5, 200)
    targets[targets == 3] = 2  # a class with no sample: left out of the mean class accuracy
    report = classification_report(targets, preds, 5)
    recalls = [np.mean(preds[targets == c] == c) for c in (0, 1, 2, 4)]
    assert report == {"accuracy": float(np.mean(targets == preds)), "mean_class_accuracy": float(np.mean(recalls)),
                      "num_samples": 200}
    assert confusion_matrix(targets, preds, 5).sum() == 200
    empty = classification_report(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), 5)
    assert empty["num_samples"] == 0 and np.isnan(empty["accuracy"]) and np.isnan(empty["mean_class_accuracy"])
    clean = np.array([0, 1, 2, 3])
    none_flipped = diagnostics_of_counts(noisy_part_counts(clean, clean, clean))
    assert none_flipped["num_flipped"] == 0 and none_flipped["clean_part_accuracy"] == 1.0
    assert np.isnan(none_flipped["noisy_predicted_correct"]) and np.isnan(none_flipped["noisy_predicted_noise"])
    halves = noisy_part_counts(clean[:2], clean[:2], clean[:2] + 1) + noisy_part_counts(clean[2:], clean[2:], clean[2:])
    assert diagnostics_of_counts(halves) == pytest.approx(
        {"num_flipped": 2, "clean_part_accuracy": 1.0, "noisy_predicted_correct": 1.0, "noisy_predicted_noise": 0.0})


class _CountingLoader:
    """A loader that counts the passes asked of it and the batches it hands out."""

    def __init__(self, loader):
        self.loader, self.passes, self.batches = loader, 0, 0

    def epoch(self, epoch, start=0):
        self.passes += 1
        for batch in self.loader.epoch(epoch, start):
            self.batches += 1
            yield batch


def test_an_evaluation_passes_the_split_once_for_both_branches():
    """The student and the teacher see each batch of one pass: at scale the split is decoded once per
    evaluation, not once per branch; each branch's numbers are those of a pass of its own."""
    images, labels, idx, table, val_labels = _split()
    learner = _learner()
    counting = _CountingLoader(_loader(images, labels, idx, torch.arange(SAMPLES)))
    report = evaluate(learner, counting, CLASSES)
    diagnostics = noise_diagnostics(learner, counting, table)
    assert counting.passes == 2 and counting.batches == 2 * 7  # one pass each, 53 rows in batches of 8
    for branch, module in learner.branches().items():
        preds, _, pred_idx = predict(module, _loader(images, labels, idx, torch.arange(SAMPLES)).epoch(0))
        assert report[branch] == classification_report(labels.numpy(), preds, CLASSES)
        assert diagnostics[branch]["num_flipped"] == 14
    assert learner.student.training  # eval mode only while predicting
