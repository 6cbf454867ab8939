"""Tables of a grid: cells.csv (one row per finished cell), summary.csv / summary.json (per group of
method, noise kind, noise rate and extra-axis values: n runs, mean, std and a 95% t-interval under every
evaluation protocol), paired.csv (method against method on the same runs) and failed.csv.

Protocols (soft_dist.train.protocols): ``val_selected`` (epoch and branch chosen on validation: model.pt
without a teacher), ``last`` (model.pt with one), ``mean_last_5`` and ``best_on_test`` (chosen on TEST:
optimistic, only for comparison with published tables); the tables add ``model_pt``: what each run's
model.pt holds (results.json's ``model``: the protocol its ``train.model_epoch`` named), i.e. what a user
of the method gets, whichever protocol that is per method. Every cell's protocols come from its results.json, or, for cells
trained before results.json had them, from its metrics.jsonl with the same function.

The older columns are kept as they were for existing readers: cells.csv ``accuracy`` /
``mean_class_accuracy`` and summary.csv ``accuracy_mean`` ... are results.json's ``test.chosen`` (the
last epoch, branch chosen on validation at that epoch: the same numbers as protocol ``last``; runs
without a test split fall back to validation and say so in ``split``), and ``seeds`` counts the runs of
a group (= ``n``).

Statistics: std is the sample standard deviation (ddof = 1); the 95% interval is mean ± t(0.975, n - 1)
* std / sqrt(n) (Student's t, scipy.stats.t); both are empty with one run. Runs of different folds of
one K-fold split share training images, so they are not independent: the interval over folds is
narrower than the truth (see docs/experiments.md).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from soft_dist.experiment.grid import Cell, Grid
from soft_dist.experiment.layout import SUMMARY_JSON, cell_dir, read_cell_metrics
from soft_dist.run_files import METRICS_FILE, RESULTS_FILE
from soft_dist.train.protocols import PROTOCOLS, ProtocolError, compute_protocols, protocol_columns

SUMMARY_COLUMNS = ("method", "noise_kind", "noise_rate")
METRICS = ("accuracy", "mean_class_accuracy")
UNIT_COLUMNS = ("seed", "fold", "split_seed")  # which of them a grid has: Grid.unit_keys
CONFIDENCE = 0.95
TIE_TOLERANCE = 1e-9  # accuracies are counts / N: equal counts give equal floats, up to rounding
MODEL_PT = "model_pt"
# The protocols the tables report: model.pt's own first (one column set per protocol in cells.csv).
REPORTED_PROTOCOLS = (MODEL_PT, *PROTOCOLS)
PROTOCOL_DEFINITIONS = {
    MODEL_PT: "what each run's model.pt holds, the protocol its train.model_epoch named (default auto: `last` "
              "with an EMA teacher, `val_selected` without one): what a user of the method gets",
    "val_selected": "epoch and branch with the best validation score over the run (model.pt of a method "
                    "without a teacher, and of any with train.model_epoch=best)",
    "last": "last epoch, branch chosen on validation at that epoch (model.pt of a method with an EMA teacher "
            "under the default train.model_epoch=auto)",
    "mean_last_5": "mean over the last 5 epochs (fewer if the run is shorter) of the branch chosen on "
                   "validation at the last epoch",
    "best_on_test": "best test score over epochs and branches: chosen on TEST, optimistic; only for comparison "
                    "with published tables",
}


def cell_protocols(folder: Path, results: dict) -> tuple[dict | None, str]:
    """(protocols, where they came from) of a finished cell: results.json's own, else computed from
    metrics.jsonl (cells trained before results.json had them); (None, "") when neither works."""
    if results.get("protocols"):
        return results["protocols"], RESULTS_FILE
    records = read_cell_metrics(folder)
    if not records:
        return None, ""
    try:
        return compute_protocols(records, results.get("select_metric", "accuracy")), METRICS_FILE
    except ProtocolError:
        return None, ""


def cell_record(cell: Cell, results: dict, folder: Path | None = None) -> dict:
    """One cells.csv row: the cell's axes, its numbers from results.json and every protocol's columns
    (``<protocol>_accuracy``, ``..._mean_class_accuracy``, ``..._branch``, ``..._epoch`` ...)."""
    split = "test" if results.get("test") else "val"
    chosen = results[split]["chosen"]
    protocols, source = cell_protocols(folder, results) if folder is not None else (results.get("protocols"),
                                                                                   RESULTS_FILE)
    return {
        **cell.row(),
        "split": split,
        "accuracy": chosen["accuracy"],
        "mean_class_accuracy": chosen["mean_class_accuracy"],
        # named chosen_branch in results.json before it was named for its protocol
        "last_epoch_branch": results.get("last_epoch_branch", results.get("chosen_branch")),
        "student_accuracy": results[split]["student"]["accuracy"],
        "teacher_accuracy": results[split].get("teacher", {}).get("accuracy", math.nan),
        "val_accuracy": results["val"]["chosen"]["accuracy"],
        "flipped": results["noise"]["flipped"],
        "epochs": results["epochs"],
        "wall_time_s": results["wall_time_s"],
        "images_per_s_total": results["throughput"]["images_per_s_total"],
        "select_metric": results.get("select_metric", "accuracy"),
        "test_samples": results["test"]["chosen"]["num_samples"] if results.get("test") else None,
        "protocols_from": source,
        **model_pt_columns(results),
        **protocol_columns(protocols),
        **sls_k_columns(read_cell_metrics(folder) if folder is not None else []),
    }


def model_pt_columns(results: dict) -> dict:
    """``model_pt_*`` columns: model.pt's test numbers, the protocol it followed, its epoch and branch (all
    None for runs written before results.json described model.pt, or without a test split)."""
    model = results.get("model") or {}
    test = model.get("test") or {}
    return {f"{MODEL_PT}_accuracy": test.get("accuracy"), f"{MODEL_PT}_mean_class_accuracy": test.get("mean_class_accuracy"),
            f"{MODEL_PT}_protocol": model.get("protocol"), f"{MODEL_PT}_epoch": model.get("epoch"),
            f"{MODEL_PT}_branch": model.get("branch")}


def sls_k_columns(records: list[dict]) -> dict:
    """Share of training samples whose SLS target has more than one high-confidence class (k > 1), in the
    first and the last epoch that used SLS (paper 4.4 reports 65% at the start of SLS for tau = 1/8 on
    RAF-DB); None for methods without SLS."""
    shares = [r["train"]["share_k_gt_1"] for r in sorted(records, key=lambda r: r["epoch"])
              if "share_k_gt_1" in r.get("train", {})]
    return {"share_k_gt_1_first": shares[0] if shares else None, "share_k_gt_1_last": shares[-1] if shares else None}


def collect(cells: list[Cell], run_dir: Path) -> pd.DataFrame:
    """cells.csv's table from the results.json of every finished cell of this grid."""
    rows = []
    for cell in cells:
        folder = cell_dir(run_dir, cell)
        path = folder / RESULTS_FILE
        if path.is_file():
            rows.append(cell_record(cell, json.loads(path.read_text()), folder))
    return pd.DataFrame(rows)


def t_interval(values, bounds: tuple[float, float] = (-math.inf, math.inf)) -> dict:
    """{n, mean, std, ci_low, ci_high} of the finite values: std with ddof = 1 and the two-sided 95%
    Student t interval, clipped to ``bounds`` (the values' possible range: an accuracy interval that
    reached past 100% would claim the impossible); std and the interval are NaN with fewer than 2
    values, everything with none."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = len(x)
    out = {"n": n, "mean": float(x.mean()) if n else math.nan, "std": math.nan, "ci_low": math.nan,
           "ci_high": math.nan}
    if n >= 2:
        std = float(x.std(ddof=1))
        half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * std / math.sqrt(n)
        out.update(std=std, ci_low=max(out["mean"] - half, bounds[0]), ci_high=min(out["mean"] + half, bounds[1]))
    return out


def protocol_stat_columns() -> list[str]:
    return [f"{p}_{m}_{s}" for p in REPORTED_PROTOCOLS for m in METRICS for s in ("mean", "std", "ci_low", "ci_high")]


def _legacy_columns() -> list[str]:
    return ["accuracy_mean", "accuracy_std", "mean_class_accuracy_mean", "mean_class_accuracy_std", "seeds"]


def _ordered_groups(table: pd.DataFrame, keys: list[str], methods: list[str] | None):
    """groupby in the grid's method order (then first appearance), NaN-safe."""
    grouped = list(table.groupby(keys, sort=False, dropna=False))
    if methods:
        rank = {m: i for i, m in enumerate(methods)}
        grouped.sort(key=lambda item: rank.get(item[1]["method"].iloc[0], len(rank)))
    return grouped


def summarise(table: pd.DataFrame, extra_keys: list[str], methods: list[str] | None = None) -> pd.DataFrame:
    """One row per (method, noise kind, noise rate, extra values): the legacy mean/std columns, ``n``
    and, per protocol and metric, ``<protocol>_<metric>_{mean,std,ci_low,ci_high}`` over the group's runs
    (seeds x folds x split seeds). Rows follow the grid's method order."""
    keys = [*SUMMARY_COLUMNS, *extra_keys]
    columns = [*keys, *_legacy_columns(), "n", *protocol_stat_columns()]
    if table.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for _, part in _ordered_groups(table, keys, methods):
        row = {k: part[k].iloc[0] for k in keys}
        for metric in METRICS:
            row[f"{metric}_mean"] = part[metric].mean()
            row[f"{metric}_std"] = part[metric].std(ddof=1) if len(part) > 1 else math.nan
        row["seeds"] = row["n"] = len(part)
        for protocol, metric in itertools.product(REPORTED_PROTOCOLS, METRICS):
            column = f"{protocol}_{metric}"
            stats = t_interval(part[column].tolist() if column in part else [], bounds=(0.0, 1.0))
            for stat in ("mean", "std", "ci_low", "ci_high"):
                row[f"{column}_{stat}"] = stats[stat]
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def paired_differences(table: pd.DataFrame, extra_keys: list[str], unit_keys: list[str],
                       methods: list[str] | None = None) -> pd.DataFrame:
    """One row per pair of runs of two methods (``baseline`` earlier in the grid, ``method`` later) on the
    same unit: same noise kind, rate and extra values, and equal ``unit_keys`` (seed, fold, split seed).
    Per protocol: ``diff`` = test accuracy of the method minus the baseline's (a fraction), with the
    unit's keys, so that differences can be pooled over settings or split by seed."""
    keys = ["noise_kind", "noise_rate", *extra_keys]
    columns = ["method", "baseline", *keys, "protocol", *unit_keys, "diff"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    order = list(dict.fromkeys([*(methods or []), *table["method"]]))
    present = [m for m in order if m in set(table["method"])]
    parts = []
    for group, part in table.groupby(keys, sort=False, dropna=False):
        group = group if isinstance(group, tuple) else (group,)
        by_method = {m: part[part["method"] == m] for m in present}
        for baseline, method in itertools.combinations(present, 2):
            both = by_method[method].merge(by_method[baseline], on=unit_keys, suffixes=("", "_base"))
            if both.empty:
                continue
            for protocol in REPORTED_PROTOCOLS:
                if f"{protocol}_accuracy" not in both:  # a table without it (e.g. model_pt of older runs)
                    continue
                a = pd.to_numeric(both[f"{protocol}_accuracy"], errors="coerce")
                b = pd.to_numeric(both[f"{protocol}_accuracy_base"], errors="coerce")
                kept = both[a.notna() & b.notna()]
                rows = kept[unit_keys].copy()
                rows["diff"] = (a - b)[a.notna() & b.notna()].to_numpy(dtype=float)
                for column, value in {"method": method, "baseline": baseline, **dict(zip(keys, group)),
                                      "protocol": protocol}.items():
                    rows[column] = value
                parts.append(rows[columns])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def difference_stats(diff) -> dict:
    """``n_pairs``, ``accuracy_diff_{mean,std,ci_low,ci_high}`` (a paired t interval) and the method's
    ``wins`` / ``ties`` / ``losses`` of paired differences ``diff`` (fractions)."""
    diff = np.asarray(diff, dtype=float)
    stats = t_interval(diff, bounds=(-1.0, 1.0))
    return {"n_pairs": stats["n"], "accuracy_diff_mean": stats["mean"], "accuracy_diff_std": stats["std"],
            "accuracy_diff_ci_low": stats["ci_low"], "accuracy_diff_ci_high": stats["ci_high"],
            "wins": int((diff > TIE_TOLERANCE).sum()), "ties": int((np.abs(diff) <= TIE_TOLERANCE).sum()),
            "losses": int((diff < -TIE_TOLERANCE).sum())}


PAIRED_STAT_COLUMNS = ["n_pairs", "accuracy_diff_mean", "accuracy_diff_std", "accuracy_diff_ci_low",
                       "accuracy_diff_ci_high", "wins", "ties", "losses"]


def aggregate_differences(diffs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """:func:`difference_stats` per group of ``keys`` (in order of first appearance)."""
    if diffs.empty:
        return pd.DataFrame(columns=[*keys, *PAIRED_STAT_COLUMNS])
    rows = [{**dict(zip(keys, group if isinstance(group, tuple) else (group,))), **difference_stats(part["diff"])}
            for group, part in diffs.groupby(keys, sort=False, dropna=False)]
    return pd.DataFrame(rows, columns=[*keys, *PAIRED_STAT_COLUMNS])


def paired(table: pd.DataFrame, extra_keys: list[str], unit_keys: list[str],
           methods: list[str] | None = None) -> pd.DataFrame:
    """Every pair of methods on the same runs (:func:`paired_differences`), per noise cell, extra values and
    protocol: ``n_pairs``, the test accuracy difference method - baseline (``accuracy_diff_mean``, ``_std``,
    ``_ci_low``, ``_ci_high``: a paired t interval) and ``wins`` / ``ties`` / ``losses`` of the method."""
    keys = ["method", "baseline", "noise_kind", "noise_rate", *extra_keys, "protocol"]
    return aggregate_differences(paired_differences(table, extra_keys, unit_keys, methods), keys)


def write_summary(grid: Grid, cells: list[Cell], run_dir: Path, failed: list[dict]) -> dict[str, Path]:
    """Write cells.csv, summary.csv, summary.json, paired.csv and failed.csv into ``run_dir``; returns
    their paths."""
    table = collect(cells, run_dir)
    summary = summarise(table, list(grid.extra), grid.methods)
    pairs = paired(table, list(grid.extra), grid.unit_keys, grid.methods)
    names = ("cells.csv", "summary.csv", SUMMARY_JSON, "paired.csv", "failed.csv")
    paths = {name: run_dir / name for name in names}
    table.to_csv(paths["cells.csv"], index=False)
    summary.to_csv(paths["summary.csv"], index=False, float_format="%.4f")
    pairs.to_csv(paths["paired.csv"], index=False, float_format="%.4f")
    with open(paths["failed.csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["cell", "error"])
        writer.writeheader()
        writer.writerows(failed)
    paths[SUMMARY_JSON].write_text(json.dumps({
        "grid": str(grid.path),
        "base": str(grid.base),
        "cells_total": len(cells),
        "cells_finished": int(len(table)),
        "unit_keys": grid.unit_keys,
        "protocols": PROTOCOL_DEFINITIONS,
        "confidence": CONFIDENCE,
        "rows": json.loads(summary.to_json(orient="records")),  # NaN -> null
        "paired": json.loads(pairs.to_json(orient="records")),
        "failed": failed,
    }, indent=2))
    return paths


def percent(value: float) -> str:
    """100 * value with 2 decimals ('—' for a missing value): the one number format of every table."""
    return "—" if value is None or pd.isna(value) else f"{100 * value:.2f}"


def mean_std(mean: float, std: float) -> str:
    return percent(mean) + ("" if pd.isna(std) else f" ± {percent(std)}")


def interval(low: float, high: float) -> str:
    return "—" if pd.isna(low) or pd.isna(high) else f"{percent(low)} to {percent(high)}"


def format_table(summary: pd.DataFrame, protocol: str = "val_selected") -> str:
    """A Markdown table of the summary under ``protocol``: test accuracy and mean class accuracy as
    mean ± std (percent) and the number of runs."""
    keys = [c for c in summary.columns if c in SUMMARY_COLUMNS or "." in c]
    lines = ["| " + " | ".join([*keys, f"test accuracy % ({protocol})", "mean class accuracy %", "n"]) + " |",
             "|" + "---|" * (len(keys) + 3)]
    for _, row in summary.iterrows():
        cells = [str(row[k]) for k in keys]
        cells += [mean_std(row[f"{protocol}_accuracy_mean"], row[f"{protocol}_accuracy_std"]),
                  mean_std(row[f"{protocol}_mean_class_accuracy_mean"], row[f"{protocol}_mean_class_accuracy_std"]),
                  str(row["n"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
