"""`soft-dist noise export`: a run's noise table as a published-style noise list (docs/experiments.md).

    soft-dist noise export runs/rafdb-soft --format rafdb --out noise30.txt
    soft-dist noise export s3://bucket/runs/x --format paths --out x_noise.txt

The list reads back (noise.kind=file, noise.file_format=FORMAT, the same shards and data config) to the
same noisy labels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

FORMATS = ("table", "rafdb", "soft", "paths")  # soft_dist.noise.lists.FILE_FORMATS, without importing it


def register(subparsers) -> None:
    p = subparsers.add_parser("noise", help="noise lists: export a run's noise table as a list",
                              description=__doc__.splitlines()[0])
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    e = actions.add_parser("export", help="write RUN_DIR/noise_table.csv as a list (rafdb, soft, paths, table)",
                           description="Write a run's noise table as a noise list. The run's config.yaml "
                           "(data.shards) finds the shards whose samples' source names the list uses.")
    # str, not Path: a run directory may be s3://bucket/prefix (pathlib would turn it into s3:/bucket).
    e.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (local folder or s3://bucket/prefix)")
    e.add_argument("--format", dest="file_format", required=True, choices=FORMATS,
                   help="rafdb: `train_00001.jpg 5`, RAF-DB's 1..7, training images; soft: `name label` for "
                        "train and test images in the dataset's own numbering; paths: `source-path label`, "
                        "0-based shard order; table: the noise table's CSV")
    e.add_argument("--out", type=Path, required=True, help="the list file to write")
    e.add_argument("--shards", help="the shard folder or URL, when the run's data.shards does not reach it "
                                    "from here (e.g. a relative path from another working directory)")
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from soft_dist.config import ConfigError, config_from_yaml
    from soft_dist.noise.lists import NoiseListError, list_text, read_sample_index
    from soft_dist.run_files import CONFIG_FILE
    from soft_dist.run_inputs import missing_run_input, read_noise_table
    from soft_dist.storage import RunStore

    store = RunStore(args.run_dir)
    missing = missing_run_input(store)
    if missing:
        raise ConfigError("RUN_DIR", f"{store.location} is not a run directory (no {missing})")
    cfg = config_from_yaml(store.read_text(CONFIG_FILE), store.path(CONFIG_FILE))
    table = read_noise_table(store)
    if args.file_format == "table":
        text = table.to_csv()  # the table itself: no shards needed
    else:
        from soft_dist.data.format import load_manifest
        from soft_dist.data.splits import run_splits
        from soft_dist.data.stage import local_shards

        shards = args.shards or cfg.data.shards
        if not shards:
            raise ConfigError("data.shards", f"{store.path(CONFIG_FILE)} names no shards; pass --shards")
        manifest = load_manifest(local_shards(shards, cfg.data.cache_dir, cfg.data.cache_max_gb))
        try:
            text = list_text(table, read_sample_index(manifest, run_splits(manifest, cfg.data)), args.file_format)
        except NoiseListError as err:
            print(f"soft-dist noise export: error: {err}", file=sys.stderr)
            return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    rows = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    if args.file_format == "table":
        rows -= 1  # the idx,clean,noisy header
    print(f"{args.out}: {rows} rows ({args.file_format}) from {store.path('noise_table.csv')}, "
          f"{int(table.flipped.sum())} of {len(table.idx)} labels noisy")
    return 0
