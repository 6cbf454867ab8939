"""A confusion matrix [C, C] (rows true class, columns predicted) as a CSV table and a PNG picture,
both labelled with the class names."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from soft_dist.headless_pyplot import pyplot
from soft_dist.safe_text import csv_row


def write_confusion_csv(cm: np.ndarray, classes: list[str], path: Path) -> Path:
    """First row: ``true \\ predicted`` and the class names; then one row per true class."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(csv_row(["true \\ predicted", *classes]))
        for name, row in zip(classes, np.asarray(cm)):
            writer.writerow(csv_row([name, *(int(v) for v in row)]))
    return path


SHORT_LABEL = 3  # class names up to this long (digits, "sad") stay upright under the x axis


def plot_class_matrix(colour: np.ndarray, text: list[list[str]], classes, path: Path, title: str, *,
                      xlabel: str, ylabel: str, cmap: str, dpi: int = 120, colour_label: str | None = None) -> Path:
    """A [C, C] heat map with class names on both axes: ``colour`` [C, C] in [0, 1] sets each cell's
    shade, ``text`` [C][C] its label ("" for none), ``colour_label`` names a colour bar (None: no bar).
    Written to ``path`` (PNG)."""
    plt = pyplot()
    colour = np.asarray(colour, dtype=float)
    side = max(4.0, 0.6 * len(classes) + 2.0)
    fig, ax = plt.subplots(figsize=(side + (1.0 if colour_label else 0.0), side))
    try:
        image = ax.imshow(colour, cmap=cmap, vmin=0.0, vmax=1.0)
        if colour_label:
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=colour_label)
        ticks = np.arange(len(classes))
        upright = max((len(str(c)) for c in classes), default=0) <= SHORT_LABEL
        ax.set_xticks(ticks, labels=list(classes), rotation=0 if upright else 45, ha="center" if upright else "right")
        ax.set_yticks(ticks, labels=list(classes))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        for i in range(len(classes)):
            for j in range(len(classes)):
                if text[i][j]:
                    ax.text(j, i, text[i][j], ha="center", va="center", fontsize=8,
                            color="white" if colour[i, j] > 0.5 else "black")
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
    return path


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path, title: str) -> Path:
    """A heat map coloured by each row's share (recall per true class), annotated with the counts."""
    cm = np.asarray(cm)
    # Colour by row share, not count: with imbalanced classes (RAF-DB's 'happy' is ~40 %) counts would
    # leave every small class pale.
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    counts = [[str(int(v)) for v in row] for row in cm]
    return plot_class_matrix(share, counts, classes, path, title, xlabel="predicted class", ylabel="true class",
                             cmap="Blues", colour_label="share of the row's images")
