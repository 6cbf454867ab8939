"""`soft-dist predict`: photos -> one row each (face box, detector probability, class probabilities), in
this process or on Ray Data.

The two runners apply the same two callables (serve.faces.FacePreparer, serve.classifier.FaceClassifier)
to the same batches of columns; on Ray Data they are separate ``map_batches`` stages, each with its own
actor pool, so alignment (MTCNN, CPU heavy) and classification overlap and scale apart. Rows come back in
input order either way.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from soft_dist.serve.classifier import FaceClassifier, ModelSpec
from soft_dist.serve.faces import AlignSettings, FacePreparer

RUNNERS = ("auto", "local", "ray")


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


def choose_runner(runner: str, address: str | None) -> str:
    """"auto" is Ray Data when there is a cluster to run on (``address`` or RAY_ADDRESS), else this process:
    on one 2-core machine Ray Data was slower (0.73x the photos/s of one process, `soft-dist bench predict`,
    400 photos), since one process already uses both cores and each Ray run starts its actors."""
    if runner not in RUNNERS:
        raise ValueError(f"--runner must be one of {RUNNERS}, got {runner!r}")
    if runner != "auto":
        return runner
    return "ray" if address or os.environ.get("RAY_ADDRESS") else "local"


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
    input order: rows carry their position and are put back in order as they stream in (Ray Data is asked
    to keep the blocks' order too, so little waits), and the caller writes each batch as it comes."""
    import ray
    import ray.data

    from soft_dist.ray_cluster import init_ray

    init_ray()
    context = ray.data.DataContext.get_current()
    # soft-dist's one progress bar replaces Ray Data's per-operator bars and start-up notices.
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.execution_options.preserve_order = True
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
    def counted(batches: Iterator[dict]) -> Iterator[dict]:
        for batch in batches:
            progress(len(batch["order"]))
            yield batch

    yield from in_input_order(counted(dataset.iter_batches(batch_size=None, batch_format="numpy")))


def in_input_order(batches: Iterator[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
    """Batches of columns whose ``order`` column holds each row's input position (0, 1, 2, ... each once,
    batches in any order) -> the same rows in input order, without ``order``, each as soon as every row
    before it has come: what is held back is only the rows that arrived ahead of a missing one, never the
    whole result (a million photos' rows would otherwise wait in memory for the last batch)."""
    waiting: list[tuple[int, int, dict]] = []  # heap of (first position, arrival, contiguous run of rows)
    arrivals = itertools.count()
    next_row = 0
    for batch in batches:
        positions = batch["order"]
        sort = np.argsort(positions, kind="stable")
        positions = positions[sort]
        columns = {k: v[sort] for k, v in batch.items() if k != "order"}
        # split into runs of consecutive positions, so that each run can go out as soon as its turn comes
        cuts = np.flatnonzero(np.diff(positions) != 1) + 1
        for lo, hi in zip([0, *cuts], [*cuts, len(positions)]):
            if hi > lo:
                heapq.heappush(waiting, (int(positions[lo]), next(arrivals), {k: v[lo:hi] for k, v in columns.items()}))
        while waiting and waiting[0][0] == next_row:
            _, _, run = heapq.heappop(waiting)
            next_row += len(next(iter(run.values())))
            yield run
    if waiting:
        raise RuntimeError(f"predict: rows from position {waiting[0][0]} came back but row {next_row} never did")
