"""`soft-dist shard`: a dataset layout -> aligned WebDataset shards + manifest (docs/sharding.md).

    soft-dist shard --layout rafdb --root ~/data/RAF-DB --out data_shards/rafdb
    soft-dist shard --verify data_shards/rafdb
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

def register(subparsers) -> None:
    from soft_dist.shard.build import ShardConfig, option_flag

    p = subparsers.add_parser("shard", help="turn a dataset into aligned WebDataset shards (or --verify them)",
                              description=__doc__.splitlines()[0])
    p.add_argument("--verify", metavar="OUT", help="re-read every shard in OUT and check it against the manifest")
    p.add_argument("--decode", action="store_true", help="with --verify: fully decode every JPEG")
    # Every other flag comes from ShardConfig's declarations: one place for its default, allowed values
    # and meaning. Values are checked by ShardConfig.validate, which names the flag.
    hints = typing.get_type_hints(ShardConfig)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(ShardConfig):
        if "doc" not in f.metadata:
            continue
        group = f.metadata["group"]
        g = p if group == "input" else groups.setdefault(group, p.add_argument_group(group))
        default = f.default
        help_text = f.metadata["doc"] + ("" if default in (None, "") else f" (default {default})")
        kwargs = {"dest": f.name, "default": None if f.name == "classes" else default, "help": help_text}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        value_type = next((a for a in (*typing.get_args(hints[f.name]), hints[f.name]) if a in (int, float)), None)
        if value_type is not None:  # numbers parse as their declared type; the rest stay strings
            kwargs["type"] = value_type
        g.add_argument(option_flag(f.name), **kwargs)
    execution = groups["execution"]
    execution.add_argument("--ray", dest="backend", action="store_const", const="ray", help="same as --backend ray")
    execution.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from soft_dist.shard.layouts import LayoutError

    try:
        if args.verify:
            return _verify(args)
        return _build(args)
    except (LayoutError, ValueError) as err:
        print(f"soft-dist shard: error: {err}", file=sys.stderr)
        return 2


def _build(args: argparse.Namespace) -> int:
    from soft_dist.shard.build import ShardConfig, build_shards

    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(ShardConfig) if hasattr(args, f.name)}
    if options["classes"]:
        options["classes"] = [c.strip() for c in options["classes"].split(",")]
    config = ShardConfig(**options)
    m = build_shards(config)
    out = config.out or f"data_shards/{config.layout}"
    a = m["alignment"]
    print(f"soft-dist shard: {m['dataset']} -> {out}")
    for name, split in m["splits"].items():
        print(f"  {name:<5} {split['num_samples']:>8} samples in {len(split['shards'])} shards")
    print(f"  alignment {a['method']}: faces {a['faces_found']}, centred-crop fallbacks {a['fallbacks']}, "
          f"skipped (no face) {a['skipped_no_face']}, unreadable {a['failures']}")
    print(f"  input problems (missing files, unknown labels, bad rows): {m['input_problems']['count']}")
    print(f"  {m['build']['shards_kept']} shards kept from an earlier run, {m['build']['shards_written']} written "
          f"in {m['build']['seconds']:.1f} s; details in {out}/manifest.json")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from soft_dist.shard.verify import verify_shards

    report = verify_shards(args.verify, decode=args.decode)
    if report["ok"]:
        print(f"soft-dist shard --verify: OK: {report['num_samples']} samples in {report['num_shards']} shards "
              f"match {args.verify}/manifest.json")
        return 0
    print(f"soft-dist shard --verify: {len(report['errors'])} problem(s) in {args.verify}:", file=sys.stderr)
    for line in report["errors"]:
        print(f"  {line}", file=sys.stderr)
    return 1
