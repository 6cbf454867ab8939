"""The files `soft-dist predict` writes: one row per input photo, as CSV or JSON lines.

CSV columns: path, status, face_found, box_x0, box_y0, box_x1, box_y1, face_prob, predicted,
prob_<class> for every class in the model's order, error. Empty cells where a value does not apply
(no face, not classified). JSON lines carry the same, with ``box`` a list and ``probabilities`` a
{class: p} object (null when not classified).

Written to FILE.partial and renamed at the end, so an interrupted run never leaves a file that looks
complete.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np

from soft_dist.config import ConfigError
from soft_dist.safe_text import csv_row

FORMATS = {".csv": "csv", ".jsonl": "jsonl"}
BOX_COLUMNS = ("box_x0", "box_y0", "box_x1", "box_y1")


def output_format(path: Path) -> str:
    """"csv" or "jsonl" from the file's suffix; ConfigError naming the file otherwise."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError("--out", f"{path}: the file must end in .csv or .jsonl")
    return fmt


def _number(x: float, digits: int) -> float | None:
    return None if math.isnan(x) else round(float(x), digits)


def rows(batch: dict[str, np.ndarray], classes: tuple[str, ...]) -> list[dict]:
    """One JSON-ready dict per row of a result batch (serve.classifier columns)."""
    out = []
    for i in range(len(batch["path"])):
        found = int(batch["face_found"][i])
        classified = batch["predicted"][i] >= 0
        box = batch["box"][i]
        out.append({
            "path": str(batch["path"][i]),
            "status": str(batch["status"][i]),
            "face_found": None if found < 0 else bool(found),
            "box": None if np.isnan(box).any() else [round(float(v), 2) for v in box],
            "face_prob": _number(batch["face_prob"][i], 6),
            "predicted": classes[int(batch["predicted"][i])] if classified else None,
            "probabilities": ({c: round(float(p), 6) for c, p in zip(classes, batch["probs"][i])}
                              if classified else None),
            "error": str(batch["error"][i]) or None,
        })
    return out


def _csv_row(row: dict, classes: tuple[str, ...]) -> list:
    blank = lambda v: "" if v is None else v  # noqa: E731
    box = row["box"] or [None] * 4
    probs = row["probabilities"] or {}
    return [row["path"], row["status"], blank(row["face_found"]), *map(blank, box), blank(row["face_prob"]),
            blank(row["predicted"]), *(blank(probs.get(c)) for c in classes), blank(row["error"])]


class PredictionWriter:
    """Context manager: ``write(rows)`` as they come; the file appears under its name on a clean exit."""

    def __init__(self, path: Path, classes: tuple[str, ...]):
        self.path, self.classes, self.format = Path(path), classes, output_format(Path(path))
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.counts: dict[str, int] = {}

    def __enter__(self) -> "PredictionWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.partial, "w", newline="")
        if self.format == "csv":
            self.csv = csv.writer(self.file)
            self.csv.writerow(csv_row(["path", "status", "face_found", *BOX_COLUMNS, "face_prob", "predicted",
                                       *(f"prob_{c}" for c in self.classes), "error"]))
        return self

    def write(self, batch_rows: list[dict]) -> None:
        for row in batch_rows:
            self.counts[row["status"]] = self.counts.get(row["status"], 0) + 1
            if self.format == "csv":
                self.csv.writerow(csv_row(_csv_row(row, self.classes)))
            else:
                self.file.write(json.dumps(row) + "\n")

    def __exit__(self, exc_type, exc, tb) -> None:
        self.file.close()
        if exc_type is None:
            os.replace(self.partial, self.path)
