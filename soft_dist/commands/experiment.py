"""`soft-dist experiment`: the paper's comparisons as a grid of training runs (docs/experiments.md)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "experiment",
        help="a grid of runs (methods x noise kinds x rates x seeds [x extra axes]) -> summary.csv + plots",
        description="Run every cell of a grid file (configs/experiments/) with Ray Train, skipping cells that "
        "finished earlier, then write DIR/summary.csv, DIR/cells.csv, DIR/summary.json, DIR/failed.csv and "
        "DIR/plots/*.png. A cell's seed sets both train.seed and noise.seed.",
    )
    p.add_argument("--grid", type=Path, required=True, help="grid YAML file (see configs/experiments/)")
    p.add_argument("--run-dir", type=Path, required=True, help="experiment folder (cells/, summary, plots)")
    p.add_argument("--summary-only", action="store_true", help="train nothing; rewrite tables and plots")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted config overrides for every cell, e.g. data.shards=DIR (not the grid's axes)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from soft_dist.experiment.grid import GridError, load_grid
    from soft_dist.experiment.summary import format_table

    try:
        grid = load_grid(args.grid)
        if args.summary_only:
            outcome = _summary_only(grid, args.run_dir)
        else:
            from soft_dist.experiment.runner import run_grid

            outcome = run_grid(grid, args.run_dir, args.overrides)
    except GridError as err:
        import sys

        print(f"soft-dist experiment: error: {err}", file=sys.stderr)
        return 2
    import pandas as pd

    summary = pd.read_csv(args.run_dir / "summary.csv")
    print(f"\n{len(outcome.trained)} cells trained, {len(outcome.skipped)} skipped (finished earlier), "
          f"{len(outcome.failed)} failed")
    print(format_table(summary) if not summary.empty else "(no finished cells)")
    for failure in outcome.failed:
        print(f"FAILED {failure['cell']}: {failure['error']}")
    for name, path in sorted(outcome.outputs.items()):
        print(f"  {name}: {path}")
    return 1 if outcome.failed else 0


def _summary_only(grid, run_dir: Path):
    from soft_dist.experiment.plots import write_plots
    from soft_dist.experiment.runner import GridOutcome
    from soft_dist.experiment.summary import write_summary

    run_dir = run_dir.resolve()
    cells = grid.cells()
    outcome = GridOutcome()
    outcome.outputs.update(write_summary(grid, cells, run_dir, []))
    outcome.outputs.update(write_plots(grid, cells, run_dir))
    return outcome
