"""The loader interface the training loop uses, and the dispatch on ``data.loader`` (dali | torch).

Framework-neutral: DALI is imported only when a DALI loader is built, so machines without it can still
use ``data.loader: torch``. Semantics shared by both implementations (docs/pipelines.md):

* every batch has exactly ``batch_size`` rows; rows with ``valid=False`` are padding (soft_dist.data.sampler);
* over one epoch the valid rows of all ranks hold every sample of the split exactly once;
* ``epoch(e)`` is a pure function of (seed, e, rank, world_size): the same after a restart;
* ``epoch(e, start)`` resumes epoch ``e`` after the first ``start`` samples of its order (all ranks
  together; soft_dist.data.sampler), with the batches and augmentations the uninterrupted epoch had
  there when the world size is the same; ``steps(start)`` is how many batches that leaves;
* training batches carry two independently augmented views; evaluation batches one deterministic view.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, runtime_checkable

from soft_dist.config import DataConfig
# The batch types live in their own module so that both implementations can use them without importing
# this dispatcher (which imports them).
from soft_dist.data.batches import EvalBatch, TwoViewBatch


@runtime_checkable
class EpochLoader(Protocol):
    num_samples: int  # real (valid) samples this rank sees per epoch

    batch_size: int
    world_size: int

    def __len__(self) -> int:  # batches per epoch, identical on every rank
        ...

    def steps(self, start: int = 0) -> int:  # batches of an epoch resumed at sample ``start``
        ...

    def epoch(self, epoch: int, start: int = 0) -> Iterator[TwoViewBatch | EvalBatch]:
        ...

    def close(self) -> None:
        ...


@dataclass
class Loaders:
    """The epoch loaders of one run (EpochLoader protocol: len(), epoch(e), num_samples, close())."""

    train: object
    val: object
    test: object | None = None
    train_eval: object | None = None  # the training split without augmentation, for Table 2 diagnostics
    shards_dir: str | None = None  # the local shard folder they read (None for in-memory data)

    def close(self) -> None:
        for loader in (self.train, self.val, self.test, self.train_eval):
            if loader is not None:
                loader.close()


def _implementation(data_cfg: DataConfig):
    if data_cfg.loader == "dali":
        from soft_dist.data import dali as impl
    elif data_cfg.loader == "torch":
        from soft_dist.data import torch_loader as impl
    else:
        raise ValueError(f"data.loader must be 'dali' or 'torch', got {data_cfg.loader!r}")
    return impl


def _check_device(device: str) -> None:
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


def build_train_loader(
    shards_dir: str | Path,
    split: str,
    data_cfg: DataConfig,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    seed: int,
    device: str = "cpu",
) -> EpochLoader:
    """Two-view training batches (TwoViewBatch) of ``split``; ``device="cuda"`` decodes on the GPU."""
    _check_device(device)
    return _implementation(data_cfg).TrainLoader(
        shards_dir, split, data_cfg, batch_size, rank=rank, world_size=world_size, seed=seed, device=device
    )


def build_eval_loader(
    shards_dir: str | Path,
    split: str,
    data_cfg: DataConfig,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: str = "cpu",
) -> EpochLoader:
    """Deterministic one-view batches (EvalBatch) of ``split``, in split order, cut across ranks."""
    _check_device(device)
    return _implementation(data_cfg).EvalLoader(
        shards_dir, split, data_cfg, batch_size, rank=rank, world_size=world_size, device=device
    )
