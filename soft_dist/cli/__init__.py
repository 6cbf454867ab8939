"""`soft-dist` command line: parse and dispatch only.

Each sub-command lives in its own module exposing ``register(subparsers)`` (adds its parser, light on
imports) and sets ``func`` on the parsed args; heavy libraries are imported inside the command."""

from __future__ import annotations

import argparse
import importlib
import sys

# sub-command name -> module with register(subparsers)
COMMAND_MODULES = {
    "demo": "soft_dist.cli.demo",
    "train": "soft_dist.cli.train",
    "bench": "soft_dist.cli.bench",
    "shard": "soft_dist.cli.shard",
    "tune": "soft_dist.cli.tune",
    "experiment": "soft_dist.cli.experiment",
    "noise": "soft_dist.cli.noise",
    "config": "soft_dist.cli.config",
}


def build_parser() -> argparse.ArgumentParser:
    from soft_dist import __version__

    parser = argparse.ArgumentParser(prog="soft-dist", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"soft-dist {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES.values():
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from soft_dist.config import ConfigError
    from soft_dist.data.format import ManifestError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, ManifestError) as err:
        print(f"soft-dist {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
