"""`soft-dist predict`: label new photos with a trained model (faces aligned as at shard time).

    soft-dist predict runs/rafdb-soft photos/ --out predictions.csv
    soft-dist predict runs/rafdb-soft 'party/**/*.jpg' one.png --out predictions.jsonl
    soft-dist predict exported/rafdb-soft --backend onnxruntime crops/ --align none --out crops.csv
    soft-dist predict runs/rafdb-soft /data/100k-photos --address auto --align-actors 60 --out big.csv

One row per input photo: path, status (ok, no_face, no_face_centre_crop, unreadable, missing), face box
and detector probability, predicted class and the probability of every class.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from soft_dist.cli.model_arg import add_model_argument
from soft_dist.progress import progress_bar
from soft_dist.serve.faces import DEFAULT_MAX_PIXELS

BACKEND_CHOICES = ("torch", "onnxruntime")  # serve.classifier.BACKENDS
RUNNER_CHOICES = ("auto", "local", "ray")  # serve.predict.RUNNERS


def register(subparsers) -> None:
    p = subparsers.add_parser("predict", help="label photos with a trained model (MTCNN alignment, CSV / JSONL rows)",
                              description=__doc__.splitlines()[0],
                              epilog="Alignment settings (MTCNN or none, crop size, margin, JPEG quality) come "
                                     "from the model's metadata. --runner auto uses Ray Data when there is a "
                                     "cluster (--address or RAY_ADDRESS), else this process.")
    add_model_argument(p, "MODEL")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="photo files, folders (searched recursively for "
                                                              "image files) or glob patterns (quote them)")
    p.add_argument("--out", type=Path, required=True, help="FILE.csv or FILE.jsonl: one row per photo")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="torch",
                   help="torch: MODEL is a model.pt or run folder; onnxruntime: MODEL is a folder written by "
                        "`soft-dist export` (or its model.onnx)")
    p.add_argument("--align", choices=("model", "mtcnn", "none"), default="model",
                   help="model (default): as the training shards were made; none: the photos are already "
                        "aligned face crops (centred square crop only)")
    p.add_argument("--on-no-face", choices=("skip", "crop"), default="skip",
                   help="a photo without a face: skip (default: its row says no_face) or classify its centred "
                        "crop (row status no_face_centre_crop)")
    p.add_argument("--runner", choices=RUNNER_CHOICES, default="auto",
                   help="local: this process; ray: Ray Data stages with actor pools (default auto)")
    p.add_argument("--address", help="Ray cluster to run on (sets RAY_ADDRESS; default: a new local one)")
    p.add_argument("--align-actors", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="Ray Data actors aligning faces, one CPU each (default: this machine's cores minus 1)")
    p.add_argument("--classify-actors", type=int, default=1, help="Ray Data actors classifying (default 1)")
    p.add_argument("--batch-size", type=int, default=64, help="faces per forward pass (default 64)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"photos are decoded to at most this many pixels, JPEGs reduced while decoding, so that a "
                        f"huge photo cannot exhaust memory (default {DEFAULT_MAX_PIXELS:,}; boxes are reported "
                        f"in the photo's own pixels)")
    p.add_argument("--device", default="cpu", help="cpu or cuda, for MTCNN and the network (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _check_positive(args: argparse.Namespace) -> None:
    from soft_dist.config import ConfigError

    for name in ("align_actors", "classify_actors", "batch_size", "max_pixels"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}", f"must be at least 1, got {getattr(args, name)}")


def run(args: argparse.Namespace) -> int:
    import time


    from soft_dist.serve.classifier import load_spec
    from soft_dist.serve.faces import CLASSIFIED, AlignSettings
    from soft_dist.serve.inputs import collect_inputs
    from soft_dist.serve.predict import PredictPlan, choose_runner, predict_local, predict_ray
    from soft_dist.serve.prediction_files import PredictionWriter, output_format, rows

    _check_positive(args)
    output_format(args.out)  # a bad --out fails before the model loads
    spec = load_spec(args.model, args.backend)
    align = AlignSettings.from_model(spec.alignment, spec.image_size, args.align, args.on_no_face, args.max_pixels)
    inputs = collect_inputs(args.inputs)
    if args.address:
        os.environ["RAY_ADDRESS"] = args.address
    runner = choose_runner(args.runner, args.address)
    plan = PredictPlan(spec, align, device=args.device, classify_batch=args.batch_size,
                       align_actors=args.align_actors, classify_actors=args.classify_actors)
    skipped = f"; {inputs.ignored} file(s) without an image suffix in the folders left out" if inputs.ignored else ""
    print(f"predict: {len(inputs.paths)} photos with {spec.location} ({args.backend}), alignment {align.method} "
          f"to {align.size} px, {runner} runner{skipped}")
    started = time.perf_counter()
    bar = progress_bar(len(inputs.paths), "predict", "img", enabled=not args.no_progress)
    run_batches = predict_ray if runner == "ray" else predict_local
    try:
        with PredictionWriter(args.out, spec.classes) as writer:
            for batch in run_batches(plan, inputs.paths, bar.update):
                writer.write(rows(batch, spec.classes))
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    counts = ", ".join(f"{n} {status}" for status, n in sorted(writer.counts.items()))
    print(f"wrote {args.out}: {len(inputs.paths)} rows ({counts}) in {seconds:.1f} s "
          f"({len(inputs.paths) / max(seconds, 1e-9):.1f} img/s)")
    classified = sum(writer.counts.get(status, 0) for status in CLASSIFIED)
    if inputs.paths and classified == 0:
        # A script that checks the exit status must not take a file of errors for predictions.
        print(f"predict: none of the {len(inputs.paths)} photos could be classified ({counts}); see the status "
              f"and error columns of {args.out}", file=sys.stderr)
        return 1
    return 0
