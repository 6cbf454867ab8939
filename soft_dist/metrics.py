"""Classification metrics: accuracy, mean class accuracy, confusion matrix and the paper's Table 2
diagnostics on noisy training data. Inputs are integer arrays [N]; outputs are plain floats."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax of logits [N, C] -> probabilities [N, C] float64 (shifted by the row max for stability)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def confusion_matrix(targets: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """[C, C] int64 counts, rows = true class, columns = predicted class."""
    targets = np.asarray(targets, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    return np.bincount(targets * num_classes + preds, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def accuracy(targets: np.ndarray, preds: np.ndarray) -> float:
    targets = np.asarray(targets)
    return float((targets == np.asarray(preds)).mean()) if len(targets) else float("nan")


def mean_class_accuracy(targets: np.ndarray, preds: np.ndarray, num_classes: int) -> float:
    """Mean over the classes PRESENT in ``targets`` of their recall (AffectNet's metric)."""
    cm = confusion_matrix(targets, preds, num_classes)
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        return float("nan")
    return float((np.diag(cm)[present] / support[present]).mean())


def classification_report(targets: np.ndarray, preds: np.ndarray, num_classes: int) -> dict:
    """{'accuracy', 'mean_class_accuracy', 'num_samples'}: both metrics are always reported."""
    return {
        "accuracy": accuracy(targets, preds),
        "mean_class_accuracy": mean_class_accuracy(targets, preds, num_classes),
        "num_samples": int(len(targets)),
    }


def noisy_part_diagnostics(preds: np.ndarray, clean: np.ndarray, noisy: np.ndarray) -> dict:
    """Table 2 diagnostics on training samples.

    On the flipped part (noisy != clean): the share predicted as the clean label ("predicted correct")
    and the share predicted as the injected label ("predicted noise"); on the rest, plain accuracy."""
    preds, clean, noisy = (np.asarray(a) for a in (preds, clean, noisy))
    flipped = clean != noisy
    out = {
        "num_flipped": int(flipped.sum()),
        "clean_part_accuracy": float((preds[~flipped] == clean[~flipped]).mean()) if (~flipped).any() else float("nan"),
    }
    if flipped.any():
        out["noisy_predicted_correct"] = float((preds[flipped] == clean[flipped]).mean())
        out["noisy_predicted_noise"] = float((preds[flipped] == noisy[flipped]).mean())
    else:
        out["noisy_predicted_correct"] = out["noisy_predicted_noise"] = float("nan")
    return out


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall and F1 [C] of a confusion matrix [C, C] (rows true, columns predicted), and
    the support [C]. A class never predicted has precision 0, one never present recall 0 (and F1 0):
    the usual convention, so that macro averages stay defined."""
    cm = np.asarray(cm, dtype=np.float64)
    hits, predicted, support = np.diag(cm), cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(hits), where=both > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)}
