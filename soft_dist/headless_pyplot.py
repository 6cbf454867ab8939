"""matplotlib for files only: pyplot on the Agg backend (no display on workers, cluster nodes or CI),
shared by every module that writes PNGs (experiment grids, sweeps, confusion matrices)."""

from __future__ import annotations


def pyplot():
    """``matplotlib.pyplot`` with the Agg backend selected (imported on first use: matplotlib is slow to load)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
