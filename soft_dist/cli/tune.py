"""`soft-dist tune`: Ray Tune + Optuna search of SOFT's hyper-parameters (tau, epsilon, lambda, or any
config key) around Ray Train, on a local Ray cluster unless RAY_ADDRESS is set."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "tune",
        help="Ray Tune + Optuna sweep of tau, epsilon, lambda (ASHA); writes trials.csv, best.yaml, plots",
        description="Run a sweep file (see configs/sweeps/ and docs/tuning.md). Every trial trains with Ray "
        "Train on the same noise table; `--resume DIR` continues an interrupted sweep without rerunning "
        "finished trials.",
    )
    p.add_argument("--config", type=Path, metavar="NAME|FILE",
                   help="sweep YAML file, or the name of a bundled sweep (soft-dist config list)")
    p.add_argument("--run-dir", type=Path, help="output folder (default: runs/sweep-<sweep file name>)")
    p.add_argument("--resume", type=Path, metavar="DIR", help="continue the sweep in DIR")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides of the base training config, e.g. data.shards=DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from soft_dist.config import ConfigError
    from soft_dist.tune.sweep import resume_sweep, run_sweep
    from soft_dist.tune.sweep_config import load_sweep

    if args.resume:
        if args.config or args.overrides:
            raise ConfigError("--resume", "takes only the sweep directory: its sweep.yaml holds the settings")
        summary = resume_sweep(args.resume)
    else:
        if not args.config:
            raise ConfigError("--config", "give a sweep file (e.g. configs/sweeps/digits_cpu.yaml) or --resume DIR")
        sweep = load_sweep(args.config, args.overrides)  # every check happens here, before Ray starts
        run_dir = args.run_dir or Path("runs") / f"sweep-{args.config.stem}"
        summary = run_sweep(sweep, run_dir)
    print_summary(summary)
    return 0 if summary["complete"] else 3


def print_summary(summary: dict) -> None:
    run_dir = Path(summary["run_dir"])
    print(f"\nsweep: {summary['trials']} trials, {summary['finished']} finished, "
          f"{summary['stopped_early']} stopped early by ASHA, {summary['errors']} errors, "
          f"{summary['seconds']:.0f} s")
    if not summary["complete"]:
        print(f"the sweep was interrupted; continue it with: soft-dist tune --resume {run_dir}")
    if summary.get("best"):
        print("best trial: " + json.dumps(summary["best"]))
        print(f"train it:   soft-dist train --config {run_dir / 'best.yaml'} --run-dir RUN_DIR")
    for path in summary["files"]:
        print(f"  {path}")
