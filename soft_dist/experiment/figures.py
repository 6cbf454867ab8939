"""matplotlib for files only (Agg backend: no display on workers, clusters or CI), shared by the grid's
plots and the SLS bar charts."""

from __future__ import annotations


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
