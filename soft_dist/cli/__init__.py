"""`soft-dist` command line: parse and dispatch only.

Each sub-command lives in its own module exposing ``register(subparsers)`` (adds its parser, light on
imports) and sets ``func`` on the parsed args; heavy libraries are imported inside the command."""

from __future__ import annotations

import argparse
import importlib
import sys

# sub-command name -> module with register(subparsers), in the order of the pipeline (the order of --help).
COMMAND_MODULES = {
    "shard": "soft_dist.cli.shard",
    "train": "soft_dist.cli.train",
    "tune": "soft_dist.cli.tune",
    "experiment": "soft_dist.cli.experiment",
    "eval": "soft_dist.cli.evaluate",
    "predict": "soft_dist.cli.predict",
    "serve": "soft_dist.cli.serve",
    "export": "soft_dist.cli.export",
    "audit": "soft_dist.cli.audit",
    "noise": "soft_dist.cli.noise",
    "config": "soft_dist.cli.config",
    "bench": "soft_dist.cli.bench",
    "demo": "soft_dist.cli.demo",
}

DESCRIPTION = """Train facial-expression classifiers that resist noisy labels with SOFT (soft label
smoothing in a mean teacher), on Ray Train with DALI input pipelines."""
EPILOG = """typical use:
  soft-dist shard --layout rafdb --root DATA/RAF-DB --out data_shards/rafdb
  soft-dist train --config rafdb --run-dir runs/rafdb-soft data.shards=data_shards/rafdb
  soft-dist eval runs/rafdb-soft --shards data_shards/rafdb --split test
  soft-dist predict runs/rafdb-soft photos/ --out predictions.csv
  soft-dist export runs/rafdb-soft --format all --out exported/rafdb-soft
  soft-dist audit runs/rafdb-soft --out audit/rafdb-soft   (training images whose label is likely wrong)
  soft-dist config show rafdb method.tau=0.1     (what a run would use, without training)
  soft-dist demo                                 (CE vs SOFT on bundled digits, a few minutes on CPU)

`soft-dist COMMAND --help` explains each command; README.md and docs/ have the guides."""


def build_parser() -> argparse.ArgumentParser:
    from soft_dist import __version__

    parser = argparse.ArgumentParser(prog="soft-dist", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"soft-dist {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES.values():
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from soft_dist.config import ConfigError
    from soft_dist.data.format import ManifestError
    from soft_dist.ray_cluster import RayStartError
    from soft_dist.train.errors import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, ManifestError, CheckpointError) as err:
        print(f"soft-dist {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RayStartError as err:  # not the user's input: exit 1, still one line
        print(f"soft-dist {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
