"""DALI input pipelines: two augmented views per training image, one deterministic view for evaluation.

Data flow per epoch (docs/pipelines.md):

    EpochPlan (soft_dist.data.sampler)  -> which split positions this rank reads, batch by batch
    SampleTable (soft_dist.data.tarindex) -> the JPEG bytes of each position, read through mmap
    fn.external_source                  -> jpegs, label, idx, valid
    fn.decoders.image (cpu | mixed)      -> decoded once, then augmented twice with independent RNG draws
    DALIGenericIterator                 -> torch tensors

The JPEG bytes are fed by ``external_source`` rather than read by ``fn.readers.webdataset``: the reader can
only give each rank a fixed contiguous slice of the split (shard_id/num_shards), shuffled inside a buffer,
whereas the training loop wants one global permutation per epoch cut across ranks, with padding marked
``valid=False``. Feeding bytes from Python costs a few microseconds per sample against milliseconds of
decoding (the benchmark ``soft-dist bench pipeline`` measures both variants); ``make_reader_pipeline``
keeps the reader variant for that comparison.

Determinism: the augmentation RNG lives in the pipeline, so a new pipeline is built for every epoch with
a seed derived from (seed, epoch, rank); nothing carries over between epochs, so a restarted job
reproduces epoch ``e`` exactly.

CPU pipelines use ``device_id=None`` (DALI's CPU_ONLY_DEVICE_ID fails on machines without CUDA). On GPU
("mixed" decoding) the images come out in HWC order and are returned as NCHW views of that memory, i.e.
in channels_last format, without a copy.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from nvidia.dali import fn, types
from nvidia.dali import math as dmath
from nvidia.dali.pipeline import Pipeline
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from soft_dist.config import AugmentConfig, DataConfig
from soft_dist.data.loader import ERASE_RATIO, EvalBatch, TwoViewBatch
from soft_dist.data.sampler import EpochPlan, batches_per_epoch, derive_seed, epoch_plan
from soft_dist.data.tarindex import SampleTable, load_sample_table

TRAIN_OUTPUTS = ("view_s", "view_t", "label", "idx", "valid")
EVAL_OUTPUTS = ("image", "label", "idx", "valid")
PREFETCH = 2


# ----------------------------------------------------------------------------- augmentation graph


def _uniform(lo: float, hi: float):
    return fn.random.uniform(range=[float(lo), float(hi)])


def _random_erase(images, a: AugmentConfig):
    """With probability ``a.erasing_prob`` set one random box (area fraction in [erasing_scale_min,
    erasing_scale_max]) of each normalised image to 0, i.e. to the mean colour."""
    apply = fn.random.coin_flip(probability=a.erasing_prob)
    area = _uniform(a.erasing_scale_min, a.erasing_scale_max)
    ratio = dmath.exp(_uniform(math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])))
    # A box of zero size leaves the image unchanged: that is how "not this time" is expressed per sample.
    h = dmath.min(dmath.sqrt(area * ratio), 1.0) * apply
    w = dmath.min(dmath.sqrt(area / ratio), 1.0) * apply
    anchor = fn.stack(_uniform(0.0, 1.0) * (1.0 - h), _uniform(0.0, 1.0) * (1.0 - w))
    return fn.erase(
        images, anchor=anchor, shape=fn.stack(h, w), axis_names="HW",
        normalized_anchor=True, normalized_shape=True, fill_value=0.0,
    )


def _normalize(images, data_cfg: DataConfig, layout: str, mirror=0, crop=None):
    """uint8 HWC -> float32 in ``layout``, (x/255 - mean) / std."""
    kwargs = {"crop": crop} if crop else {}
    return fn.crop_mirror_normalize(
        images, dtype=types.FLOAT, output_layout=layout, mirror=mirror,
        mean=[255.0 * m for m in data_cfg.mean], std=[255.0 * s for s in data_cfg.std], **kwargs,
    )


def train_view(images, data_cfg: DataConfig, layout: str):
    """One augmented view of decoded uint8 HWC images -> float32 [3, S, S] (``layout`` CHW) or [S, S, 3].

    Every random operator below draws its own parameters, so two calls on the same images give two
    independent views. Order: random resized crop, rotation, colour jitter, flip + normalise, erasing."""
    a = data_cfg.augment
    size = [data_cfg.image_size, data_cfg.image_size]
    out = fn.random_resized_crop(
        images, size=size, random_area=[a.scale_min, a.scale_max],
        random_aspect_ratio=[a.ratio_min, a.ratio_max],
    )
    if a.rotate_degrees > 0:
        interp = types.INTERP_NN if a.rotate_interpolation == "nearest" else types.INTERP_LINEAR
        out = fn.rotate(
            out, angle=_uniform(-a.rotate_degrees, a.rotate_degrees), keep_size=True, fill_value=0, interp_type=interp
        )
    if a.color_jitter > 0:
        j = a.color_jitter
        out = fn.color_twist(
            out, brightness=_uniform(1 - j, 1 + j), contrast=_uniform(1 - j, 1 + j),
            saturation=_uniform(1 - j, 1 + j),
        )
    mirror = fn.random.coin_flip(probability=0.5) if a.flip else 0
    out = _normalize(out, data_cfg, layout, mirror=mirror)
    if a.erasing_prob > 0:
        out = _random_erase(out, a)
    return out


def eval_view(images, data_cfg: DataConfig, layout: str):
    """Deterministic view: resize the shorter side to image_size / eval_crop_fraction, centre crop."""
    size = data_cfg.image_size
    out = fn.resize(images, resize_shorter=size / data_cfg.eval_crop_fraction)
    return _normalize(out, data_cfg, layout, crop=(size, size))


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
    """The DataNodes of the loader's graph over ``source``, an external_source callback
    ``f(batch_info) -> (jpegs, label, idx, valid)``; call inside a ``with pipeline:`` block.

    Returns TRAIN_OUTPUTS (view_s, view_t: float [B, 3, S, S] on CPU, [B, S, S, 3] on GPU; label, idx int64
    [B, 1]; valid bool [B, 1]) or EVAL_OUTPUTS. ``device="cuda"`` decodes with "mixed", so every output is
    a GPU node."""
    layout = _layout(device)
    jpegs, label, idx, valid = fn.external_source(
        source=source, num_outputs=4, batch=True, batch_info=True,
        dtype=[types.UINT8, types.INT64, types.INT64, types.BOOL],
    )
    images = _decode(jpegs, device)
    if train:  # one decode, two views: each train_view call draws its own random parameters
        views = (train_view(images, data_cfg, layout), train_view(images, data_cfg, layout))
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
    """The same two-view graph fed by ``fn.readers.webdataset`` (index files used when present).

    Kept for the benchmark: the reader splits the split into fixed contiguous rank slices and shuffles
    within a buffer, so it cannot give the global per-epoch permutation or the valid mask of the loaders."""
    from soft_dist.data.format import load_manifest

    manifest = load_manifest(shards_dir)
    index_paths = manifest.index_paths(split)
    pipe = _new_pipeline(batch_size, data_cfg, device, seed, None)
    with pipe:
        jpegs, label, idx = fn.readers.webdataset(
            paths=[str(p) for p in manifest.shard_paths(split)],
            index_paths=[str(p) for p in index_paths] if index_paths else None,
            ext=["jpg", "cls", "idx"], dtypes=[types.UINT8, types.INT64, types.INT64],
            missing_component_behavior="error", shard_id=rank, num_shards=world_size,
            random_shuffle=True, pad_last_batch=True, name="reader",
        )
        images = _decode(jpegs, device)
        layout = _layout(device)
        pipe.set_outputs(train_view(images, data_cfg, layout), train_view(images, data_cfg, layout), label, idx)
    return pipe


class PlanSource:
    """external_source callback: batch ``i`` of an EpochPlan as (jpegs, label, idx, valid) lists/arrays."""

    def __init__(self, table: SampleTable, plan: EpochPlan):
        self.table = table
        self.plan = plan

    def __call__(self, info) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        if info.iteration >= self.plan.num_batches:
            raise StopIteration
        positions = self.plan.positions[info.iteration]
        jpegs = [self.table.jpeg(p) for p in positions]
        return jpegs, self.table.label[positions], self.table.idx[positions], self.plan.valid[info.iteration]


# ----------------------------------------------------------------------------- loaders


def _as_nchw(t: torch.Tensor, device: str) -> torch.Tensor:
    # GPU outputs are [B, H, W, C]; the permuted view is NCHW in channels_last memory format.
    return t.permute(0, 3, 1, 2) if device == "cuda" else t


class _DaliLoader:
    """Shared by TrainLoader and EvalLoader: one pipeline per epoch over that epoch's plan."""

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

    def __len__(self) -> int:
        return self._len

    def plan(self, epoch: int) -> EpochPlan:
        return epoch_plan(
            len(self.table), self.batch_size, rank=self.rank, world_size=self.world_size, seed=self.seed,
            epoch=epoch, shuffle=self.train,
        )

    def _pipeline(self, epoch: int) -> Pipeline:
        return make_pipeline(
            PlanSource(self.table, self.plan(epoch)), self.batch_size, self.data_cfg, train=self.train,
            device=self.device, seed=derive_seed(self.seed, epoch, self.rank),
        )

    def _batches(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        pipe = self._pipeline(epoch)
        iterator = DALIGenericIterator([pipe], list(self.outputs), auto_reset=False)
        try:
            for out in iterator:
                yield out[0]
        finally:
            del iterator, pipe  # frees DALI's buffers (and GPU memory) before the next epoch's pipeline

    def close(self) -> None:
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
