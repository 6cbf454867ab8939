"""`soft-dist train`: SOFT with Ray Train (a local Ray cluster unless RAY_ADDRESS is set)."""

from __future__ import annotations

import argparse
from pathlib import Path

from soft_dist.progress import counted
from soft_dist.train.protocols import EPOCH_RULE_WORDS


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train with Ray Train (DDP student, synchronised EMA teachers, checkpoints, resume)",
        description="Train SOFT (or an ablation) on shards. Without RAY_ADDRESS a local Ray cluster is "
        "started on this machine's cores; with it, the job runs on that cluster.",
    )
    p.add_argument("--config", type=Path, metavar="NAME|FILE",
                   help="YAML config file, or the name of a bundled one (soft-dist config list); "
                   "defaults apply when omitted")
    # str, not Path: a run directory may be s3://bucket/prefix (pathlib would turn it into s3:/bucket).
    p.add_argument("--run-dir", help="output folder or s3://bucket/prefix (default: runs/<config name>-<method>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its newest complete checkpoint")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. method.tau=0.2")
    p.set_defaults(func=run)


# What a first `soft-dist train` with nothing to train on is shown (the demo's shards and config).
FIRST_COMMAND = ("soft-dist shard --layout digits --size 32 --out data_shards/digits32 && soft-dist train "
                 "--config digits_cpu --run-dir runs/first data.shards=data_shards/digits32")


def run(args: argparse.Namespace) -> int:
    from soft_dist.config import ConfigError, bundled_names, load_config
    from soft_dist.train.ray_trainer import resume_training, run_training

    if not args.resume and args.config is None and not any(o.startswith("data.shards=") for o in args.overrides):
        raise ConfigError("--config", f"nothing to train on: give a config (bundled: {', '.join(bundled_names())}) "
                          f"and data.shards=DIR, e.g. `{FIRST_COMMAND}`")
    if args.resume:
        results = resume_training(args.resume, args.overrides)
        run_dir = args.resume
    else:
        cfg = load_config(args.config, args.overrides)
        stem = args.config.stem if args.config else "default"
        run_dir = args.run_dir or str(Path("runs") / f"{stem}-{cfg.method.name}")
        results = run_training(cfg, run_dir)
    print_summary(results, run_dir)
    return 0


def print_summary(results: dict, run_dir: Path | str) -> None:
    model = results["model"]
    print(f"model.pt: epoch {model['epoch']} ({EPOCH_RULE_WORDS[model.get('rule', 'best')]}, train.model_epoch), "
          f"{model['branch']} branch "
          f"(validation {model['metric']} {model['score']:.4f})")
    for split in ("val", "test"):
        row = model.get(split)
        if row:
            print(f"  {split:<5} accuracy {row['accuracy']:.4f}   mean class accuracy {row['mean_class_accuracy']:.4f}")
    throughput = results["throughput"]
    print(f"{throughput['images_per_s_total']:.0f} img/s over {counted(throughput['workers'], 'worker')}; "
          f"run directory: {run_dir}")
