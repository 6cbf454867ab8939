"""`soft-dist experiment`: the paper's comparisons as grids of training runs (docs/experiments.md).

grid.py (grid files -> cells), layout.py (paths in an experiment folder), runner.py (one Ray Train run
per cell, skip finished, record failures), confusion.py (asymmetric noise from a plain model), summary.py
(tables, intervals, paired comparisons; protocols from soft_dist.train.protocols), plots.py, sls_bars.py and
figures.py (PNGs), report.py (report.md).
"""
