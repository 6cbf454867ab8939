"""`soft-dist config`: the resolved config of a file or bundled name, and the reference of every field.

Both sub-commands import only the config module (PyYAML), never torch or Ray, so they answer at once."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("config", help="show a resolved config, or the reference of every field",
                              description="Inspect configs without training: `show` prints what a run would "
                              "save as its config.yaml; `docs` prints the Markdown reference (docs/config.md).")
    kinds = p.add_subparsers(dest="config_command", metavar="{show,docs,list}", required=True)
    show = kinds.add_parser("show", help="print the resolved config (every field, defaults included)")
    show.add_argument("config", metavar="NAME|FILE", nargs="?", default=None,
                      help="a YAML file or the name of a bundled config (default: the built-in defaults)")
    show.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. method.tau=0.1")
    show.set_defaults(func=_show)
    docs = kinds.add_parser("docs", help="print the Markdown table of every field (docs/config.md)")
    docs.set_defaults(func=_docs)
    names = kinds.add_parser("list", help="list the bundled configs, grids and sweeps by name")
    names.set_defaults(func=_list)


def _show(args: argparse.Namespace) -> int:
    from soft_dist.config import config_yaml, load_config

    # A first positional with '=' is an override, not a file: `soft-dist config show method.tau=0.1`.
    overrides = list(args.overrides)
    config = args.config
    if config is not None and "=" in config:
        overrides.insert(0, config)
        config = None
    sys.stdout.write(config_yaml(load_config(config, overrides)))
    return 0


def reference_text() -> str:
    """docs/config.md: every run config field, the method presets, and the options of `soft-dist shard`."""
    from soft_dist.config import config_docs, field_rows, fields_table
    from soft_dist.shard.build import ShardConfig, option_flag

    shard_rows = field_rows(ShardConfig, name_of=option_flag, defaults=ShardConfig(layout=None))
    lines = ["## soft-dist shard options", "",
             "`soft-dist shard` takes these flags; they are the fields of `ShardConfig` in `soft_dist/shard/build.py`",
             "(declared the same way, checked by the same code). Writing shards: [docs/sharding.md](sharding.md).", "",
             *fields_table(shard_rows)]
    return config_docs() + "\n" + "\n".join(lines) + "\n"


def _docs(args: argparse.Namespace) -> int:
    sys.stdout.write(reference_text())
    return 0


def _list(args: argparse.Namespace) -> int:
    from soft_dist.config import BUNDLED_CONFIGS, bundled_names

    for folder, what in (("", "configs (--config NAME)"), ("experiments", "grids (--grid NAME)"),
                         ("sweeps", "sweeps (soft-dist tune --config NAME)")):
        print(f"{what}: {', '.join(bundled_names(folder))}")
    print(f"from {BUNDLED_CONFIGS}")
    return 0
