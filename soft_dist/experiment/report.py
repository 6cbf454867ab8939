"""DIR/report.md: an experiment's numbers as Markdown, made from the experiment folder alone
(``soft-dist experiment report DIR``; the grid runner also writes it at the end of every invocation).

Contents: a header (grid file and its copy, the command and machine of the latest invocation, the
number of runs), one table per evaluation protocol (mean ± std, 95% t-interval and n per method and
noise cell), the paired comparisons, how often validation chose each branch and on how many images,
one line per run, the per-epoch means of each method, and links to the plots. The final numbers are
from the same tables as cells.csv, summary.csv and paired.csv (soft_dist.experiment.summary), the
per-epoch means from the cells' metrics.jsonl (soft_dist.experiment.dynamics); all from the cell folders.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from soft_dist.experiment.dynamics import EPOCH_COLUMNS, epoch_means, finished_series
from soft_dist.experiment.grid import Grid, load_grid
from soft_dist.experiment.layout import (
    GRID_COPY,
    OUTCOME,
    PLOTS_DIR,
    REPORT,
    SUMMARY_JSON,
    machine,
    read_json,
)
from soft_dist.experiment.summary import (
    MODEL_PT,
    PROTOCOL_DEFINITIONS,
    REPORTED_PROTOCOLS,
    collect,
    difference_stats,
    interval,
    mean_std,
    paired,
    percent,
    summarise,
    write_summary,
)

HEADINGS = {
    MODEL_PT: "model_pt (what model.pt holds: each run's own train.model_epoch)",
    "val_selected": "val_selected (epoch and branch chosen on validation)",
    "last": "last (last epoch, branch chosen on validation)",
    "mean_last_5": "mean_last_5 (mean of the last 5 epochs)",
    "best_on_test": "best_on_test (OPTIMISTIC: chosen on the test set)",
}


class ReportError(ValueError):
    """An experiment folder a report cannot be made from, naming the folder."""


def load_run_grid(run_dir: Path) -> Grid:
    """The grid of an experiment folder: its copy DIR/grid.yaml (base config not needed), with the
    original file and base config as outcome.json / summary.json recorded them."""
    run_dir = Path(run_dir)
    outcome = read_json(run_dir / OUTCOME) or {}
    summary = read_json(run_dir / SUMMARY_JSON) or {}
    original, base = outcome.get("grid") or summary.get("grid"), outcome.get("base") or summary.get("base")
    copy = run_dir / GRID_COPY
    if copy.is_file():
        grid = load_grid(copy, check_base=False)
    elif original and Path(original).is_file():  # a folder written before the runner kept a copy
        grid = load_grid(original, check_base=False)
    else:
        raise ReportError(f"{run_dir}: no {GRID_COPY} and no readable grid file in {OUTCOME} / {SUMMARY_JSON}; "
                          "is this a folder written by `soft-dist experiment --grid FILE --run-dir DIR`?")
    return dataclasses.replace(grid, path=Path(original) if original else grid.path,
                               base=Path(base) if base else grid.base)


def write_report(run_dir: str | Path, out: str | Path | None = None, refresh: bool = True) -> Path:
    """Write the report of ``run_dir`` to ``out`` (default DIR/report.md); returns its path.

    ``refresh`` first rewrites the tables (cells.csv, summary.csv, summary.json, paired.csv; failed
    cells as summary.json listed them) and the table plots from the cell folders, so that a folder
    written by an older version gets the protocol columns; the SLS bar charts are left as they are."""
    from soft_dist.experiment.grid_plots import write_plots

    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such folder")
    grid = load_run_grid(run_dir)
    cells = grid.cells()
    if refresh:
        failed = (read_json(run_dir / SUMMARY_JSON) or {}).get("failed", [])
        write_summary(grid, cells, run_dir, failed)
        write_plots(grid, cells, run_dir, log=lambda _: None, sls_bars=False)
    table = collect(cells, run_dir)
    summary = summarise(table, list(grid.extra), grid.methods)
    pairs = paired(table, list(grid.extra), grid.unit_keys, grid.methods)
    out = Path(out).resolve() if out is not None else run_dir / REPORT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(run_dir, grid, len(cells), table, summary, pairs, out.parent, refreshed=refresh))
    return out


# ----------------------------------------------------------------------------- rendering


def noise_label(row) -> str:
    """'symmetric 30%' for a row with noise_kind and noise_rate."""
    return f"{row['noise_kind']} {100 * float(row['noise_rate']):g}%"


def points(value) -> str:
    """A difference of accuracies (a fraction) in signed percentage points; '—' when missing."""
    return "—" if pd.isna(value) else f"{100 * value:+.2f}"


def paired_stat_cells(row) -> list[str]:
    """[n pairs, mean difference, 95% CI, wins / ties / losses] of a row of paired statistics."""
    ci = "—" if pd.isna(row["accuracy_diff_ci_low"]) else \
        f"{points(row['accuracy_diff_ci_low'])} to {points(row['accuracy_diff_ci_high'])}"
    return [str(int(row["n_pairs"])), points(row["accuracy_diff_mean"]), ci,
            f"{int(row['wins'])} / {int(row['ties'])} / {int(row['losses'])}"]


def _extras(row, keys: list[str]) -> list[str]:
    return [str(row[k]) for k in keys]


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _link(path: Path, where: Path) -> str:
    """``path`` as a Markdown link target relative to the report's folder ``where``."""
    return Path(os.path.relpath(path, where)).as_posix()


def _header(run_dir: Path, grid: Grid, cells_total: int, table: pd.DataFrame, where: Path,
            refreshed: bool) -> list[str]:
    outcome = read_json(run_dir / OUTCOME) or {}
    failed = (read_json(run_dir / SUMMARY_JSON) or {}).get("failed", [])
    ran_on = outcome.get("machine")
    here = machine()
    made = datetime.now(timezone.utc).isoformat(timespec="seconds")
    metric = ", ".join(sorted(set(table["select_metric"]))) if not table.empty else "—"
    rows = [
        ["grid", f"`{grid.path}` (copy: [{GRID_COPY}]({_link(run_dir / GRID_COPY, where)}))"],
        ["base config", f"`{grid.base}`"],
        ["command", f"`{outcome['command']}`" if outcome.get("command") else "— (not recorded)"],
        ["trained on", (f"{ran_on['platform']}, {ran_on['cpus']} CPUs, Python {ran_on['python']}; latest "
                        f"invocation finished {outcome.get('finished_at', '?')}") if ran_on else "— (not recorded)"],
        ["report", f"`soft-dist experiment report {run_dir}`" + (" " if refreshed else " (written by the grid run) ")
         + f"on {here['platform']}, {here['cpus']} CPUs, {made}"],
        ["runs", f"{len(table)} finished of {cells_total} cells; {len(failed)} failed"],
        ["select metric", metric],
        ["statistics", "percent; mean ± std (ddof = 1) over runs; 95% CI = mean ± t(0.975, n-1) std / sqrt(n)"],
    ]
    if grid.unit_keys != ["seed"]:
        rows.append(["runs per group", f"one per {' x '.join(grid.unit_keys)}; runs of one K-fold split share "
                                       "training images, so the CI is too narrow (docs/experiments.md)"])
    title = grid.description or grid.path.name
    return [f"# Experiment report: {title}", "", *markdown_table(["", ""], rows), ""]


def protocol_section(protocol: str, summary: pd.DataFrame, table: pd.DataFrame, extra: list[str]) -> list[str]:
    lines = [f"## {HEADINGS[protocol]}", "", PROTOCOL_DEFINITIONS[protocol] + ".", ""]
    if protocol == MODEL_PT and not table.empty:
        used = table.groupby("method", sort=False)[f"{MODEL_PT}_protocol"].agg(
            lambda x: ", ".join(sorted({str(v) for v in x.dropna()})) or "—")
        lines += ["Protocol per method: " + "; ".join(f"{m}: {p}" for m, p in used.items()) + ".", ""]
    if protocol == "mean_last_5" and not table.empty:
        counts = sorted({int(v) for v in table["mean_last_5_num_epochs"].dropna()})
        lines += [f"Epochs averaged per run: {', '.join(map(str, counts)) or '—'}.", ""]
    header = ["method", "noise", *extra, "n", "test accuracy %", "95% CI", "mean class accuracy %", "95% CI"]
    rows = []
    for _, row in summary.iterrows():
        acc, mca = f"{protocol}_accuracy", f"{protocol}_mean_class_accuracy"
        rows.append([str(row["method"]), noise_label(row), *_extras(row, extra), str(int(row["n"])),
                     mean_std(row[f"{acc}_mean"], row[f"{acc}_std"]),
                     interval(row[f"{acc}_ci_low"], row[f"{acc}_ci_high"]),
                     mean_std(row[f"{mca}_mean"], row[f"{mca}_std"]),
                     interval(row[f"{mca}_ci_low"], row[f"{mca}_ci_high"])])
    return [*lines, *markdown_table(header, rows), ""]


def paired_section(pairs: pd.DataFrame, extra: list[str], unit_keys: list[str]) -> list[str]:
    lines = ["## Paired comparisons", "",
             f"Test accuracy of `method` minus `baseline` in percentage points, on the same runs (equal "
             f"{', '.join(unit_keys)}); wins / ties / losses of `method`. 95% CI: paired t interval.", ""]
    if pairs.empty:
        return [*lines, "(no pairs: fewer than two methods with finished runs on the same units)", ""]
    header = ["method", "baseline", "noise", *extra, "protocol", "n pairs", "mean difference", "95% CI",
              "wins / ties / losses"]
    rows = [[str(row["method"]), str(row["baseline"]), noise_label(row), *_extras(row, extra), str(row["protocol"]),
             *paired_stat_cells(row)] for _, row in pairs.iterrows()]
    return [*lines, *markdown_table(header, rows), ""]


def _median(values) -> str:
    x = pd.to_numeric(pd.Series(list(values)), errors="coerce").dropna()
    return "—" if x.empty else f"{float(np.median(x)):g}"


def _branch_section(table: pd.DataFrame, grid: Grid) -> list[str]:
    extra = list(grid.extra)
    lines = ["## Branch chosen on validation (val_selected)", "",
             "How often validation chose each branch, on how many validation images (`val_samples`), and by how "
             "many more correctly classified validation images than the other branch (`val_margin_samples`; "
             "— with a single branch).", ""]
    if table.empty:
        return [*lines, "(no finished runs)", ""]
    rows = []
    for _, part in table.groupby(["method", "noise_kind", "noise_rate", *extra], sort=False, dropna=False):
        first = part.iloc[0]
        counts = part["val_selected_branch"].value_counts()
        rows.append([str(first["method"]), noise_label(first), *_extras(first, extra),
                     str(int(counts.get("teacher", 0))), str(int(counts.get("student", 0))),
                     _median(part["val_selected_val_samples"]), _median(part["val_selected_val_margin_samples"]),
                     _median(part["val_selected_epoch"])])
    header = ["method", "noise", *extra, "teacher chosen", "student chosen", "median val_samples",
              "median val_margin_samples", "median epoch"]
    return [*lines, *markdown_table(header, rows), ""]


def _selection_section(table: pd.DataFrame, grid: Grid) -> list[str]:
    """Which epoch to ship, measured: per method, the last epoch against the validation choice on the same
    runs, and every protocol's regret against the optimistic best_on_test (train.model_epoch's evidence)."""
    extra = list(grid.extra)
    lines = ["## Selection: the last epoch against the validation choice", "",
             "Per run, test accuracy of protocol `last` minus `val_selected` in percentage points (95% CI: t "
             "interval over the runs; wins / ties / losses of `last`), and each protocol's regret: "
             "`best_on_test` (chosen on test, optimistic) minus the protocol, mean and largest over the runs. "
             "model.pt follows `last` for a method with an EMA teacher and `val_selected` without one "
             "(`train.model_epoch=auto`).", ""]
    finished = table.dropna(subset=["last_accuracy", "val_selected_accuracy"]) if not table.empty else table
    if finished.empty:
        return [*lines, "(no finished runs)", ""]
    rows = []
    for _, part in finished.groupby(["method", "noise_kind", "noise_rate", *extra], sort=False, dropna=False):
        first = part.iloc[0]
        stat = difference_stats(part["last_accuracy"] - part["val_selected_accuracy"])
        ci = "—" if np.isnan(stat["accuracy_diff_ci_low"]) else \
            f"{100 * stat['accuracy_diff_ci_low']:+.2f} to {100 * stat['accuracy_diff_ci_high']:+.2f}"
        record = f"{stat['wins']} / {stat['ties']} / {stat['losses']}"
        regrets = []
        for protocol in ("val_selected", "last", "mean_last_5"):
            regret = 100 * (part["best_on_test_accuracy"] - part[f"{protocol}_accuracy"])
            regrets.append("—" if regret.isna().all() else f"{regret.mean():.2f} ({regret.max():.2f})")
        rows.append([str(first["method"]), noise_label(first), *_extras(first, extra), str(stat["n_pairs"]),
                     f"{100 * stat['accuracy_diff_mean']:+.2f}", ci, record, *regrets])
    header = ["method", "noise", *extra, "n", "last − val_selected", "95% CI", "wins / ties / losses",
              "regret val_selected (max)", "regret last (max)", "regret mean_last_5 (max)"]
    return [*lines, *markdown_table(header, rows), ""]


def _runs_section(table: pd.DataFrame, grid: Grid) -> list[str]:
    lines = ["## Runs", "", "Test accuracy % of every finished run under each protocol (as in cells.csv); "
             "val_selected also gives epoch, branch and margin / validation images.", ""]
    if table.empty:
        return [*lines, "(no finished runs)", ""]
    rows = []
    for _, row in table.iterrows():
        margin, samples = row["val_selected_val_margin_samples"], row["val_selected_val_samples"]
        evidence = (f"single branch, {int(samples)} val images" if margin is None or pd.isna(margin)
                    else f"{int(margin):+d} of {int(samples)}")
        chosen = "—" if pd.isna(row["val_selected_epoch"]) else (
            f"epoch {int(row['val_selected_epoch'])}, {row['val_selected_branch']}, {evidence}")
        k_share = "—" if pd.isna(row.get("share_k_gt_1_first")) else \
            f"{row['share_k_gt_1_first']:.2f} → {row['share_k_gt_1_last']:.2f}"
        rows.append([str(row["cell"]), percent(row["val_selected_accuracy"]), chosen, percent(row["last_accuracy"]),
                     percent(row["mean_last_5_accuracy"]), percent(row["best_on_test_accuracy"]), k_share,
                     str(row["protocols_from"] or "—")])
    header = ["cell", "val_selected", "chosen (epoch, branch, margin of N)", "last", "mean_last_5", "best_on_test",
              "k > 1 share (first → last SLS epoch)", "protocols from"]
    return [*lines, *markdown_table(header, rows), ""]


def _epochs_section(run_dir: Path, grid: Grid) -> list[str]:
    """Per noise cell, each series' per-epoch means (soft_dist.experiment.dynamics), epoch by epoch so
    that the methods at one epoch stand on adjacent rows."""
    lines = ["## Per epoch (mean over runs)", "",
             "After every epoch, the mean over the finished runs of: test and validation accuracy of each branch "
             "(validation on the split's own labels, noisy unless `data.val_labels` says otherwise); the share of "
             "training images whose given label is the teacher's arg-max (`teacher = label`); the share of "
             "training images whose SLS target keeps more than one class above tau (`k > 1 share`); the "
             "consistency loss. From each cell's metrics.jsonl; — where a method has no such value.", ""]
    groups = finished_series(run_dir, grid.cells())
    if not groups:
        return [*lines, "(no finished runs)", ""]
    header = ["epoch", "series", "runs", *(c.header for c in EPOCH_COLUMNS)]
    for (kind, rate), series in groups.items():
        frames = [epoch_means(folders).assign(series=label) for label, folders in series.items()]
        table = pd.concat(frames, ignore_index=True).sort_values("epoch", kind="stable")
        rows = [[str(int(row["epoch"])), str(row["series"]), str(int(row["runs"])),
                 *(percent(row[c.header]) if c.as_percent else ("—" if pd.isna(row[c.header])
                                                                else f"{row[c.header]:.3f}")
                   for c in EPOCH_COLUMNS)] for _, row in table.iterrows()]
        lines += [f"### {kind} {100 * rate:g}%", "", *markdown_table(header, rows), ""]
    return lines


def _plots_section(run_dir: Path, where: Path) -> list[str]:
    plots = sorted((run_dir / PLOTS_DIR).glob("*.png")) if (run_dir / PLOTS_DIR).is_dir() else []
    lines = ["## Plots", ""]
    if not plots:
        return [*lines, "(none)", ""]
    lines.append("The accuracy-against-x plots show the val_selected protocol; the per-epoch plots show test "
                 "accuracy of both branches (student solid, teacher dashed), mean ± std over runs.")
    lines.append("")
    for path in plots:
        rel = _link(path, where)
        lines += [f"[{path.name}]({rel})", "", f"![{path.stem}]({rel})", ""]
    return lines


def _failed_section(run_dir: Path) -> list[str]:
    failed = (read_json(run_dir / SUMMARY_JSON) or {}).get("failed", [])
    if not failed:
        return []
    rows = [[f["cell"], f["error"].replace("|", "\\|").replace("\n", " ")] for f in failed]
    return ["## Failed", "", *markdown_table(["cell", "error"], rows), ""]


def render(run_dir: Path, grid: Grid, cells_total: int, table: pd.DataFrame, summary: pd.DataFrame,
           pairs: pd.DataFrame, where: Path, refreshed: bool = True) -> str:
    """The report's Markdown. ``where``: the folder the report is written to (links are relative)."""
    extra = list(grid.extra)
    lines = _header(run_dir, grid, cells_total, table, where, refreshed)
    for protocol in REPORTED_PROTOCOLS:
        lines += protocol_section(protocol, summary, table, extra)
    lines += paired_section(pairs, extra, grid.unit_keys)
    lines += _selection_section(table, grid)
    lines += _branch_section(table, grid)
    lines += _runs_section(table, grid)
    lines += _epochs_section(run_dir, grid)
    lines += _plots_section(run_dir, where)
    lines += _failed_section(run_dir)
    lines.append(f"_soft-dist report, Python {platform.python_version()}_")
    return "\n".join(lines) + "\n"
