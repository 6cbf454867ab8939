"""Asymmetric noise from data (paper 4.1): train a plain CE model on clean labels, take its confusion
matrix on the validation split, and map each class to the class it is most often mistaken for.

Also holds the helpers that load a finished run's networks from its last checkpoint (used for the
SLS bar charts too)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from soft_dist.config import Config, load_config


def load_branch(run_dir: Path, cfg: Config, branch: str, num_classes: int) -> torch.nn.Module:
    """The ``student`` (without its uncertainty head) or ``teacher`` of a finished run, in eval mode,
    from the newest complete checkpoint (the run must keep its state: train.keep_state)."""
    from soft_dist.method.model import build_student
    from soft_dist.storage import RunStore
    from soft_dist.train.checkpoints import CHECKPOINTS_DIR, latest_state

    state = latest_state(RunStore(run_dir))
    if state is None:
        raise FileNotFoundError(f"{run_dir} has no complete checkpoint under {CHECKPOINTS_DIR}/")
    learner = state["learner"]
    if branch == "teacher":
        if learner.get("teacher") is None:
            raise ValueError(f"{run_dir}: method {cfg.method.name!r} has no teacher")
        state, head = learner["teacher"]["teacher"], False  # the teacher never has the head
    else:
        state, head = learner["student"], cfg.preset.head
    net, _ = build_student(cfg.model.name, num_classes, cfg.data.image_size, cfg.model.small_stem, None,
                           width=cfg.model.width, uncertainty=head)
    net.load_state_dict(state)
    if head:
        net.uncertainty = None  # removed at test time (paper Sec. 3.3)
    return net.eval()


def split_predictions(net: torch.nn.Module, cfg: Config, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(predictions [N], clean labels [N]) of ``net`` on every sample of ``split``."""
    from soft_dist.data.loader import build_eval_loader
    from soft_dist.train.epoch import predict

    loader = build_eval_loader(cfg.data.shards, split, cfg.data, cfg.train.eval_batch_size)
    try:
        preds, labels, _ = predict(net, loader.epoch(0))
    finally:
        loader.close()
    return preds, labels


def derive_class_map(
    base: Path, overrides: list[str], out: Path, log: Callable[[str], None] = print
) -> dict[int, int]:
    """Train plain CE (clean labels, the base config's epochs) into OUT/run once, write
    OUT/confusion.csv ([C, C] validation counts, rows = true class) and OUT/class_map.json; reuse them
    on later invocations."""
    from soft_dist.data.format import load_manifest
    from soft_dist.data.splits import run_splits
    from soft_dist.data.stage import local_shards
    from soft_dist.metrics import confusion_matrix
    from soft_dist.noise.table import class_map_from_confusion
    from soft_dist.train.ray_trainer import run_training

    map_path = out / "class_map.json"
    if map_path.is_file():
        log(f"[experiment] asymmetric class map from {map_path} (derived earlier)")
        return {int(k): int(v) for k, v in json.loads(map_path.read_text())["class_map"].items()}
    cfg = load_config(base, [*overrides, "method.name=ce", "noise.kind=none", "noise.rate=0.0"])
    run = out / "run"
    if run.exists():
        shutil.rmtree(run)  # an interrupted earlier attempt
    log(f"[experiment] asymmetric_from confusion: training plain CE on clean labels ({cfg.train.epochs} epochs)")
    run_training(cfg, run)
    manifest = load_manifest(local_shards(cfg.data.shards, cfg.data.cache_dir, cfg.data.cache_max_gb))
    net = load_branch(run, cfg, "student", manifest.num_classes)
    val_split = run_splits(manifest, cfg.data)["val"]  # a carved split when the config carves
    preds, labels = split_predictions(net, cfg, val_split)
    matrix = confusion_matrix(labels, preds, manifest.num_classes)
    class_map = class_map_from_confusion(matrix)
    np.savetxt(out / "confusion.csv", matrix, fmt="%d", delimiter=",")
    map_path.write_text(json.dumps({
        "class_map": {str(k): v for k, v in class_map.items()},
        "by_name": {manifest.classes[k]: manifest.classes[v] for k, v in class_map.items()},
        "classes": list(manifest.classes),
        "source": f"plain CE, clean labels, {cfg.train.epochs} epochs, validation split ({len(labels)} images)",
        "val_accuracy": float((preds == labels).mean()),
    }, indent=2))
    log(f"[experiment] class map {json.loads(map_path.read_text())['by_name']}")
    return class_map


def class_map_override(class_map: dict[int, int]) -> list[str]:
    """Overrides that give asymmetric cells this map (a YAML flow mapping parsed by parse_override)."""
    body = ", ".join(f"{k}: {v}" for k, v in sorted(class_map.items()))
    return [f"noise.class_map={{{body}}}", "noise.confusion_file=null"]
