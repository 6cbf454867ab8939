"""Loaders over small arrays held in memory, without shards (unit tests of the training loop): the
two-view :class:`MemoryLoader`, and the digits set as a run's Loaders (:func:`digits_memory_loaders`).

MemoryLoader follows the EpochLoader semantics of the shard loaders: ``len()`` batches per epoch, fixed batch
shape with ``valid`` marking padding, and an order that is a pure function of (seed, epoch). The
augmentation is a random crop from a reflect-padded image plus a horizontal flip, drawn independently
for the two views.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from soft_dist.config import Config
from soft_dist.data.batches import EvalBatch, TwoViewBatch
from soft_dist.data.loader import Loaders
from soft_dist.shard.digits import DIGIT_CLASSES, load_digits_rgb, split_indices

DIGIT_SPLITS = {"train": 0.7, "val": 0.1, "test": 0.2}


def to_normalised_tensor(images: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W] normalised with 0..1-scale mean/std."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


class MemoryLoader:
    """Batches from tensors already in memory.

    images: float32 [N, 3, H, W] (normalised); labels, idx: int64 [N]. ``train=True`` yields
    TwoViewBatch with two augmented views, else EvalBatch in a fixed order."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        idx: torch.Tensor,
        batch_size: int,
        train: bool,
        seed: int,
        flip: bool,
        pad_fraction: float = 0.125,
    ):
        self.images, self.labels, self.idx = images, labels.long(), idx.long()
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.pad = max(1, int(round(images.shape[-1] * pad_fraction)))
        self.flip = flip
        self.num_samples = len(labels)

    world_size = 1

    def __len__(self) -> int:
        return self.steps()

    def steps(self, start: int = 0) -> int:
        """Batches of an epoch that starts at sample ``start`` of its order (see EpochLoader)."""
        return -(-(self.num_samples - start) // self.batch_size)

    def _augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Random crop (from reflect padding) + flip, per sample; x [B, 3, H, W]."""
        b, _, h, w = x.shape
        padded = F.pad(x, (self.pad,) * 4, mode="reflect")
        dy = torch.randint(0, 2 * self.pad + 1, (b,), generator=gen)
        dx = torch.randint(0, 2 * self.pad + 1, (b,), generator=gen)
        out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
        if self.flip:
            flip = torch.rand(b, generator=gen) < 0.5
            out = torch.where(flip.view(b, 1, 1, 1), out.flip(-1), out)
        return out

    def epoch(self, epoch: int, start: int = 0) -> Iterator[TwoViewBatch | EvalBatch]:
        """The epoch's batches from sample ``start`` of its order on (a multiple of the batch size). The
        batches before it are drawn and dropped: one generator draws every batch's augmentation in turn."""
        if start % self.batch_size:
            raise ValueError(f"an in-memory epoch starts at a whole batch, not at sample {start}")
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.num_samples, generator=gen) if self.train else torch.arange(self.num_samples)
        for first in range(0, self.num_samples, self.batch_size):
            rows = order[first : first + self.batch_size]
            valid = torch.ones(self.batch_size, dtype=torch.bool)
            if len(rows) < self.batch_size:  # pad with repeats of the first rows, marked invalid
                valid[len(rows):] = False
                rows = torch.cat([rows, order[: self.batch_size - len(rows)]])
            x, y, i = self.images[rows], self.labels[rows], self.idx[rows]
            if self.train:
                batch = TwoViewBatch(self._augment(x, gen), self._augment(x, gen), y, i, valid)
            else:
                batch = EvalBatch(x, y, i, valid)
            if first >= start:
                yield batch

    def close(self) -> None:
        pass


def digits_memory_loaders(cfg: Config, seed: int = 0) -> tuple[Loaders, int, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(loaders, num_classes, {split: (idx, clean labels)} for train and val) at cfg.data.image_size.

    idx is the position in scikit-learn's digits array, so it is stable across runs."""
    images, labels = load_digits_rgb(cfg.data.image_size)
    x = to_normalised_tensor(images, cfg.data.mean, cfg.data.std)
    y = torch.from_numpy(labels)
    parts = split_indices(labels, DIGIT_SPLITS, seed=seed)

    def loader(split: str, train: bool, batch_size: int) -> MemoryLoader:
        rows = torch.from_numpy(parts[split])
        return MemoryLoader(x[rows], y[rows], rows.clone(), batch_size, train=train, seed=cfg.train.seed,
                            flip=cfg.data.augment.flip)

    bs, ebs = cfg.train.batch_size, cfg.train.eval_batch_size
    loaders = Loaders(
        train=loader("train", True, bs),
        val=loader("val", False, ebs),
        test=loader("test", False, ebs),
        train_eval=loader("train", False, ebs),
    )
    noise_splits = {s: (parts[s], labels[parts[s]]) for s in ("train", "val")}
    return loaders, len(DIGIT_CLASSES), noise_splits
