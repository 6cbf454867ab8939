"""`soft-dist predict`: photos -> one row each (face box, detector probability, class probabilities), in
this process or on Ray Data.

The two runners apply the same two callables (serve.faces.FacePreparer, serve.classifier.FaceClassifier)
to the same batches of columns; on Ray Data they are separate ``map_batches`` stages, each with its own
actor pool, so alignment (MTCNN, CPU heavy) and classification overlap and scale apart. Rows come back in
input order either way.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from soft_dist.serve.classifier import FaceClassifier, ModelSpec
from soft_dist.serve.faces import AlignSettings, FacePreparer

RUNNERS = ("auto", "local", "ray")
AUTO_RAY_FROM = 2000  # --runner auto uses Ray Data from this many photos (starting Ray costs ~10 s)


@dataclass(frozen=True)
class PredictPlan:
    """Everything both runners need. ``align_batch``: photos per MTCNN call and per stage-1 batch;
    ``classify_batch``: faces per forward pass; ``align_actors`` / ``classify_actors``: Ray Data pool sizes."""

    spec: ModelSpec
    align: AlignSettings
    device: str = "cpu"
    align_batch: int = 16
    classify_batch: int = 64
    align_actors: int = 1
    classify_actors: int = 1


def choose_runner(runner: str, num_paths: int, address: str | None) -> str:
    if runner not in RUNNERS:
        raise ValueError(f"--runner must be one of {RUNNERS}, got {runner!r}")
    if runner != "auto":
        return runner
    return "ray" if address or num_paths >= AUTO_RAY_FROM else "local"


def _chunks(paths: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(paths), size):
        yield paths[start : start + size]


def predict_local(plan: PredictPlan, paths: list[str], progress: Callable[[int], None]) -> Iterator[dict]:
    """Batches of result columns (serve.classifier) in input order, computed in this process."""
    prepare = FacePreparer(plan.align, device=plan.device, detector_batch=plan.align_batch)
    classify = FaceClassifier(plan.spec, device=plan.device)
    for chunk in _chunks(paths, plan.classify_batch):
        prepared = [prepare({"path": np.asarray(part, dtype=object)}) for part in _chunks(chunk, plan.align_batch)]
        batch = {k: np.concatenate([p[k] for p in prepared]) for k in prepared[0]}
        yield classify(batch)
        progress(len(chunk))


def _stage(base: type, **settings) -> type:
    """A Ray Data actor class for ``base`` with ``settings`` bound to it: one torch thread per actor (each
    asks for one CPU). The settings travel inside the pickled class rather than as constructor arguments,
    which Ray keeps in the object store and warns about for restartable actors."""

    class Stage(base):
        def __init__(self):
            super().__init__(**settings, torch_threads=1)

    Stage.__name__ = Stage.__qualname__ = f"{base.__name__}Stage"
    return Stage


def _stages(dataset, plan: PredictPlan, gpu: float, remote_args: dict):
    """``dataset`` of {order, path} rows -> result rows: alignment and classification as two map_batches
    stages, each with its own fixed-size actor pool of one-CPU actors."""
    import ray.data

    return (
        dataset
        .map_batches(_stage(FacePreparer, settings=plan.align, device=plan.device, detector_batch=plan.align_batch),
                     batch_size=plan.align_batch, batch_format="numpy", num_cpus=1, num_gpus=gpu,
                     compute=ray.data.ActorPoolStrategy(size=plan.align_actors), **remote_args)
        .map_batches(_stage(FaceClassifier, spec=plan.spec, device=plan.device),
                     batch_size=plan.classify_batch, batch_format="numpy", num_cpus=1, num_gpus=gpu,
                     compute=ray.data.ActorPoolStrategy(size=plan.classify_actors), **remote_args)
    )


def predict_ray(plan: PredictPlan, paths: list[str], progress: Callable[[int], None]) -> Iterator[dict]:
    """Batches of result columns from Ray Data (the cluster RAY_ADDRESS names, or a new local one), in
    input order: rows carry their position and are put back in order here."""
    import ray
    import ray.data

    from soft_dist.ray_cluster import init_ray

    init_ray()
    context = ray.data.DataContext.get_current()
    # soft-dist's one progress bar replaces Ray Data's per-operator bars and start-up notices.
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    for name in ("ray.data._internal.progress", "ray.data._internal.execution.streaming_executor"):
        logging.getLogger(name).setLevel(logging.ERROR)  # "progress bars disabled", "execution finished"
    # On a GPU node the actors of both stages share the GPU(s) instead of each waiting for a whole one.
    gpu = 1 / (plan.align_actors + plan.classify_actors) if plan.device.startswith("cuda") else 0
    # Ray Data restarts dead actors by default, and Ray 2.60's driver then logs a false alarm at error level
    # for every actor pool ("constructor arguments in the object store", ray-project/ray#57733: Ray Data's
    # own arguments). On a cluster the restarts are worth that line (a lost node does not end the run); on
    # the local cluster of one machine they are not, so actors there are not restarted.
    # Ray 2.60 has no named parameter for it and deprecates the keyword (for 2.64): the pin keeps it working.
    restarts = {} if os.environ.get("RAY_ADDRESS") else {"max_restarts": 0}
    items = [{"order": i, "path": p} for i, p in enumerate(paths)]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        blocks = max(1, min(len(items) // plan.align_batch, 4096))
        dataset = _stages(ray.data.from_items(items, override_num_blocks=blocks), plan, gpu, restarts)
    parts = []
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        parts.append(batch)
        progress(len(batch["order"]))
    if not parts:
        return
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(merged.pop("order"), kind="stable")
    yield {k: v[order] for k, v in merged.items()}
