"""A confusion matrix [C, C] (rows true class, columns predicted) as a CSV table and a PNG picture,
both labelled with the class names."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def write_confusion_csv(cm: np.ndarray, classes: list[str], path: Path) -> Path:
    """First row: ``true \\ predicted`` and the class names; then one row per true class."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *classes])
        for name, row in zip(classes, np.asarray(cm)):
            writer.writerow([name, *(int(v) for v in row)])
    return path


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path, title: str) -> Path:
    """A heat map coloured by each row's share (recall per true class), annotated with the counts."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on training nodes
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    # Colour by row share, not count: with imbalanced classes (RAF-DB's 'happy' is ~40 %) counts would
    # leave every small class pale.
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = max(4.0, 0.6 * len(classes) + 2.0)
    fig, ax = plt.subplots(figsize=(side, side))
    try:
        ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
        ticks = np.arange(len(classes))
        ax.set_xticks(ticks, labels=classes, rotation=45, ha="right")
        ax.set_yticks(ticks, labels=classes)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(f"{title}\n(colour: share of the row's true class)", fontsize=10)
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center",
                        color="white" if share[i, j] > 0.5 else "black", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path
