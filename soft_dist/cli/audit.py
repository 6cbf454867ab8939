"""`soft-dist audit`: rank a trained run's training images by how likely their given label is wrong.

    soft-dist audit runs/rafdb-soft --out audit/rafdb-soft
    soft-dist audit runs/rafdb-soft --out audit/rafdb-soft --workers 4 --export-labels audit/relabelled.csv

No retraining: one inference pass of the run's final teacher and student (with its uncertainty head)
over the run's training split. Writes audit.csv (every training image, most suspicious first),
audit.html (contact sheet of the top N), audit.json (estimated noise rate per class and transition
matrix; AUROC / precision@k / recall@2k of every score when the run's noise was injected) and
noise_transition.png. docs/audit.md has the scores and the benchmark against confident learning.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from soft_dist.audit.scores import DEFAULT_SCORE, SCORE_NAMES  # numpy only

FORMATS = ("table", "rafdb", "soft", "paths")  # soft_dist.noise.lists.FILE_FORMATS, without importing it


def register(subparsers) -> None:
    p = subparsers.add_parser("audit", help="rank training images by how likely their label is wrong (no retraining)",
                              description=__doc__.splitlines()[0],
                              epilog="The run must keep its resumable state (train.keep_state, the default): "
                                     "model.pt has neither the head nor both branches.")
    # str, not Path: a run directory may be s3://bucket/prefix.
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `soft-dist train`")
    p.add_argument("--out", type=Path, required=True, help="folder for audit.csv, audit.html, audit.json")
    p.add_argument("--shards", help="shard folder (or s3:// URL) the run trained on (default: the run's data.shards)")
    p.add_argument("--top", type=int, default=100, help="images on the contact sheet (default 100)")
    p.add_argument("--score", choices=SCORE_NAMES,
                   help=f"how samples are ranked (default {DEFAULT_SCORE}, the best measured, docs/audit.md; "
                        "student_confident for a run without a teacher)")
    p.add_argument("--export-labels", type=Path, metavar="FILE",
                   help="write the given labels with the top suggestions applied, as a noise list for noise.file")
    p.add_argument("--export-format", choices=FORMATS, default="table",
                   help="format of --export-labels, as noise.file_format reads it (default table)")
    p.add_argument("--relabel", type=int, metavar="K",
                   help="how many top-ranked samples take their suggested label in --export-labels "
                        "(default: the estimated number of wrong labels)")
    p.add_argument("--workers", type=int, default=1,
                   help="1: score in this process; N > 1: N Ray tasks, each on a contiguous share (default 1)")
    p.add_argument("--address", help="Ray cluster to join for --workers > 1 (default: RAY_ADDRESS, else a new "
                                     "local cluster)")
    p.add_argument("--loader", choices=("dali", "torch"), help="input pipeline (default: the run's data.loader)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from soft_dist.audit.main import audit_run

    if args.top < 0:
        raise SystemExit("soft-dist audit: --top must be >= 0")
    if args.address:
        os.environ["RAY_ADDRESS"] = args.address  # soft_dist.ray_cluster.init_ray joins it
    audit_run(args.run_dir, args.out, shards=args.shards, score=args.score, top=args.top, workers=args.workers,
              export_labels=args.export_labels, export_format=args.export_format, relabel=args.relabel,
              loader=args.loader, batch_size=args.batch_size)
    return 0
