"""`soft-dist export`: a trained model as ONNX and/or TorchScript files with a model card.

    soft-dist export runs/rafdb-soft --format all --out exported/rafdb-soft
    soft-dist export runs/rafdb-soft/model.pt --format onnx --out exported/rafdb-onnx

The files take RGB images in [0, 1] (normalisation is inside) and give logits; MODEL_CARD.md says how
to resize and crop and lists the classes in output order.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from soft_dist.cli.model_arg import add_model_argument

FORMAT_CHOICES = ("onnx", "torchscript", "all")  # soft_dist.serve.export.FORMATS plus "all"


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a trained model as ONNX / TorchScript with a model card",
                              description=__doc__.splitlines()[0],
                              epilog="Writes model.onnx and/or model.torchscript.pt, model_card.json and "
                                     "MODEL_CARD.md into --out.")
    add_model_argument(p, "MODEL")
    p.add_argument("--format", dest="fmt", choices=FORMAT_CHOICES, default="all", help="what to write (default all)")
    p.add_argument("--out", type=Path, required=True, help="folder to write the files into")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from soft_dist.serve.export import FORMATS, export_files
    from soft_dist.serve.model_card import build_card, write_card
    from soft_dist.serve.network import read_model

    model = read_model(args.model)
    formats = list(FORMATS) if args.fmt == "all" else [args.fmt]
    files = export_files(model, formats, args.out)
    json_path, md_path = write_card(build_card(model, files), args.out)
    for f in files:
        print(f"{args.out / f['name']}: {f['format']}, {f['bytes'] / 1e6:.1f} MB, sha256 {f['sha256'][:12]}")
    print(f"{json_path}, {md_path}: model card ({len(model.classes)} classes, branch {model.meta['branch']}, "
          f"epoch {model.meta['epoch']}) from {model.where}")
    return 0
