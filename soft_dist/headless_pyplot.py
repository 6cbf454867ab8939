"""matplotlib for files only: pyplot on the Agg backend (no display on workers, cluster nodes or CI),
shared by every module that writes PNGs (experiment grids, sweeps, confusion matrices)."""

from __future__ import annotations


def pyplot():
    """``matplotlib.pyplot`` with the Agg backend selected (imported on first use: matplotlib is slow to load)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def log_log_axes(ax, xlabel: str, ylabel: str) -> None:
    """Both axes of ``ax`` logarithmic (a line of slope 1 is cost linear in N), labelled, with a light grid
    on the major and minor ticks: the panels of the scale benchmarks."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
