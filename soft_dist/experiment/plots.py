"""PNG plots of a grid (matplotlib, Agg backend), written to DIR/plots/:

* ``accuracy_vs_noise_rate_<kind>.png`` - test accuracy (mean ± std over seeds) against the noise
  rate, one line per method (paper Fig. 4 / 5);
* ``accuracy_vs_<key>.png`` - for every numeric extra axis (e.g. method.epsilon, method.tau: Fig. 3),
  accuracy against its values, one line per method / noise kind / rate;
* ``sls_targets_<cell>.png`` - Fig. 1-style bars of the final teacher's SLS targets for a few training
  images of one cell (see soft_dist.experiment.sls_bars).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from soft_dist.experiment.grid import Cell, Grid


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on workers or CI
    import matplotlib.pyplot as plt

    return plt


def _label(row: pd.Series, keys: list[str]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={row[k]}" if k not in ("method",) else str(row[k]) for k in keys)


def plot_lines(summary: pd.DataFrame, x: str, series_keys: list[str], title: str, xlabel: str, path: Path) -> Path:
    """Accuracy mean ± std against column ``x``, one line per distinct value of ``series_keys``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=100)
    groups = summary.groupby(series_keys, sort=False, dropna=False) if series_keys else [((), summary)]
    for _, part in groups:
        part = part.sort_values(x)
        std = part["accuracy_std"].fillna(0.0)
        label = _label(part.iloc[0], series_keys) if series_keys else "accuracy"
        ax.errorbar(part[x], 100 * part["accuracy_mean"], yerr=100 * std, marker="o", capsize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_plots(grid: Grid, cells: list[Cell], run_dir: Path, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Every plot this grid supports from what has finished; returns {file name: path}."""
    from soft_dist.experiment.summary import collect, summarise

    out_dir = run_dir / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(collect(cells, run_dir), list(grid.extra))
    written: dict[str, Path] = {}
    if summary.empty:
        return written
    extra = list(grid.extra)
    for kind, part in summary.groupby("noise_kind", sort=False):
        path = out_dir / f"accuracy_vs_noise_rate_{kind}.png"
        plot_lines(part, "noise_rate", ["method", *extra], f"{kind} noise: test accuracy (mean ± std over seeds)",
                   "noise rate", path)
        written[path.name] = path
    for key in extra:
        if not all(isinstance(v, (int, float)) for v in grid.extra[key]):
            continue  # a categorical axis: its values appear as separate lines in the plots above
        others = [k for k in extra if k != key]
        path = out_dir / f"accuracy_vs_{key.split('.')[-1]}.png"
        plot_lines(summary, key, ["method", "noise_kind", "noise_rate", *others],
                   f"test accuracy against {key} (mean ± std over seeds)", key, path)
        written[path.name] = path
    if grid.sls_bars is not None:
        from soft_dist.experiment.runner import cell_dir, is_finished
        from soft_dist.experiment.sls_bars import plot_sls_targets

        candidates = [c for c in cells if c.method == grid.sls_bars.method and is_finished(cell_dir(run_dir, c))]
        if candidates:
            # The noisiest finished cell shows SLS at work best.
            cell = max(candidates, key=lambda c: c.noise_rate)
            path = out_dir / f"sls_targets_{cell.name}.png"
            plot_sls_targets(cell_dir(run_dir, cell), grid.sls_bars.images, path)
            written[path.name] = path
        else:
            log(f"[experiment] no finished {grid.sls_bars.method} cell: no SLS target plot")
    return written
