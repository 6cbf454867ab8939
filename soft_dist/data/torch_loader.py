"""The fallback loader (``data.loader: torch``): the same interface and batches as soft_dist.data.dali,
built on a torch DataLoader, torchvision.io JPEG decoding and torchvision.transforms.v2.

It reads the same EpochPlan (soft_dist.data.sampler) through the same SampleTable (random access into
the tar shards), so for a given (seed, epoch, rank, world_size) both loaders yield the same label/idx/valid
batches; only the pixels differ (different random draws and resampling kernels).

A streaming ``webdataset.WebDataset`` is not used for reading: it splits by whole shards across ranks
and shuffles in a buffer, which cannot give the global per-epoch permutation, the equal step counts and
the exactly-once valid rows the training loop relies on.

Determinism: each sample's augmentation seeds torch's RNG from (seed, epoch, rank, row of the epoch)
inside the worker, so the pixels do not depend on which worker handled the row or on the worker count
(rows count from the epoch's first step, also when a mid-epoch resume starts later).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2

from soft_dist.config import DataConfig
from soft_dist.data.batches import EvalBatch, TwoViewBatch
from soft_dist.data.format import SplitSelection
from soft_dist.data.sampler import EpochPlan, batches_per_epoch, derive_seed, epoch_plan
from soft_dist.data.tarindex import SampleTable, load_sample_table
from soft_dist.data.view_params import ERASE_RATIO


def _to_normalised(data_cfg: DataConfig) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=data_cfg.mean, std=data_cfg.std)]


def train_transform(data_cfg: DataConfig) -> v2.Compose:
    """One augmented view, uint8 [3, h, w] -> float32 [3, S, S]; the same steps and config keys as
    soft_dist.data.dali_augment.train_view."""
    a, size = data_cfg.augment, data_cfg.image_size
    steps: list = [
        v2.RandomResizedCrop(size, scale=(a.scale_min, a.scale_max), ratio=(a.ratio_min, a.ratio_max), antialias=True)
    ]
    if a.rotate_degrees > 0:
        interp = v2.InterpolationMode.NEAREST if a.rotate_interpolation == "nearest" else v2.InterpolationMode.BILINEAR
        steps.append(v2.RandomRotation(a.rotate_degrees, interpolation=interp, fill=0))
    if a.color_jitter > 0:
        steps.append(v2.ColorJitter(brightness=a.color_jitter, contrast=a.color_jitter, saturation=a.color_jitter))
    if a.flip:
        steps.append(v2.RandomHorizontalFlip())
    steps += _to_normalised(data_cfg)
    if a.erasing_prob > 0:
        steps.append(
            v2.RandomErasing(p=a.erasing_prob, scale=(a.erasing_scale_min, a.erasing_scale_max), ratio=ERASE_RATIO, value=0)
        )
    return v2.Compose(steps)


def eval_geometry(image_size: int, eval_crop_fraction: float) -> list:
    """The evaluation view's resampling, uint8 [3, h, w] -> uint8 [3, S, S]: resize the shorter side to
    S / eval_crop_fraction, centre crop S. Shared with `soft-dist predict`, so photos get the same pixels."""
    return [v2.Resize(round(image_size / eval_crop_fraction), antialias=True), v2.CenterCrop(image_size)]


def eval_transform(data_cfg: DataConfig) -> v2.Compose:
    """Resize the shorter side to image_size / eval_crop_fraction, centre crop image_size, normalise."""
    return v2.Compose([*eval_geometry(data_cfg.image_size, data_cfg.eval_crop_fraction), *_to_normalised(data_cfg)])


class _PlanDataset(Dataset):
    """Item ``(epoch, row, position, valid)`` -> dict of one row: views (or image), label, idx, valid."""

    def __init__(self, table: SampleTable, data_cfg: DataConfig, train: bool, seed: int, rank: int):
        self.table, self.train, self.seed, self.rank = table, train, seed, rank
        self.transform = train_transform(data_cfg) if train else eval_transform(data_cfg)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, item: tuple[int, int, int, bool]) -> dict[str, torch.Tensor]:
        epoch, row, position, valid = item
        data = torch.from_numpy(self.table.jpeg(position).copy())  # copy: the bytes are read-only
        image = decode_jpeg(data, mode=ImageReadMode.RGB)
        out = {
            "label": torch.tensor(self.table.label[position]),
            "idx": torch.tensor(self.table.idx[position]),
            "valid": torch.tensor(valid),
        }
        if self.train:
            torch.manual_seed(derive_seed(self.seed, epoch, self.rank, row))
            out["view_s"] = self.transform(image)  # the two calls draw different parameters
            out["view_t"] = self.transform(image)
        else:
            out["image"] = self.transform(image)
        return out


class _PlanBatches(Sampler):
    """Batch sampler over the current epoch's plan: lists of (epoch, row, position, valid)."""

    def __init__(self, num_batches: int):
        self.num_batches = num_batches
        self.epoch = 0
        self.first_row = 0  # the epoch's row the plan starts at (after a mid-epoch resume)
        self.plan: EpochPlan | None = None

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        plan, batch_size = self.plan, self.plan.positions.shape[1]
        for b in range(plan.num_batches):
            yield [
                (self.epoch, self.first_row + b * batch_size + i, int(plan.positions[b, i]), bool(plan.valid[b, i]))
                for i in range(batch_size)
            ]


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # the workers are the parallelism; intra-op threads would oversubscribe


class _TorchLoader:
    train: bool

    def __init__(
        self, shards_dir, split: str | SplitSelection, data_cfg: DataConfig, batch_size: int, *, rank: int,
        world_size: int, seed: int, device: str,
    ):
        self.table = load_sample_table(shards_dir, split)
        self.batch_size, self.device = batch_size, device
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.num_samples = len(range(rank, len(self.table), world_size))
        self._sampler = _PlanBatches(batches_per_epoch(len(self.table), batch_size, world_size))
        self._loader = DataLoader(
            _PlanDataset(self.table, data_cfg, self.train, seed, rank), batch_sampler=self._sampler,
            num_workers=data_cfg.num_threads, persistent_workers=True, worker_init_fn=_worker_init,
            pin_memory=device == "cuda", multiprocessing_context="fork" if _can_fork() else None,
        )

    def __len__(self) -> int:
        return self._sampler.num_batches

    def plan(self, epoch: int, start: int = 0) -> EpochPlan:
        return epoch_plan(
            len(self.table), self.batch_size, rank=self.rank, world_size=self.world_size, seed=self.seed,
            epoch=epoch, shuffle=self.train, start=start,
        )

    def steps(self, start: int = 0) -> int:
        """Batches of an epoch that starts at sample ``start`` of its order (see EpochLoader)."""
        return batches_per_epoch(len(self.table) - start, self.batch_size, self.world_size)

    def _batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        self._sampler.epoch, self._sampler.plan = epoch, self.plan(epoch, start)
        self._sampler.first_row = start // self.world_size  # this rank's rows before ``start``
        for batch in self._loader:
            if self.device == "cuda":
                batch = {k: v.to("cuda", non_blocking=True) for k, v in batch.items()}
                for k in ("view_s", "view_t", "image"):
                    if k in batch:
                        batch[k] = batch[k].contiguous(memory_format=torch.channels_last)
            yield batch

    def close(self) -> None:
        # Ends the persistent worker processes.
        self._loader = None
        self.table.close()


def _can_fork() -> bool:
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


class TrainLoader(_TorchLoader):
    """EpochLoader of TwoViewBatch (see soft_dist.data.loader)."""

    train = True

    def epoch(self, epoch: int, start: int = 0) -> Iterator[TwoViewBatch]:
        for b in self._batches(epoch, start):
            yield TwoViewBatch(view_s=b["view_s"], view_t=b["view_t"], label=b["label"], idx=b["idx"], valid=b["valid"])


class EvalLoader(_TorchLoader):
    """EpochLoader of EvalBatch (see soft_dist.data.loader); the same batches every epoch."""

    train = False

    def __init__(self, shards_dir, split, data_cfg, batch_size, *, rank, world_size, device):
        super().__init__(
            shards_dir, split, data_cfg, batch_size, rank=rank, world_size=world_size, seed=0, device=device
        )

    def epoch(self, epoch: int = 0) -> Iterator[EvalBatch]:
        for b in self._batches(epoch):
            yield EvalBatch(image=b["image"], label=b["label"], idx=b["idx"], valid=b["valid"])
