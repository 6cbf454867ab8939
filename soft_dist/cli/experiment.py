"""`soft-dist experiment`: the paper's comparisons as a grid of training runs (docs/experiments.md).

    soft-dist experiment --grid FILE --run-dir DIR [--summary-only] [--cells PATTERN] [key=value ...]
    soft-dist experiment report DIR [--out FILE.md]                                 DIR/report.md
    soft-dist experiment compare DIR DIR [...] [--out FILE.md]                      across folders
    soft-dist experiment compare --setting DIR DIR [...] --setting DIR DIR [...]     pooled over settings
    soft-dist experiment archive DIR --out DEST                                     records without weights

``report``, ``compare`` and ``archive`` are positional actions rather than an argparse sub-command: the run form takes free
``key=value`` positionals, which a sub-command parser would read as an unknown command name. An override
always contains "=", so none of these words can be one.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

REPORT_ACTION = "report"
COMPARE_ACTION = "compare"
ARCHIVE_ACTION = "archive"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "experiment",
        help="a grid of runs (methods x noise kinds x rates x seeds [x folds, split seeds, extra axes]) -> "
        "tables, plots, report.md; `experiment report DIR` rewrites the report",
        description="Run every cell of a grid file (configs/experiments/) with Ray Train, skipping cells that "
        "finished earlier, then write DIR/cells.csv, DIR/summary.csv, DIR/summary.json, DIR/paired.csv, "
        "DIR/failed.csv, DIR/plots/*.png and DIR/report.md. A cell's seed sets both train.seed and noise.seed. "
        "`soft-dist experiment report DIR [--out FILE.md]` makes the report (and refreshes the tables and "
        "plots) from the experiment folder alone. `soft-dist experiment compare DIR DIR [...]` pairs the runs of "
        "an ablation grid with the runs of the grid it varies (same seeds and folds); with `--setting DIR DIR [...]` "
        "given once per setting (e.g. the same ablation at 30% and at 50% noise) it pools every pair's "
        "differences over the settings. `soft-dist experiment archive DIR --out DEST` copies the finished cells' "
        "records (results.json, metrics.jsonl, config.yaml; no weights) and grid.yaml into DEST, merging with "
        "the cells DEST holds: small enough to keep in a repository, and report and compare read it as they "
        "read DIR.",
        usage="soft-dist experiment --grid FILE --run-dir DIR [--summary-only] [--cells PATTERN] [key=value ...]\n"
        "       soft-dist experiment report DIR [--out FILE.md]\n"
        "       soft-dist experiment compare DIR DIR [...] [--out FILE.md]\n"
        "       soft-dist experiment compare --setting DIR DIR [...] --setting DIR DIR [...] [--out FILE.md]\n"
        "       soft-dist experiment archive DIR --out DEST",
    )
    p.add_argument("--grid", type=Path, metavar="NAME|FILE",
                   help="grid YAML file, or the name of a bundled grid (soft-dist config list)")
    p.add_argument("--run-dir", type=Path, help="experiment folder (cells/, tables, plots, report.md)")
    p.add_argument("--summary-only", action="store_true", help="train nothing; rewrite tables, plots and report")
    p.add_argument("--cells", action="append", metavar="PATTERN",
                   help="train only the cells whose names match this shell pattern (repeatable), e.g. "
                   "'*-fold3*' to run a grid fold by fold; the tables cover every finished cell")
    p.add_argument("--out", type=Path, help="report / compare: the Markdown file to write (report: default "
                   "DIR/report.md; compare: default the console); archive: the folder to copy the records into")
    p.add_argument("--setting", action="append", nargs="+", type=Path, metavar="DIR",
                   help="compare: the folders of one setting (a grid and its ablation on the same data); "
                   "give it once per setting to pool the paired differences over the settings")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted config overrides for every cell, e.g. data.shards=DIR (not the grid's axes); "
                   "or `report DIR`, or `compare DIR DIR ...`, or `archive DIR --out DEST`")
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    if args.overrides and args.overrides[0] == REPORT_ACTION:
        return _report(args, parser)
    if args.overrides and args.overrides[0] == COMPARE_ACTION:
        return _compare(args, parser)
    if args.overrides and args.overrides[0] == ARCHIVE_ACTION:
        return _archive(args, parser)
    if args.cells and args.summary_only:
        parser.error("--cells selects cells to train; --summary-only trains none")
    if args.setting:
        parser.error("--setting belongs to `soft-dist experiment compare --setting DIR DIR [...] ...`")
    if args.out is not None:
        parser.error("--out belongs to `soft-dist experiment report DIR --out FILE.md` (or compare)")
    if args.grid is None or args.run_dir is None:
        parser.error("--grid and --run-dir are required (or: soft-dist experiment report DIR)")

    from soft_dist.experiment.grid import GridError, load_grid
    from soft_dist.experiment.summary import format_table

    command = shlex.join(["soft-dist", "experiment", "--grid", str(args.grid), "--run-dir", str(args.run_dir),
                          *(["--summary-only"] if args.summary_only else []),
                          *[arg for pattern in args.cells or [] for arg in ("--cells", pattern)], *args.overrides])
    try:
        grid = load_grid(args.grid)
        if args.summary_only:
            outcome = _summary_only(grid, args.run_dir, command)
        else:
            from soft_dist.experiment.runner import run_grid

            outcome = run_grid(grid, args.run_dir, args.overrides, command=command, only=args.cells)
    except GridError as err:
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


def _report(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    rest = args.overrides[1:]
    if args.grid is not None or args.summary_only:
        parser.error("`report` reads the grid from DIR/grid.yaml; it takes no --grid or --summary-only")
    if len(rest) > 1 or (rest and args.run_dir is not None) or (not rest and args.run_dir is None):
        parser.error("usage: soft-dist experiment report DIR [--out FILE.md]")
    run_dir = Path(rest[0]) if rest else args.run_dir

    from soft_dist.experiment.grid import GridError
    from soft_dist.experiment.report import ReportError, write_report

    try:
        path = write_report(run_dir, args.out)
    except (GridError, ReportError) as err:
        print(f"soft-dist experiment report: error: {err}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


def _summary_only(grid, run_dir: Path, command: str):
    """Tables, plots (SLS bars included) and the report from the finished cells; outcome.json keeps the
    latest training invocation's record (its command is the one that made the numbers)."""
    from soft_dist.experiment.grid import GridError
    from soft_dist.experiment.runner import GridOutcome, write_tables_plots_report

    run_dir = run_dir.resolve()
    if not (run_dir / "cells").is_dir():
        raise GridError("--run-dir", f"{run_dir} holds no cells/ folder: nothing was trained there (run the grid "
                        "without --summary-only first)")
    outcome = GridOutcome()
    write_tables_plots_report(grid, run_dir, outcome, print, command, record_outcome=False)
    return outcome


def _compare(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    folders = args.overrides[1:]
    usage = ("usage: soft-dist experiment compare DIR DIR [...] [--out FILE.md], or "
             "soft-dist experiment compare --setting DIR DIR [...] --setting DIR DIR [...] [--out FILE.md]")
    if args.grid is not None or args.summary_only or args.run_dir is not None:
        parser.error(usage)
    if args.setting and folders:
        parser.error("compare takes its folders either after `compare` or in --setting groups, not both")
    if not args.setting and len(folders) < 2:
        parser.error(usage)

    from soft_dist.experiment.compare import compare_folders, pool_settings
    from soft_dist.experiment.grid import GridError
    from soft_dist.experiment.report import ReportError

    try:
        text = pool_settings(args.setting) if args.setting else compare_folders(folders)
    except (GridError, ReportError) as err:
        print(f"soft-dist experiment compare: error: {err}", file=sys.stderr)
        return 2
    if args.out is None:
        print(text, end="")
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"comparison: {args.out}")
    return 0


def _archive(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    rest = args.overrides[1:]
    other_options = args.grid is not None or args.summary_only or args.run_dir is not None or args.setting or args.cells
    if other_options or len(rest) != 1 or args.out is None:
        parser.error("usage: soft-dist experiment archive DIR --out DEST")

    from soft_dist.experiment.archive import ArchiveError, archive_run

    try:
        outcome = archive_run(rest[0], args.out)
    except ArchiveError as err:
        print(f"soft-dist experiment archive: error: {err}", file=sys.stderr)
        return 2
    print(f"archived into {args.out}: {len(outcome.copied)} cells copied, {len(outcome.kept)} already there "
          f"(left as they were), {len(outcome.unfinished)} unfinished not copied")
    return 0
