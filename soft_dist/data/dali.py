"""DALI input pipelines: two augmented views per training image, one deterministic view for evaluation.

Data flow (docs/pipelines.md):

    EpochPlan (soft_dist.data.sampler)    -> which split positions this rank reads, batch by batch
    SampleTable (soft_dist.data.tarindex) -> the JPEG bytes of each position (one positioned read) and its pixel size
    view_params.draw_view_params          -> crop box, rotation, colour, flip, erasing of each view (numpy)
    PlanSource -> fn.external_source      -> jpegs, label, idx, valid and the parameters of both views
    fn.decoders.image (cpu | mixed)       -> decoded once, augmented twice (soft_dist.data.dali_augment)
    DALIGenericIterator                   -> torch tensors

Why external_source and not fn.readers.webdataset: the reader can only give each rank a fixed contiguous
slice of the split (shard_id/num_shards), shuffled inside a buffer, whereas the training loop wants one
global permutation per epoch cut across ranks, with padding marked ``valid=False``. The bytes still come
from the webdataset shards, located through their DALI index files. Feeding them and the parameters from
Python costs about a millisecond per batch of 64 against some 75 ms of decoding and augmenting on 2 CPU
threads; ``soft-dist bench pipeline`` reports that cost (``dali.feed_ms_per_batch``).

Determinism: every random parameter of both views is drawn in numpy from (seed, epoch, rank, batch) and
fed with the images; DALI's own RNG is not used. So one pipeline serves every epoch (building one per
epoch cost about a second of warm-up each time), and a restarted job reproduces epoch ``e`` exactly.

CPU pipelines use ``device_id=None`` (DALI's CPU_ONLY_DEVICE_ID fails on machines without CUDA). On GPU
("mixed" decoding) images come out in HWC order and are returned as NCHW views of that memory, i.e. in
channels_last format, without a copy.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator

import numpy as np
import torch
from nvidia.dali import fn, types
from nvidia.dali.pipeline import Pipeline
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from soft_dist.config import DataConfig
from soft_dist.data.dali_augment import eval_view, train_view
from soft_dist.data.batches import EvalBatch, TwoViewBatch
from soft_dist.data.format import SplitSelection
from soft_dist.data.sampler import EpochPlan, batches_per_epoch, derive_seed, epoch_plan
from soft_dist.data.tarindex import SampleTable, load_sample_table
from soft_dist.data.view_params import FIELD_DTYPES, draw_view_params, used_fields

TRAIN_OUTPUTS = ("view_s", "view_t", "label", "idx", "valid")
EVAL_OUTPUTS = ("image", "label", "idx", "valid")
PREFETCH = 2


# ----------------------------------------------------------------------------- pipelines


_DALI_TYPES = {np.int32: types.INT32, np.float32: types.FLOAT}


def _decode(jpegs, device: str):
    # No EXIF rotation: the sharder stores upright images, and the crop boxes are computed from the
    # frame size in the JPEG header (soft_dist.data.jpeg_header), as torchvision's decode_jpeg sees it.
    return fn.decoders.image(
        jpegs, device="mixed" if device == "cuda" else "cpu", output_type=types.RGB, adjust_orientation=False
    )


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
    for training, the fields ``view_params.used_fields(data_cfg.augment)`` of the student's view and then
    of the teacher's view; see PlanSource. Returns TRAIN_OUTPUTS (view_s, view_t: float32 [B, 3, S, S] on
    CPU, [B, S, S, 3] on GPU; label, idx int64 [B, 1]; valid bool [B, 1]) or EVAL_OUTPUTS.
    ``device="cuda"`` decodes with "mixed", so every output is a GPU node."""
    layout = _layout(device)
    fields = used_fields(data_cfg.augment) if train else ()
    dtypes = [types.UINT8, types.INT64, types.INT64, types.BOOL]
    dtypes += [_DALI_TYPES[FIELD_DTYPES[f]] for f in fields] * 2
    jpegs, label, idx, valid, *params = fn.external_source(
        source=source, num_outputs=len(dtypes), batch=True, batch_info=True, dtype=dtypes
    )
    images = _decode(jpegs, device)
    if train:  # one decode, two views with their own parameters
        n = len(fields)
        views = tuple(
            train_view(images, dict(zip(fields, params[v * n : (v + 1) * n])), data_cfg, layout) for v in range(2)
        )
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


class PlanSource:
    """external_source callback over the current epoch's plan: batch ``i`` -> (jpegs, label [B], idx [B],
    valid [B]) plus, for training, the used view_params fields of the student's view and then of the
    teacher's, drawn from a generator seeded with (seed, epoch, rank, first + i), where ``first`` is the
    epoch's step the plan starts at (0, or where a mid-epoch resume picks up, so that the resumed steps
    draw what they would have drawn). Raises StopIteration after the plan's last batch. ``seconds`` adds
    up the time spent in the calls (the Python side of feeding)."""

    def __init__(self, table: SampleTable, data_cfg: DataConfig, *, train: bool, seed: int, rank: int):
        self.table, self.data_cfg, self.train, self.seed, self.rank = table, data_cfg, train, seed, rank
        self.fields = used_fields(data_cfg.augment) if train else ()
        self.epoch, self.plan, self.first = 0, None, 0
        self.seconds, self.calls = 0.0, 0

    def start(self, epoch: int, plan: EpochPlan, first: int = 0) -> None:
        self.epoch, self.plan, self.first = epoch, plan, first

    def __call__(self, info) -> tuple:
        if info.iteration >= self.plan.num_batches:
            raise StopIteration
        began = time.perf_counter()
        positions = self.plan.positions[info.iteration]
        out = (
            [self.table.jpeg(p) for p in positions], self.table.label[positions], self.table.idx[positions],
            self.plan.valid[info.iteration],
        )
        if self.train:
            rng = np.random.Generator(np.random.PCG64(derive_seed(self.seed, self.epoch, self.rank, self.first + info.iteration)))
            image_hw = self.table.image_hw(positions)
            size = self.data_cfg.image_size
            views = [draw_view_params(rng, image_hw, self.data_cfg.augment, size) for _ in range(2)]
            out += tuple(view[f] for view in views for f in self.fields)
        self.seconds += time.perf_counter() - began
        self.calls += 1
        return out


# ----------------------------------------------------------------------------- loaders


def _as_nchw(t: torch.Tensor, device: str) -> torch.Tensor:
    # GPU outputs are [B, H, W, C]; the permuted view is NCHW in channels_last memory format.
    return t.permute(0, 3, 1, 2) if device == "cuda" else t


class _DaliLoader:
    """Shared by TrainLoader and EvalLoader: one pipeline, re-fed with each epoch's plan."""

    train: bool
    outputs: tuple[str, ...]

    def __init__(
        self, shards_dir, split: str | SplitSelection, data_cfg: DataConfig, batch_size: int, *, rank: int,
        world_size: int, seed: int, device: str,
    ):
        self.table = load_sample_table(shards_dir, split)
        self.data_cfg, self.batch_size, self.device = data_cfg, batch_size, device
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.num_samples = len(range(rank, len(self.table), world_size))
        self._len = batches_per_epoch(len(self.table), batch_size, world_size)
        self._source = PlanSource(self.table, data_cfg, train=self.train, seed=seed, rank=rank)
        self._iterator: DALIGenericIterator | None = None
        self._drained = False  # the last epoch ran to its end, so the pipeline holds nothing of it

    def __len__(self) -> int:
        return self._len

    @property
    def feed_ms_per_batch(self) -> float:
        """Mean Python time spent preparing one batch for the pipeline (bytes, parameters), in ms."""
        return 1e3 * self._source.seconds / max(1, self._source.calls)

    def plan(self, epoch: int, start: int = 0) -> EpochPlan:
        return epoch_plan(
            len(self.table), self.batch_size, rank=self.rank, world_size=self.world_size, seed=self.seed,
            epoch=epoch, shuffle=self.train, start=start,
        )

    def steps(self, start: int = 0) -> int:
        """Batches of an epoch that starts at sample ``start`` of its order (see EpochLoader)."""
        return batches_per_epoch(len(self.table) - start, self.batch_size, self.world_size)

    def _batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        # The plan is set before the pipeline prefetches, which happens in the iterator's constructor
        # or reset(), both called from this thread.
        self._source.start(epoch, self.plan(epoch, start), first=start // (self.batch_size * self.world_size))
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

    def epoch(self, epoch: int, start: int = 0) -> Iterator[TwoViewBatch]:
        for b in self._batches(epoch, start):
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
