"""`soft-dist eval`: score a trained model on one split of a shard folder (here, or on Ray workers).

    soft-dist eval runs/rafdb-soft --shards data_shards/rafdb --split test --out eval/rafdb-test.json
    soft-dist eval runs/rafdb-soft/model.pt --shards data_shards/ferplus --split test --loader torch
    soft-dist eval runs/affectnet-soft --shards s3://bucket/affectnet --split train --workers 8

Classes are matched by name (another order is remapped; another set of names is an error). Writes the
JSON record and, beside it, the confusion matrix as FILE_confusion.csv and FILE_confusion.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from soft_dist.cli.model_arg import add_model_argument


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="score a trained model on a shard split (accuracy, per class, confusion)",
                              description=__doc__.splitlines()[0],
                              epilog="The images go through the training's evaluation view (image size, crop, "
                                     "mean/std from model.pt). --workers N cuts the split across N Ray tasks.")
    add_model_argument(p, "MODEL_OR_RUN")
    p.add_argument("--shards", required=True, help="shard folder (or s3:// URL, staged to the local cache) "
                                                   "written by `soft-dist shard`")
    p.add_argument("--split", default="test", help="the shards' split to score: test, val or train (default test)")
    p.add_argument("--branch", default="chosen", choices=("chosen",),
                   help="model.pt holds only the branch chosen on validation (the default and only choice)")
    p.add_argument("--out", type=Path, help="the JSON record to write (default eval_SPLIT.json here)")
    p.add_argument("--loader", choices=("dali", "torch"),
                   help="input pipeline (default: the one the model was trained with)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when there is a GPU)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    p.add_argument("--threads", type=int, default=2, help="decoding threads / workers of the loader (default 2)")
    p.add_argument("--workers", type=int, default=1,
                   help="1 (default): this process; N > 1: N Ray tasks (each --threads CPUs) on the cluster "
                        "RAY_ADDRESS names or a new local one, for large splits; same numbers as one process")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (Ray workers)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    from soft_dist.config import ConfigError, DataConfig
    from soft_dist.data.format import load_manifest
    from soft_dist.data.stage import local_shards
    from soft_dist.serve.confusion_files import plot_confusion, write_confusion_csv
    from soft_dist.serve.evaluate import evaluate
    from soft_dist.serve.network import read_model

    model = read_model(args.model)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    loader = args.loader or model.meta.get("config", {}).get("data", {}).get("loader", "torch")
    cache = DataConfig()  # the default node-local cache for shards given as a URL
    manifest = load_manifest(local_shards(args.shards, cache.cache_dir, cache.cache_max_gb))
    if args.workers < 1:
        raise ConfigError("--workers", f"must be at least 1, got {args.workers}")
    result = evaluate(model, manifest, args.split, loader, batch_size=args.batch_size, device=device,
                      num_threads=args.threads, workers=args.workers, shards=args.shards,
                      progress=not args.no_progress)
    out = args.out or Path(f"eval_{args.split}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.with_suffix("")
    csv_path = write_confusion_csv(result.confusion, model.classes, Path(f"{stem}_confusion.csv"))
    meta = model.meta
    png_path = plot_confusion(result.confusion, model.classes, Path(f"{stem}_confusion.png"),
                              f"{meta.get('method', 'model')} ({meta.get('branch')}, epoch {meta.get('epoch')}) on "
                              f"{manifest.dataset} {args.split}: accuracy {result.report['accuracy']:.3f}")
    report = {**result.report, "files": {"confusion_csv": csv_path.name, "confusion_png": png_path.name}}
    out.write_text(json.dumps(report, indent=2) + "\n")
    for warning in report["warnings"]:
        print(f"soft-dist eval: warning: {warning}")
    print(f"{model.where} on {manifest.dataset} {args.split} ({report['num_samples']} images): accuracy "
          f"{report['accuracy']:.4f}, mean class accuracy {report['mean_class_accuracy']:.4f}, macro F1 "
          f"{report['macro_f1']:.4f}" + (" (classes remapped by name)" if report["shards"]["remapped"] else ""))
    print(f"wrote {out}, {csv_path}, {png_path}")
    return 0
