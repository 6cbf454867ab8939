"""How an experiment's runs trained, epoch by epoch: for each noise cell and series (a method with its
extra-axis values), the mean over the finished runs of what metrics.jsonl records after every epoch.

Final accuracies say which method won; these say why: whether a method learned more slowly early on
(test accuracy of both branches, and what the validation split showed of it), whether its teacher
followed the given labels into the noise (``teacher_agrees``), whether SLS kept more than one class in
its targets (``share_k_gt_1``) and how hard the consistency term pulled (``loss_cons``). The report's
"Per epoch" section prints these tables; the per-epoch plot draws the same series' accuracies.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from soft_dist.experiment.grid import Cell
from soft_dist.experiment.layout import cell_dir, is_finished, read_cell_metrics


class EpochColumn(NamedTuple):
    header: str
    path: tuple[str, ...]  # keys into one metrics.jsonl record
    as_percent: bool


EPOCH_COLUMNS = (
    EpochColumn("test student %", ("test", "student", "accuracy"), True),
    EpochColumn("test teacher %", ("test", "teacher", "accuracy"), True),
    # what a user without clean labels sees: accuracy on the validation split's labels (noisy unless
    # data.val_labels says otherwise)
    EpochColumn("val student %", ("val", "student", "accuracy"), True),
    EpochColumn("val teacher %", ("val", "teacher", "accuracy"), True),
    # the share of training images whose given (noisy) label is the teacher's arg-max
    EpochColumn("teacher = label %", ("train", "teacher_agrees"), True),
    EpochColumn("k > 1 share", ("train", "share_k_gt_1"), False),
    EpochColumn("consistency loss", ("train", "loss_cons"), False),
)


def _value(record: dict, path: tuple[str, ...]) -> float | None:
    for key in path:
        if not isinstance(record, dict) or key not in record:
            return None
        record = record[key]
    return None if record is None else float(record)


def epoch_means(folders: list[Path]) -> pd.DataFrame:
    """One row per epoch any run in ``folders`` reached: ``epoch``, ``runs`` (how many reached it) and, per
    EPOCH_COLUMNS header, the mean over the runs that recorded that value (NaN where none did, e.g. a
    teacher's columns for CE). Empty when no run has records."""
    values: dict[int, dict[str, list[float]]] = {}
    runs: dict[int, int] = {}
    for folder in folders:
        for record in read_cell_metrics(folder):
            epoch = int(record["epoch"])
            runs[epoch] = runs.get(epoch, 0) + 1
            for column in EPOCH_COLUMNS:
                value = _value(record, column.path)
                if value is not None:
                    values.setdefault(epoch, {}).setdefault(column.header, []).append(value)
    rows = []
    for epoch in sorted(runs):
        row = {"epoch": epoch, "runs": runs[epoch]}
        for column in EPOCH_COLUMNS:
            seen = values.get(epoch, {}).get(column.header)
            row[column.header] = float(np.mean(seen)) if seen else np.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=["epoch", "runs", *(c.header for c in EPOCH_COLUMNS)])


def series_label(cell: Cell) -> str:
    """'soft' or 'soft, epsilon=0.5': the method and the cell's extra-axis values."""
    return ", ".join([cell.method, *(f"{k.split('.')[-1]}={v}" for k, v in cell.extra)])


def finished_series(run_dir: Path, cells: list[Cell]) -> dict[tuple[str, float], dict[str, list[Path]]]:
    """(noise kind, rate) -> series label -> the folders of its finished cells, in grid order."""
    out: dict[tuple[str, float], dict[str, list[Path]]] = {}
    for cell in cells:
        folder = cell_dir(run_dir, cell)
        if is_finished(folder):
            out.setdefault((cell.noise_kind, cell.noise_rate), {}).setdefault(series_label(cell), []).append(folder)
    return out
