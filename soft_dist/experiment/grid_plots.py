"""PNG plots of a grid (matplotlib, Agg backend), written to DIR/plots/:

* ``accuracy_vs_noise_rate_<kind>.png`` - test accuracy under the ``val_selected`` protocol (epoch and
  branch chosen on validation; mean ± std over runs) against the noise rate, one line per method
  (paper Fig. 4 / 5);
* ``accuracy_vs_<key>.png`` - for every numeric extra axis (e.g. method.epsilon, method.tau: Fig. 3),
  the same accuracy against its values, one line per method / noise kind / rate;
* ``test_accuracy_per_epoch_<kind>_<rate>.png`` - TEST accuracy after every epoch, one colour per method
  (and extra-axis values), the student solid and the teacher dashed: the mean over the runs (seeds,
  folds, split seeds) with a band of ± 1 std, from each finished cell's metrics.jsonl. Both branches
  rather than the validation-chosen one, because which branch validation picks changes from epoch to
  epoch and run to run, and a mean over such a switching line would show neither branch;
* ``sls_targets_<cell>.png`` - Fig. 1-style bars of the final teacher's SLS targets for a few training
  images of one cell (see soft_dist.experiment.sls_bars).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from soft_dist.headless_pyplot import pyplot
from soft_dist.experiment.dynamics import finished_series
from soft_dist.experiment.grid import Cell, Grid
from soft_dist.experiment.layout import PLOTS_DIR, cell_dir, is_finished, read_cell_metrics
from soft_dist.experiment.summary import collect, summarise
from soft_dist.run_files import NOISE_TABLE_FILE

HEADLINE = "val_selected"  # the protocol of the accuracy-against-x plots
BRANCH_STYLE = {"student": "-", "teacher": "--"}


def _label(row: pd.Series, keys: list[str]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={row[k]}" if k not in ("method",) else str(row[k]) for k in keys)


def plot_lines(summary: pd.DataFrame, x: str, series_keys: list[str], title: str, xlabel: str, path: Path,
               value: str = f"{HEADLINE}_accuracy") -> Path:
    """``value``'s mean ± std (summary columns ``<value>_mean``, ``<value>_std``) against column ``x``,
    one line per distinct value of ``series_keys``."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=100)
    groups = summary.groupby(series_keys, sort=False, dropna=False) if series_keys else [((), summary)]
    for _, part in groups:
        part = part.sort_values(x)
        std = pd.to_numeric(part[f"{value}_std"]).fillna(0.0)
        label = _label(part.iloc[0], series_keys) if series_keys else "accuracy"
        ax.errorbar(part[x], 100 * pd.to_numeric(part[f"{value}_mean"]), yerr=100 * std, marker="o", capsize=3,
                    label=label)
    return _save_accuracy_axes(plt, fig, ax, xlabel, title, path, legend_size=8)


def _save_accuracy_axes(plt, fig, ax, xlabel: str, title: str, path: Path, legend_size: int) -> Path:
    """Label a test-accuracy plot, write it to ``path`` and free the figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def epoch_curves(folders: list[Path]) -> dict[str, dict[str, np.ndarray]]:
    """branch -> {"epoch" [E], "mean" [E], "std" [E], "runs" [E]} of the per-epoch test accuracy over the
    runs in ``folders`` (runs of different lengths: each epoch over the runs that reached it; std NaN
    where fewer than 2 did). Runs without test reports are left out."""
    per_branch: dict[str, dict[int, list[float]]] = {}
    for folder in folders:
        for record in read_cell_metrics(folder):
            for branch, report in (record.get("test") or {}).items():
                per_branch.setdefault(branch, {}).setdefault(int(record["epoch"]), []).append(report["accuracy"])
    out = {}
    for branch, by_epoch in per_branch.items():
        epochs = sorted(by_epoch)
        values = [np.asarray(by_epoch[e], dtype=float) for e in epochs]
        out[branch] = {"epoch": np.asarray(epochs), "mean": np.asarray([v.mean() for v in values]),
                       "std": np.asarray([v.std(ddof=1) if len(v) > 1 else np.nan for v in values]),
                       "runs": np.asarray([len(v) for v in values])}
    return out


def plot_epoch_curves(series: dict[str, list[Path]], title: str, path: Path) -> Path | None:
    """One plot: per series (label -> run folders) and branch, mean test accuracy per epoch with a ± 1 std
    band; the student solid, the teacher dashed, one colour per series. None when no run has test
    reports."""
    curves = {label: epoch_curves(folders) for label, folders in series.items()}
    if not any(curves.values()):
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=100)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, (label, by_branch) in enumerate(curves.items()):
        color = colors[n % len(colors)]
        for branch, curve in sorted(by_branch.items()):
            x, mean = curve["epoch"], 100 * curve["mean"]
            ax.plot(x, mean, BRANCH_STYLE.get(branch, ":"), color=color, marker=".",
                    label=f"{label} {branch} (n={int(curve['runs'].max())})")
            band = 100 * np.nan_to_num(curve["std"])
            ax.fill_between(x, mean - band, mean + band, color=color, alpha=0.15, linewidth=0)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save_accuracy_axes(plt, fig, ax, "epoch", title, path, legend_size=7)


def write_plots(grid: Grid, cells: list[Cell], run_dir: Path, log: Callable[[str], None] = print,
                sls_bars: bool = True) -> dict[str, Path]:
    """Every plot this grid supports from what has finished; returns {file name: path}.

    ``sls_bars=False`` leaves out the SLS bar charts (they need the cell's shards and checkpoint)."""
    out_dir = run_dir / PLOTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(collect(cells, run_dir), list(grid.extra), grid.methods)
    written: dict[str, Path] = {}
    if summary.empty:
        return written
    extra = list(grid.extra)
    for kind, part in summary.groupby("noise_kind", sort=False):
        path = out_dir / f"accuracy_vs_noise_rate_{kind}.png"
        plot_lines(part, "noise_rate", ["method", *extra],
                   f"{kind} noise: test accuracy, {HEADLINE} (mean ± std over runs)", "noise rate", path)
        written[path.name] = path
    for key in extra:
        if not all(isinstance(v, (int, float)) for v in grid.extra[key]):
            continue  # a categorical axis: its values appear as separate lines in the plots above
        others = [k for k in extra if k != key]
        path = out_dir / f"accuracy_vs_{key.split('.')[-1]}.png"
        plot_lines(summary, key, ["method", "noise_kind", "noise_rate", *others],
                   f"test accuracy, {HEADLINE}, against {key} (mean ± std over runs)", key, path)
        written[path.name] = path
    for (kind, rate), series in finished_series(run_dir, cells).items():
        path = out_dir / f"test_accuracy_per_epoch_{kind}_{rate:g}.png"
        title = (f"{kind} noise {rate:g}: test accuracy per epoch\n"
                 "mean ± std over runs; student solid, teacher dashed")
        if plot_epoch_curves(series, title, path) is not None:
            written[path.name] = path
    if sls_bars and grid.sls_bars is not None:
        from soft_dist.experiment.sls_bars import plot_sls_targets

        # A cell copied by `experiment archive` has its records but no noise table or checkpoint to draw from.
        candidates = [c for c in cells if is_finished(cell_dir(run_dir, c))
                      and c.method == grid.sls_bars.method and (cell_dir(run_dir, c) / NOISE_TABLE_FILE).is_file()]
        if candidates:
            # The noisiest finished cell shows SLS at work best.
            cell = max(candidates, key=lambda c: c.noise_rate)
            path = out_dir / f"sls_targets_{cell.name}.png"
            plot_sls_targets(cell_dir(run_dir, cell), grid.sls_bars.images, path)
            written[path.name] = path
        else:
            log(f"[experiment] no finished {grid.sls_bars.method} cell: no SLS target plot")
    return written

