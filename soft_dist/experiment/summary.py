"""Tables of a grid: cells.csv (one row per finished cell), summary.csv / summary.json (mean and std
over seeds per method, noise kind, noise rate and extra-axis values) and failed.csv.

Test numbers are the branch chosen on the VALIDATION split (results.json ``test.chosen``); runs without
a test split fall back to validation and say so in the ``split`` column. std is the sample standard
deviation over seeds (ddof = 1); it is empty when a group has one seed.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pandas as pd

from soft_dist.experiment.grid import Cell, Grid

SUMMARY_COLUMNS = ("method", "noise_kind", "noise_rate")
METRICS = ("accuracy", "mean_class_accuracy")


def cell_record(cell: Cell, results: dict) -> dict:
    """One cells.csv row: the cell's axes plus its numbers from results.json."""
    split = "test" if results.get("test") else "val"
    chosen = results[split]["chosen"]
    return {
        **cell.row(),
        "split": split,
        "accuracy": chosen["accuracy"],
        "mean_class_accuracy": chosen["mean_class_accuracy"],
        "chosen_branch": results["chosen_branch"],
        "student_accuracy": results[split]["student"]["accuracy"],
        "teacher_accuracy": results[split].get("teacher", {}).get("accuracy", math.nan),
        "val_accuracy": results["val"]["chosen"]["accuracy"],
        "flipped": results["noise"]["flipped"],
        "epochs": results["epochs"],
        "wall_time_s": results["wall_time_s"],
        "images_per_s_total": results["throughput"]["images_per_s_total"],
    }


def collect(cells: list[Cell], run_dir: Path) -> pd.DataFrame:
    """cells.csv's table from the results.json of every finished cell of this grid."""
    from soft_dist.experiment.runner import RESULTS, cell_dir

    rows = []
    for cell in cells:
        path = cell_dir(run_dir, cell) / RESULTS
        if path.is_file():
            rows.append(cell_record(cell, json.loads(path.read_text())))
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame, extra_keys: list[str]) -> pd.DataFrame:
    """Mean and std over seeds of accuracy and mean class accuracy, one row per group."""
    keys = [*SUMMARY_COLUMNS, *extra_keys]
    if table.empty:
        return pd.DataFrame(columns=[*keys, "accuracy_mean", "accuracy_std", "mean_class_accuracy_mean",
                                     "mean_class_accuracy_std", "seeds"])
    grouped = table.groupby(keys, sort=False, dropna=False)
    out = grouped[list(METRICS)].agg(["mean", "std"])
    out.columns = [f"{metric}_{stat}" for metric, stat in out.columns]
    out["seeds"] = grouped["seed"].count()
    return out.reset_index()


def write_summary(grid: Grid, cells: list[Cell], run_dir: Path, failed: list[dict]) -> dict[str, Path]:
    """Write cells.csv, summary.csv, summary.json and failed.csv into ``run_dir``; returns their paths."""
    table = collect(cells, run_dir)
    summary = summarise(table, list(grid.extra))
    paths = {name: run_dir / name for name in ("cells.csv", "summary.csv", "summary.json", "failed.csv")}
    table.to_csv(paths["cells.csv"], index=False)
    summary.to_csv(paths["summary.csv"], index=False, float_format="%.4f")
    with open(paths["failed.csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["cell", "error"])
        writer.writeheader()
        writer.writerows(failed)
    paths["summary.json"].write_text(json.dumps({
        "grid": str(grid.path),
        "base": str(grid.base),
        "cells_total": len(cells),
        "cells_finished": int(len(table)),
        "rows": json.loads(summary.to_json(orient="records")),  # NaN std -> null
        "failed": failed,
    }, indent=2))
    return paths


def format_table(summary: pd.DataFrame) -> str:
    """A Markdown table of the summary: accuracy and mean class accuracy as mean ± std (percent)."""

    def pm(mean: float, std: float) -> str:
        return f"{100 * mean:.2f}" + ("" if pd.isna(std) else f" ± {100 * std:.2f}")

    keys = [c for c in summary.columns if not c.startswith(METRICS) and c != "seeds"]
    lines = ["| " + " | ".join([*keys, "test accuracy %", "mean class accuracy %", "seeds"]) + " |",
             "|" + "---|" * (len(keys) + 3)]
    for _, row in summary.iterrows():
        cells = [str(row[k]) for k in keys]
        cells += [pm(row["accuracy_mean"], row["accuracy_std"]),
                  pm(row["mean_class_accuracy_mean"], row["mean_class_accuracy_std"]), str(row["seeds"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
