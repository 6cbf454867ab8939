"""`soft-dist experiment`: the paper's comparisons as grids of training runs (docs/experiments.md).

grid.py (grid files -> cells), runner.py (one Ray Train run per cell, skip finished, record failures),
confusion.py (asymmetric noise from a plain model), summary.py (tables), plots.py and sls_bars.py (PNGs).
"""
