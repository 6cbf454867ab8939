"""Sweep plots (PNG, matplotlib's Agg backend - no display needed): the metric against every searched
parameter, and Optuna's parameter importances."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from soft_dist.headless_pyplot import pyplot
from soft_dist.tune.sweep_config import Sweep


def plot_metric_vs_params(sweep: Sweep, table: pd.DataFrame, out_dir: Path, best_id: str | None) -> list[Path]:
    """One ``metric_vs_<param>.png`` per searched parameter. Trials that trained every epoch and trials
    ASHA stopped early are drawn differently (their metric is from an earlier epoch); the best is starred."""
    plt = pyplot()
    paths = []
    scored = table[table[sweep.metric].notna()]
    complete = scored[~scored["stopped_early"]]
    stopped = scored[scored["stopped_early"]]
    for dim in sweep.space:
        fig, ax = plt.subplots(figsize=(5, 3.6), dpi=110)
        # choice values may be strings: plot them by position, labelled
        if dim.type == "choice":
            position = {v: i for i, v in enumerate(dim.values)}
            x_of = lambda s: s.map(position)  # noqa: E731
            ax.set_xticks(range(len(dim.values)), [str(v) for v in dim.values])
        else:
            x_of = lambda s: s  # noqa: E731
        ax.scatter(x_of(complete[dim.name]), complete[sweep.metric], label=f"{sweep.epochs} epochs", color="C0")
        if len(stopped):
            ax.scatter(x_of(stopped[dim.name]), stopped[sweep.metric], marker="x", color="C1",
                       label="stopped early (ASHA)")
        if best_id is not None:
            best = scored[scored["trial_id"] == best_id]
            ax.scatter(x_of(best[dim.name]), best[sweep.metric], marker="*", s=220, color="C3", label="best",
                       zorder=3)
        if dim.type == "loguniform":
            from matplotlib.ticker import FuncFormatter, NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 10, not 10^1
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on short ranges
        ax.set_xlabel(f"{dim.name} ({dim.key})")
        ax.set_ylabel(sweep.metric)
        ax.set_title(f"{sweep.metric} vs {dim.name} ({len(scored)} trials)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"metric_vs_{dim.name.replace('.', '_')}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_importances(importances: dict[str, float], path: Path, metric: str) -> Path:
    """Horizontal bars of Optuna's (normalised) importances; a note when they could not be computed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 0.5 + 0.5 * max(len(importances), 2)), dpi=110)
    if importances:
        names = list(importances)[::-1]  # most important on top
        ax.barh(names, [importances[n] for n in names], color="C0")
        ax.set_xlabel(f"importance for {metric} (fANOVA, sums to 1)")
    else:
        ax.text(0.5, 0.5, "not enough varied trials for importances", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title("Optuna parameter importances")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
