"""Label-audit scores and their measurement: numpy only (no torch, Ray, DALI or IO).

Every score says how likely a training sample's GIVEN (possibly noisy) label is wrong: higher = more
likely mislabeled. Inputs, for N training samples and C classes:

    probs  [N, C] float   softmax probabilities of a network on the un-augmented evaluation view
    given  [N]    int     the label the run trained with (the noise table's ``noisy`` column)
    alpha  [N]    float   the student's uncertainty-head weight alpha = sigmoid(Linear(f(x))) (paper Eq. 7)

The estimate of the noise (rate per class, joint and transition matrices) is confident-learning style
counting (Northcutt et al., JAIR 2021), written here from the paper's definitions: per-class thresholds
t_j = mean of p_j over the samples labelled j; a sample counts towards (given i, true j) when j is the
most probable of the classes whose probability reaches its threshold; rows are then rescaled to the
given-label counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


# ----------------------------------------------------------------------------- building blocks


def _check(probs: np.ndarray, given: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    given = np.asarray(given, dtype=np.int64)
    if probs.ndim != 2 or given.shape != (probs.shape[0],):
        raise ValueError(f"probs must be [N, C] and given [N]; got {probs.shape} and {given.shape}")
    if len(given) and (given.min() < 0 or given.max() >= probs.shape[1]):
        raise ValueError(f"given labels must be in [0, {probs.shape[1]})")
    return probs, given


def per_class_thresholds(probs: np.ndarray, given: np.ndarray) -> np.ndarray:
    """t [C]: t_j = mean of p_j over the samples whose given label is j (1.0 for a class nobody has,
    so that it never passes its threshold)."""
    probs, given = _check(probs, given)
    num_classes = probs.shape[1]
    counts = np.bincount(given, minlength=num_classes).astype(np.float64)
    sums = np.zeros(num_classes)
    np.add.at(sums, given, probs[np.arange(len(given)), given])
    return np.where(counts > 0, sums / np.maximum(counts, 1), 1.0)


def confident_labels(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """[N] int: for each sample, the most probable class among those with p_k >= t_k; -1 when none passes."""
    probs = np.asarray(probs, dtype=np.float64)
    above = probs >= np.asarray(thresholds)[None, :]
    masked = np.where(above, probs, -np.inf)
    best = masked.argmax(axis=1)
    return np.where(above.any(axis=1), best, -1)


# ----------------------------------------------------------------------------- scores [N]


def score_probability(probs: np.ndarray, given: np.ndarray) -> np.ndarray:
    """1 - p(given) [N]: the same ranking as the per-sample cross-entropy loss -log p(given)."""
    probs, given = _check(probs, given)
    return 1.0 - probs[np.arange(len(given)), given]


def score_margin(probs: np.ndarray, given: np.ndarray) -> np.ndarray:
    """max_{k != given} p_k - p_given [N], in [-1, 1]: positive when another class beats the given one."""
    probs, given = _check(probs, given)
    rows = np.arange(len(given))
    others = probs.copy()
    others[rows, given] = -np.inf
    return others.max(axis=1) - probs[rows, given]


def score_confident(probs: np.ndarray, given: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
    """The margin measured against per-class thresholds [N]: max_{k != given}(p_k - t_k) - (p_given - t_given).

    Positive exactly when some other class passes its own threshold by more than the given class passes
    its own: confident learning's off-diagonal test, made continuous so that it ranks every sample.
    Thresholds make a class the network is shy of (low mean probability) count as much as a confident one."""
    probs, given = _check(probs, given)
    t = per_class_thresholds(probs, given) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    rows = np.arange(len(given))
    excess = probs - t[None, :]
    own = excess[rows, given].copy()
    excess[rows, given] = -np.inf
    return excess.max(axis=1) - own


def score_weight(alpha: np.ndarray) -> np.ndarray:
    """1 - alpha [N]: the uncertainty head gives a low weight to samples it finds hard (paper Eq. 8)."""
    return 1.0 - np.asarray(alpha, dtype=np.float64).reshape(-1)


# ----------------------------------------------------------------------------- named scores


@dataclass
class NetworkOutputs:
    """What one pass over the training split gives, rows in ascending ``idx`` order.

    idx [N] int64; given [N] int64; teacher [N, C] and student [N, C] softmax probabilities (teacher None
    for a run without one); alpha [N] the student's head weight (None when the run has no head)."""

    idx: np.ndarray
    given: np.ndarray
    student: np.ndarray
    teacher: np.ndarray | None = None
    alpha: np.ndarray | None = None

    def probs(self, source: str) -> np.ndarray | None:
        """[N, C] probabilities of ``source``: teacher, student, or mean (of the two; None without a teacher)."""
        if source == "student":
            return self.student
        if source == "teacher":
            return self.teacher
        if source == "mean":
            return None if self.teacher is None else (self.teacher + self.student) / 2.0
        raise ValueError(f"unknown probability source {source!r}")


SOURCES = ("teacher", "mean", "student")
_KINDS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "prob": score_probability, "margin": score_margin, "confident": score_confident}
SCORE_NAMES = tuple(f"{s}_{k}" for s in SOURCES for k in _KINDS) + ("head_weight",)
# Chosen by the measurement in docs/audit.md (`soft-dist bench audit`, 3 noise settings x 2 seeds on digits):
# the best mean AUROC (0.9903) and precision@k (0.937), ahead of mean_margin (0.9891) and teacher_prob
# (0.9869); averaging teacher and student helps most under asymmetric noise.
DEFAULT_SCORE = "mean_confident"


def score_source(name: str) -> str | None:
    """The probability source behind a score name (teacher / mean / student), None for head_weight."""
    return None if name == "head_weight" else name.rsplit("_", 1)[0]


def compute_score(name: str, out: NetworkOutputs) -> np.ndarray | None:
    """Score ``name`` (one of SCORE_NAMES) [N], or None when the run lacks what it needs (no teacher, no head)."""
    if name == "head_weight":
        return None if out.alpha is None else score_weight(out.alpha)
    if name not in SCORE_NAMES:
        raise ValueError(f"unknown score {name!r}; choose one of {list(SCORE_NAMES)}")
    probs = out.probs(score_source(name))
    return None if probs is None else _KINDS[name.rsplit("_", 1)[1]](probs, out.given)


def available_scores(out: NetworkOutputs) -> dict[str, np.ndarray]:
    """Every score the run's networks allow: name -> [N]."""
    scores = {name: compute_score(name, out) for name in SCORE_NAMES}
    return {k: v for k, v in scores.items() if v is not None}


# ----------------------------------------------------------------------------- noise estimate


def estimate_noise(probs: np.ndarray, given: np.ndarray) -> dict:
    """Confident-joint estimate of the label noise from probabilities [N, C] and given labels [N].

    Returns ``joint`` [C, C] (rows given class i, columns estimated true class j, rows rescaled to sum to
    the count of given label i, so the whole sums to N), ``transition`` [C, C] P(given = i | true = j) as
    rows = true j, columns = given i (rows sum to 1; a true class with no mass gets the identity row),
    ``rate`` (overall share of wrong given labels), ``rate_per_class`` [C] (share of the samples GIVEN
    class i whose true class is another) and ``num_noisy`` (round(rate * N))."""
    probs, given = _check(probs, given)
    n, num_classes = probs.shape
    thresholds = per_class_thresholds(probs, given)
    true = confident_labels(probs, thresholds)
    counts = np.zeros((num_classes, num_classes))
    keep = true >= 0
    np.add.at(counts, (given[keep], true[keep]), 1.0)
    given_counts = np.bincount(given, minlength=num_classes).astype(np.float64)
    row = counts.sum(axis=1)
    # Calibrate: samples that passed no threshold are spread like the ones of their given class that did.
    joint = np.where(row[:, None] > 0, counts / np.maximum(row, 1)[:, None] * given_counts[:, None], 0.0)
    for i in np.flatnonzero(row == 0):
        joint[i, i] = given_counts[i]  # nothing to go by: count them as correctly labelled
    diag = np.diag(joint)
    rate_per_class = np.where(given_counts > 0, 1.0 - diag / np.maximum(given_counts, 1), 0.0)
    rate = float(1.0 - diag.sum() / max(n, 1))
    col = joint.sum(axis=0)
    transition = np.where(col[:, None] > 0, joint.T / np.maximum(col, 1e-12)[:, None], np.eye(num_classes))
    return {"joint": joint, "transition": transition, "rate": rate, "rate_per_class": rate_per_class,
            "num_noisy": int(np.floor(rate * n + 0.5)), "thresholds": thresholds}


def noise_from_truth(given: np.ndarray, clean: np.ndarray, num_classes: int) -> dict:
    """The true counterpart of :func:`estimate_noise` from the clean labels [N]: joint [C, C] counts (rows
    given, columns clean), rate, rate_per_class [C] (by given class)."""
    given, clean = np.asarray(given, np.int64), np.asarray(clean, np.int64)
    joint = np.zeros((num_classes, num_classes))
    np.add.at(joint, (given, clean), 1.0)
    given_counts = joint.sum(axis=1)
    rate_per_class = np.where(given_counts > 0, 1.0 - np.diag(joint) / np.maximum(given_counts, 1), 0.0)
    return {"joint": joint, "rate": float((given != clean).mean()) if len(given) else 0.0,
            "rate_per_class": rate_per_class}


# ----------------------------------------------------------------------------- ranking and metrics


def ranking(scores: np.ndarray) -> np.ndarray:
    """Positions [N] by descending score; ties keep ascending position (a stable, reproducible order)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks [N] of ``values``, ties sharing their average rank (as the Mann-Whitney U needs)."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0  # mean of the 1-based ranks s+1 .. e
    return ranks


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` [N] separating ``positive`` [N] bool (mislabeled) from the
    rest; ties count one half. NaN when either group is empty."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def precision_at(scores: np.ndarray, positive: np.ndarray, k: int) -> float:
    """Share of mislabeled samples among the ``k`` highest scores."""
    if k <= 0:
        return float("nan")
    top = ranking(scores)[:k]
    return float(np.asarray(positive, dtype=bool)[top].mean())


def recall_at(scores: np.ndarray, positive: np.ndarray, k: int) -> float:
    """Share of all mislabeled samples found among the ``k`` highest scores."""
    positive = np.asarray(positive, dtype=bool)
    if positive.sum() == 0:
        return float("nan")
    top = ranking(scores)[:k]
    return float(positive[top].sum() / positive.sum())


def measure(scores: np.ndarray, positive: np.ndarray) -> dict:
    """AUROC, precision at k and recall at 2k, k = the number of mislabeled samples (the issue's metrics)."""
    k = int(np.asarray(positive, dtype=bool).sum())
    return {"auroc": auroc(scores, positive), "precision_at_k": precision_at(scores, positive, k),
            "recall_at_2k": recall_at(scores, positive, 2 * k), "k": k}
