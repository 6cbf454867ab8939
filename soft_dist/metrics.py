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


def _share(count: int, total: int) -> float:
    return float(count / total) if total else float("nan")


def mean_class_accuracy_of(cm: np.ndarray) -> float:
    """Mean over the classes PRESENT (rows with samples) of a confusion matrix [C, C] of their recall
    (AffectNet's metric); nan when no class is present."""
    cm = np.asarray(cm)
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        return float("nan")
    return float((np.diag(cm)[present] / support[present]).mean())


def report_of_confusion(cm: np.ndarray) -> dict:
    """{'accuracy', 'mean_class_accuracy', 'num_samples'} of a confusion matrix [C, C] (rows true).

    Counts are all it needs, so ranks can sum their matrices and report the whole split exactly."""
    cm = np.asarray(cm)
    total = int(cm.sum())
    return {"accuracy": _share(int(np.trace(cm)), total), "mean_class_accuracy": mean_class_accuracy_of(cm),
            "num_samples": total}


def classification_report(targets: np.ndarray, preds: np.ndarray, num_classes: int) -> dict:
    """{'accuracy', 'mean_class_accuracy', 'num_samples'}: both metrics are always reported."""
    return report_of_confusion(confusion_matrix(targets, preds, num_classes))


def noisy_part_counts(preds: np.ndarray, clean: np.ndarray, noisy: np.ndarray) -> np.ndarray:
    """[5] int64 counts over training samples, in this order: the flipped ones (noisy != clean), those of
    them predicted as the clean label, those predicted as the injected one, the others (kept), and those
    of them predicted as their (clean) label. Sums of the counts of parts are the counts of the whole."""
    preds, clean, noisy = (np.asarray(a) for a in (preds, clean, noisy))
    flipped = clean != noisy
    return np.array([flipped.sum(), (preds[flipped] == clean[flipped]).sum(), (preds[flipped] == noisy[flipped]).sum(),
                     (~flipped).sum(), (preds[~flipped] == clean[~flipped]).sum()], dtype=np.int64)


def diagnostics_of_counts(counts: np.ndarray) -> dict:
    """Table 2 diagnostics of :func:`noisy_part_counts`' [5] counts.

    On the flipped part: the share predicted as the clean label ("predicted correct") and the share
    predicted as the injected label ("predicted noise"); on the rest, plain accuracy (nan for an empty part)."""
    flipped, to_clean, to_noisy, kept, kept_correct = (int(c) for c in counts)
    return {"num_flipped": flipped, "clean_part_accuracy": _share(kept_correct, kept),
            "noisy_predicted_correct": _share(to_clean, flipped), "noisy_predicted_noise": _share(to_noisy, flipped)}


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
