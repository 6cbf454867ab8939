"""DALI input pipelines: two augmented views per training image, one deterministic view for evaluation.

Data flow (docs/pipelines.md):

    EpochPlan (soft_dist.data.sampler)    -> which split positions this rank reads, batch by batch
    SampleTable (soft_dist.data.tarindex) -> the JPEG bytes of each position, read through mmap
    PlanSource -> fn.external_source      -> jpegs, label, idx, valid, and uniform draws for each view
    fn.decoders.image (cpu | mixed)       -> decoded once, augmented twice (soft_dist.data.dali_augment)
    DALIGenericIterator                   -> torch tensors

Why external_source and not fn.readers.webdataset: the reader can only give each rank a fixed contiguous
slice of the split (shard_id/num_shards), shuffled inside a buffer, whereas the training loop wants one
global permutation per epoch cut across ranks, with padding marked ``valid=False``. Feeding the bytes
from Python costs microseconds per sample against milliseconds of decoding; ``soft-dist bench pipeline``
times the reader variant (:func:`make_reader_pipeline`) beside the loader to keep that claim checked.

Determinism: the random parameters of both views are numbers drawn in Python from
(seed, epoch, rank, batch) and fed with the images; DALI's own RNG is not used. So one pipeline serves
every epoch (building one per epoch cost about a second of warm-up each time), and a restarted job
reproduces epoch ``e`` exactly.

CPU pipelines use ``device_id=None`` (DALI's CPU_ONLY_DEVICE_ID fails on machines without CUDA). On GPU
("mixed" decoding) images come out in HWC order and are returned as NCHW views of that memory, i.e. in
channels_last format, without a copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from nvidia.dali import fn, types
from nvidia.dali.pipeline import Pipeline
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from soft_dist.config import DataConfig
from soft_dist.data.dali_augment import DRAWS_PER_VIEW, Draws, eval_view, train_view
from soft_dist.data.loader import EvalBatch, TwoViewBatch
from soft_dist.data.sampler import EpochPlan, batches_per_epoch, derive_seed, epoch_plan
from soft_dist.data.tarindex import SampleTable, load_sample_table

TRAIN_OUTPUTS = ("view_s", "view_t", "label", "idx", "valid")
EVAL_OUTPUTS = ("image", "label", "idx", "valid")
PREFETCH = 2


# ----------------------------------------------------------------------------- pipelines


def _decode(jpegs, device: str):
    return fn.decoders.image(jpegs, device="mixed" if device == "cuda" else "cpu", output_type=types.RGB)


def _layout(device: str) -> str:
    # HWC on GPU, returned to torch as an NCHW view with channels_last strides.
    return "HWC" if device == "cuda" else "CHW"


def _new_pipeline(batch_size: int, data_cfg: DataConfig, device: str, seed: int, device_id: int | None) -> Pipeline:
    if device == "cuda" and device_id is None:
        device_id = torch.cuda.current_device()
    return Pipeline(
        batch_size=batch_size, num_threads=data_cfg.num_threads, device_id=device_id, seed=seed,
        prefetch_queue_depth=PREFETCH,
    )


def graph(source: Callable, data_cfg: DataConfig, *, train: bool, device: str = "cpu") -> tuple:
    """The DataNodes of the loader's graph; call inside a ``with pipeline:`` block.

    ``source`` is an external_source callback ``f(batch_info)`` returning (jpegs, label, idx, valid) and,
    for training, the draws of the two views (float32 [B, DRAWS_PER_VIEW] each); see PlanSource.
    Returns TRAIN_OUTPUTS (view_s, view_t: float32 [B, 3, S, S] on CPU, [B, S, S, 3] on GPU; label, idx
    int64 [B, 1]; valid bool [B, 1]) or EVAL_OUTPUTS. ``device="cuda"`` decodes with "mixed", so every
    output is a GPU node."""
    layout = _layout(device)
    dtypes = [types.UINT8, types.INT64, types.INT64, types.BOOL] + [types.FLOAT] * (2 if train else 0)
    jpegs, label, idx, valid, *draws = fn.external_source(
        source=source, num_outputs=len(dtypes), batch=True, batch_info=True, dtype=dtypes
    )
    images = _decode(jpegs, device)
    if train:  # one decode, two views with separate draws
        shape = fn.peek_image_shape(jpegs)
        views = tuple(train_view(images, shape, data_cfg, layout, Draws(d)) for d in draws)
    else:
        views = (eval_view(images, data_cfg, layout),)
    meta = (label, idx, valid)
    if device == "cuda":
        meta = tuple(m.gpu() for m in meta)
    return (*views, *meta)


def make_pipeline(
    source: Callable, batch_size: int, data_cfg: DataConfig, *, train: bool, device: str = "cpu", seed: int = 0,
    device_id: int | None = None,
) -> Pipeline:
    """The unbuilt pipeline of :func:`graph`. ``device_id`` defaults to torch's current GPU for "cuda" and
    is None (no GPU) for "cpu". Building a "mixed" pipeline needs a GPU; constructing it does not."""
    pipe = _new_pipeline(batch_size, data_cfg, device, seed, device_id)
    with pipe:
        pipe.set_outputs(*graph(source, data_cfg, train=train, device=device))
    return pipe


def make_reader_pipeline(
    shards_dir: str | Path, split: str, batch_size: int, data_cfg: DataConfig, *, rank: int = 0,
    world_size: int = 1, device: str = "cpu", seed: int = 0,
) -> Pipeline:
    """The same two-view graph fed by ``fn.readers.webdataset`` (index files used when present), with
    DALI's RNG; outputs view_s, view_t, label, idx. Kept for the benchmark: the reader cuts the split into
    fixed contiguous rank slices and shuffles within a buffer, so it cannot give the loaders' global
    per-epoch permutation or their valid mask."""
    from soft_dist.data.format import load_manifest

    manifest = load_manifest(shards_dir)
    index_paths = manifest.index_paths(split)
    layout = _layout(device)
    pipe = _new_pipeline(batch_size, data_cfg, device, seed, None)
    with pipe:
        jpegs, label, idx = fn.readers.webdataset(
            paths=[str(p) for p in manifest.shard_paths(split)],
            index_paths=[str(p) for p in index_paths] if index_paths else None,
            ext=["jpg", "cls", "idx"], dtypes=[types.UINT8, types.INT64, types.INT64],
            missing_component_behavior="error", shard_id=rank, num_shards=world_size,
            random_shuffle=True, pad_last_batch=True, name="reader",
        )
        images, shape = _decode(jpegs, device), fn.peek_image_shape(jpegs)
        views = [train_view(images, shape, data_cfg, layout, Draws()) for _ in range(2)]
        pipe.set_outputs(*views, label, idx)
    return pipe


class PlanSource:
    """external_source callback over the current epoch's plan: batch ``i`` -> (jpegs, label [B], idx [B],
    valid [B]) plus, for training, two float32 [B, DRAWS_PER_VIEW] arrays of U[0, 1) draws seeded from
    (seed, epoch, rank, i). Raises StopIteration after the plan's last batch."""

    def __init__(self, table: SampleTable, *, train: bool, seed: int, rank: int):
        self.table, self.train, self.seed, self.rank = table, train, seed, rank
        self.epoch, self.plan = 0, None

    def start(self, epoch: int, plan: EpochPlan) -> None:
        self.epoch, self.plan = epoch, plan

    def __call__(self, info) -> tuple:
        if info.iteration >= self.plan.num_batches:
            raise StopIteration
        positions = self.plan.positions[info.iteration]
        out = (
            [self.table.jpeg(p) for p in positions], self.table.label[positions], self.table.idx[positions],
            self.plan.valid[info.iteration],
        )
        if not self.train:
            return out
        rng = np.random.Generator(np.random.PCG64(derive_seed(self.seed, self.epoch, self.rank, info.iteration)))
        draws = rng.random((2, len(positions), DRAWS_PER_VIEW), dtype=np.float32)
        return (*out, draws[0], draws[1])


# ----------------------------------------------------------------------------- loaders


def _as_nchw(t: torch.Tensor, device: str) -> torch.Tensor:
    # GPU outputs are [B, H, W, C]; the permuted view is NCHW in channels_last memory format.
    return t.permute(0, 3, 1, 2) if device == "cuda" else t


class _DaliLoader:
    """Shared by TrainLoader and EvalLoader: one pipeline, re-fed with each epoch's plan."""

    train: bool
    outputs: tuple[str, ...]

    def __init__(
        self, shards_dir, split: str, data_cfg: DataConfig, batch_size: int, *, rank: int, world_size: int,
        seed: int, device: str,
    ):
        self.table = load_sample_table(shards_dir, split)
        self.data_cfg, self.batch_size, self.device = data_cfg, batch_size, device
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.num_samples = len(range(rank, len(self.table), world_size))
        self._len = batches_per_epoch(len(self.table), batch_size, world_size)
        self._source = PlanSource(self.table, train=self.train, seed=seed, rank=rank)
        self._iterator: DALIGenericIterator | None = None
        self._drained = False  # the last epoch ran to its end, so the pipeline holds nothing of it

    def __len__(self) -> int:
        return self._len

    def plan(self, epoch: int) -> EpochPlan:
        return epoch_plan(
            len(self.table), self.batch_size, rank=self.rank, world_size=self.world_size, seed=self.seed,
            epoch=epoch, shuffle=self.train,
        )

    def _batches(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        # The plan is set before the pipeline prefetches, which happens in the iterator's constructor
        # or reset(), both called from this thread.
        self._source.start(epoch, self.plan(epoch))
        if self._iterator is not None and self._drained:
            self._iterator.reset()
        else:  # first epoch, or the last one was abandoned half-way: its prefetched batches are stale
            self._release()
            pipe = make_pipeline(
                self._source, self.batch_size, self.data_cfg, train=self.train, device=self.device,
                seed=derive_seed(self.seed, self.rank),
            )
            self._iterator = DALIGenericIterator([pipe], list(self.outputs), auto_reset=False)
        self._drained = False
        for out in self._iterator:
            yield out[0]
        self._drained = True

    def _release(self) -> None:
        self._iterator = None  # frees the pipeline and its buffers (GPU memory included)

    def close(self) -> None:
        self._release()
        self.table.close()


class TrainLoader(_DaliLoader):
    """EpochLoader of TwoViewBatch (see soft_dist.data.loader)."""

    train = True
    outputs = TRAIN_OUTPUTS

    def epoch(self, epoch: int) -> Iterator[TwoViewBatch]:
        for b in self._batches(epoch):
            yield TwoViewBatch(
                view_s=_as_nchw(b["view_s"], self.device), view_t=_as_nchw(b["view_t"], self.device),
                label=b["label"].view(-1), idx=b["idx"].view(-1), valid=b["valid"].view(-1),
            )


class EvalLoader(_DaliLoader):
    """EpochLoader of EvalBatch (see soft_dist.data.loader); the same batches every epoch."""

    train = False
    outputs = EVAL_OUTPUTS

    def __init__(self, shards_dir, split, data_cfg, batch_size, *, rank, world_size, device):
        super().__init__(
            shards_dir, split, data_cfg, batch_size, rank=rank, world_size=world_size, seed=0, device=device
        )

    def epoch(self, epoch: int = 0) -> Iterator[EvalBatch]:
        for b in self._batches(epoch):
            yield EvalBatch(
                image=_as_nchw(b["image"], self.device), label=b["label"].view(-1), idx=b["idx"].view(-1),
                valid=b["valid"].view(-1),
            )
