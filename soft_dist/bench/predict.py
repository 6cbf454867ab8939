"""`soft-dist bench predict`: `soft-dist predict` throughput in photos/s, one process against Ray Data
(alignment and classification as two actor-pool stages), interleaved repeats on the same photos.

Input: real LFW faces from scikit-image, upscaled to ``--source-size`` JPEGs (as `bench shard`). Model:
``--model`` (a model.pt or run folder), else a ResNet-18 with the bundled RAF-DB config's input (7 classes,
``--image-size``, MTCNN alignment to ``--image-size`` px, margin 0.2) and freshly initialised, seeded
weights: what is measured is speed, which does not depend on the weights' values.

Each timed call is a whole predict run writing its CSV, with one MTCNN and one network loaded per call (per
actor on Ray Data), as a user pays per command. The Ray cluster is started once, before the timing:
on a real cluster it already runs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--num-images", type=int, default=400, help="photos per run (default 400)")
    parser.add_argument("--source-size", type=int, default=160, help="side of the input JPEGs (default 160)")
    parser.add_argument("--image-size", type=int, default=112, help="network input of the default model (default 112)")
    parser.add_argument("--model", help="a model.pt or run folder to use instead of the default ResNet-18")
    parser.add_argument("--align-actors", type=int, default=None,
                        help="Ray Data alignment actors (default: cores minus 1, at least 1)")
    parser.add_argument("--batch-size", type=int, default=64, help="faces per forward pass (default 64)")


def write_untrained_model(folder: Path, image_size: int) -> Path:
    """folder/model.pt: a seeded, untrained ResNet-18 (7 RAF-DB classes) with the metadata of a run on
    MTCNN-aligned shards of ``image_size`` px. For timing only."""
    import torch

    from soft_dist.config import load_config
    from soft_dist.method.model import build_student
    from soft_dist.shard.layouts import FER_CLASSES
    from soft_dist.storage import RunStore
    from soft_dist.train.model_file import branch_weights, save_model

    cfg = load_config("rafdb", [f"data.image_size={image_size}"])
    torch.manual_seed(0)
    net, _ = build_student(cfg.model.name, 7, image_size, cfg.model.small_stem, pretrained=None,
                          width=cfg.model.width, uncertainty=False)
    meta = {"classes": list(FER_CLASSES[:7]),  # RAF-DB's classes in the shards' order
            "image_size": image_size, "mean": list(cfg.data.mean), "std": list(cfg.data.std),
            "channel_order": "RGB", "eval_crop_fraction": cfg.data.eval_crop_fraction,
            "alignment": {"method": "mtcnn", "margin": 0.2, "shard_image_size": image_size, "jpeg_quality": 95},
            "architecture": {"name": cfg.model.name, "small_stem": cfg.model.small_stem, "width": cfg.model.width},
            "branch": "untrained (benchmark)", "epoch": 0}
    save_model(RunStore(folder), branch_weights(net), meta)
    return folder / "model.pt"


def run(args) -> dict:
    import os

    from soft_dist.bench.harness import median_times_interleaved
    from soft_dist.bench.shard import make_face_folder
    from soft_dist.ray_cluster import init_ray
    from soft_dist.serve.classifier import load_spec
    from soft_dist.serve.faces import AlignSettings
    from soft_dist.serve.inputs import collect_inputs
    from soft_dist.serve.predict import PredictPlan, predict_local, predict_ray
    from soft_dist.serve.prediction_files import PredictionWriter, rows

    align_actors = args.align_actors or max(1, (os.cpu_count() or 2) - 1)
    with tempfile.TemporaryDirectory(prefix="soft-dist-bench-predict-") as tmp:
        tmp = Path(tmp)
        photos = make_face_folder(tmp / "photos", args.num_images, args.source_size)
        model = args.model or str(write_untrained_model(tmp, args.image_size))
        spec = load_spec(model, "torch")
        plan = PredictPlan(spec, AlignSettings.from_model(spec.alignment, spec.image_size),
                           classify_batch=args.batch_size, align_actors=align_actors, classify_actors=1)
        paths = collect_inputs([str(photos)]).paths
        counts: dict[str, dict] = {}

        def runner(name, predict):
            def once():
                with PredictionWriter(tmp / f"{name}.csv", spec.classes) as writer:
                    for batch in predict(plan, paths, lambda n: None):
                        writer.write(rows(batch, spec.classes))
                counts[name] = writer.counts
            return once

        init_ray()
        timings = median_times_interleaved({"one_process": runner("one_process", predict_local),
                                            "ray_data": runner("ray_data", predict_ray)},
                                           repeats=args.repeats, warmup=1)
    results = {name: {"images_per_s": len(paths) / t["median_s"],
                      "images_per_s_spread": [len(paths) / t["max_s"], len(paths) / t["min_s"]],
                      **t, "faces_found": counts[name].get("ok", 0)}
               for name, t in timings.items()}
    ratio = results["ray_data"]["images_per_s"] / results["one_process"]["images_per_s"]
    return {"num_images": len(paths), "source_size": args.source_size, "image_size": spec.image_size,
            "model": model if args.model else "untrained ResNet-18 (speed only)", "align_actors": align_actors,
            "classify_actors": 1, "results": results, "ray_data_over_one_process": ratio}
