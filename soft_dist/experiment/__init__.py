"""`soft-dist experiment`: the paper's comparisons as grids of training runs (docs/experiments.md).

grid.py (grid files -> cells), layout.py (paths in an experiment folder), runner.py (one Ray Train run
per cell, skip finished, record failures), confusion.py (asymmetric noise from a plain model), summary.py
(tables, intervals, paired comparisons; protocols from soft_dist.train.protocols), grid_plots.py and
sls_bars.py (PNGs, through soft_dist.headless_pyplot), report.py (report.md).
"""
