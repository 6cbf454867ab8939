"""`soft-dist bench step`: median time of one training step for plain CE, mean teacher and SOFT on the
same model and the same batch (random tensors: the step, not the input pipeline, is measured)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from soft_dist.config import load_config

if TYPE_CHECKING:
    from soft_dist.train.step import SoftLearner

METHODS = ("ce", "mt", "soft")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-classes", type=int, default=7)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--small-stem", action=argparse.BooleanOptionalAction, default=False,
                        help="3x3 stem without max-pool (default: the standard stem)")
    parser.add_argument("--steps", type=int, default=10, help="training steps per timed repeat")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")


def _learner(method: str, args, device: str) -> SoftLearner:
    # torch and the model are imported here, not at the top, so that `soft-dist --help` stays light.
    import torch

    from soft_dist.method.model import build_student
    from soft_dist.train.step import SoftLearner

    # Stage 2 from the first step so SOFT pays for its uncertainty head, and the ramp is at full weight.
    cfg = load_config(None, [f"method.name={method}", "method.stage1_epochs=0", "method.rampup_epochs=0",
                             f"data.image_size={args.image_size}", f"model.name={args.model}"])
    torch.manual_seed(0)
    student, _ = build_student(args.model, args.num_classes, args.image_size, args.small_stem,
                               cfg.model.pretrained, width=cfg.model.width, uncertainty=cfg.preset.head)
    learner = SoftLearner(cfg, student, device)
    if device == "cuda" and cfg.model.channels_last:
        learner.student.to(memory_format=torch.channels_last)
        if learner.teacher is not None:
            learner.teacher.teacher.to(memory_format=torch.channels_last)
    learner.start_epoch(0)
    return learner


def run(args: argparse.Namespace) -> dict:
    import torch

    from soft_dist.bench.harness import median_time
    from soft_dist.data.batches import TwoViewBatch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    batch = TwoViewBatch(
        view_s=torch.randn(shape, generator=gen).to(device),
        view_t=torch.randn(shape, generator=gen).to(device),
        label=torch.randint(0, args.num_classes, (args.batch_size,), generator=gen).to(device),
        idx=torch.arange(args.batch_size).to(device),
        valid=torch.ones(args.batch_size, dtype=torch.bool).to(device),
    )

    def steps(learner):
        def go():
            for _ in range(args.steps):
                learner.train_step(batch, 10.0)
            if device == "cuda":
                torch.cuda.synchronize()
        return go

    learners = {m: _learner(m, args, device) for m in METHODS}
    # Interleave methods repeat by repeat so a slow spell of the machine hits all three alike.
    per_method: dict[str, list[float]] = {m: [] for m in METHODS}
    for m in METHODS:
        median_time(steps(learners[m]), repeats=1, warmup=1)
    for _ in range(args.repeats):
        for m in METHODS:
            per_method[m].append(median_time(steps(learners[m]), repeats=1, warmup=0)["median_s"])
    import statistics

    out = {
        "config": {"image_size": args.image_size, "batch_size": args.batch_size, "model": args.model,
                   "small_stem": args.small_stem, "device": device, "steps_per_repeat": args.steps,
                   "repeats": args.repeats},
    }
    for m in METHODS:
        ms = 1000.0 * statistics.median(per_method[m]) / args.steps
        out[m] = {"ms_per_step": ms, "images_per_s": args.batch_size * 1000.0 / ms}
    out["ratio_soft_over_ce"] = out["soft"]["ms_per_step"] / out["ce"]["ms_per_step"]
    out["ratio_mt_over_ce"] = out["mt"]["ms_per_step"] / out["ce"]["ms_per_step"]
    return out
