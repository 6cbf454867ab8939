"""Score a model.pt on one split of a shard folder, in this process or cut across Ray workers: accuracy, mean class accuracy,
per-class precision / recall / F1 and the confusion matrix, all in the MODEL's class order.

Classes are matched by name: shards that list the model's classes in another order are remapped (their
label i is the model's class ``model_classes.index(shard_classes[i])``); a different set of names is an
error. Images go through the training's evaluation view (the model's image_size, eval_crop_fraction,
mean and std) with the project's eval loader (data.loader dali or torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from soft_dist.config import DataConfig
from soft_dist.data.format import MANIFEST_NAME, Manifest, ManifestError
from soft_dist.metrics import confusion_matrix, per_class_scores, report_of_confusion
from soft_dist.progress import progress_bar
from soft_dist.serve.network import LoadedModel


class ClassMismatchError(ManifestError):
    """The model and the shards do not name the same classes; the message names both files."""


def class_map(model: LoadedModel, manifest: Manifest) -> np.ndarray:
    """[C] int64: shard label -> model class index, matched by name. ClassMismatchError when the
    two files do not hold the same set of names."""
    model_classes, shard_classes = model.classes, list(manifest.classes)
    missing = [c for c in model_classes if c not in shard_classes]
    extra = [c for c in shard_classes if c not in model_classes]
    if missing or extra or len(set(shard_classes)) != len(shard_classes):
        parts = [f"the model's classes {model_classes} ({model.where})",
                 f"the shards' classes {shard_classes} ({manifest.root / MANIFEST_NAME})"]
        if missing:
            parts.append(f"missing from the shards: {missing}")
        if extra:
            parts.append(f"not known to the model: {extra}")
        raise ClassMismatchError("classes do not match by name: " + "; ".join(parts))
    return np.array([model_classes.index(c) for c in shard_classes], dtype=np.int64)


def eval_view(meta: dict, loader: str, num_threads: int = 2) -> DataConfig:
    """The data settings of the training's evaluation view, from model.pt's metadata."""
    return DataConfig(image_size=int(meta["image_size"]), mean=list(meta["mean"]), std=list(meta["std"]),
                      eval_crop_fraction=float(meta["eval_crop_fraction"]), loader=loader, num_threads=num_threads)


def scores(targets: np.ndarray, preds: np.ndarray, classes: list[str]) -> tuple[dict, np.ndarray]:
    """Metrics of integer targets / predictions [N] in ``classes`` order -> (JSON-ready dict, confusion [C, C])."""
    num_classes = len(classes)
    cm = confusion_matrix(targets, preds, num_classes)
    per_class = per_class_scores(cm)
    rows = [{"class": name, **{k: (int(v[i]) if k == "support" else float(v[i])) for k, v in per_class.items()}}
            for i, name in enumerate(classes)]
    report = {
        **report_of_confusion(cm),  # num_samples, accuracy, mean_class_accuracy
        "macro_f1": float(per_class["f1"].mean()),
        "per_class": rows,
        "confusion_matrix": {"classes": list(classes), "rows": "true class", "columns": "predicted class",
                             "counts": cm.tolist()},
    }
    return report, cm


def predict_split(model: LoadedModel, shards: str | Path, split: str, data_cfg: DataConfig, batch_size: int,
                  device: str, rank: int = 0, world_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(predictions in the model's class order, shard labels) [N] over the samples of ``split`` that the
    eval loader gives ``rank`` of ``world_size`` (all of them for one). ``shards``: a local folder, or a
    URL staged into this node's cache."""
    import torch

    from soft_dist.data.loader import build_eval_loader
    from soft_dist.data.stage import local_shards
    from soft_dist.serve.network import build_network
    from soft_dist.train.epoch import predict

    net = build_network(model).to(device)
    folder = local_shards(str(shards), data_cfg.cache_dir, data_cfg.cache_max_gb)
    loader = build_eval_loader(folder, split, data_cfg, batch_size, rank=rank, world_size=world_size,
                               device=torch.device(device).type)
    try:
        preds, labels, _ = predict(net, loader.epoch(0), device)
    finally:
        loader.close()
    return preds, labels


def _worker_part(model: LoadedModel, shards: str, split: str, data_cfg: DataConfig, batch_size: int, device: str,
                 rank: int, world_size: int) -> tuple[np.ndarray, np.ndarray]:
    """One Ray worker's share: the ranks' shares are disjoint and together cover the split exactly once
    (the eval loader pads to equal batches and marks the padding invalid), so the pooled predictions give
    the numbers of one process."""
    import torch

    torch.set_num_threads(max(1, data_cfg.num_threads))
    return predict_split(model, shards, split, data_cfg, batch_size, device, rank, world_size)


def predict_split_ray(model: LoadedModel, shards: str, split: str, data_cfg: DataConfig, batch_size: int,
                      device: str, workers: int, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """:func:`predict_split` cut across ``workers`` Ray tasks (the cluster RAY_ADDRESS names, or a new local
    one). The model travels through the object store, so workers on other nodes need no copy of model.pt;
    each worker reads the shards itself (a URL is staged on its node)."""
    import ray

    from soft_dist.ray_cluster import gather, init_ray

    init_ray()
    gpus = 1 if device.startswith("cuda") else 0
    task = ray.remote(num_cpus=data_cfg.num_threads, num_gpus=gpus)(_worker_part)
    model_ref = ray.put(model)
    refs = [task.remote(model_ref, str(shards), split, data_cfg, batch_size, device, rank, workers)
            for rank in range(workers)]
    with progress_bar(workers, f"eval {split}", "worker", enabled=progress) as bar:
        parts = gather(refs, bar.update)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@dataclass(frozen=True)
class Evaluation:
    """What `soft-dist eval` reports: the JSON record and the confusion matrix [C, C] it holds."""

    report: dict
    confusion: np.ndarray


def evaluate(model: LoadedModel, manifest: Manifest, split: str, loader: str, batch_size: int = 256,
             device: str = "cpu", num_threads: int = 2, workers: int = 1, shards: str | None = None,
             progress: bool = True) -> Evaluation:
    """Score ``model`` on ``split`` of the shards of ``manifest`` (read from its local folder, or by each
    Ray worker from ``shards`` when given: the URL it was staged from). ``workers`` > 1: Ray tasks."""
    manifest.split(split)  # ManifestError naming the manifest when the split is not there
    mapping = class_map(model, manifest)
    view = eval_view(model.meta, loader, num_threads)
    if workers > 1:
        preds, labels = predict_split_ray(model, shards or str(manifest.root), split, view, batch_size, device,
                                          workers, progress)
    else:
        preds, labels = predict_split(model, manifest.root, split, view, batch_size, device)
    report, cm = scores(mapping[labels], preds, model.classes)
    meta = model.meta
    warnings = []
    model_align = (meta.get("alignment") or {}).get("method")
    shard_align = manifest.raw.get("alignment", {}).get("method", "none")
    if model_align is not None and model_align != shard_align:
        warnings.append(f"the model was trained on faces aligned with {model_align!r}, these shards use "
                        f"{shard_align!r}: scores may suffer from the difference, not from the model")
    header = {
        "model": {"file": model.where, "sha256": model.sha256, "branch": meta["branch"], "epoch": meta["epoch"],
                  "classes": model.classes},
        "shards": {"folder": str(manifest.root), "dataset": manifest.dataset, "split": split,
                   "classes": list(manifest.classes),
                   "remapped": bool((mapping != np.arange(len(mapping))).any())},
        "view": {"image_size": int(meta["image_size"]), "eval_crop_fraction": float(meta["eval_crop_fraction"]),
                 "mean": list(meta["mean"]), "std": list(meta["std"]), "loader": loader},
        "workers": workers,
        "warnings": warnings,
    }
    return Evaluation({**header, **report}, cm)
