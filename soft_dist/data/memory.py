"""An in-memory two-view source for small arrays (the digits demo and unit tests of the loop).

It follows the EpochLoader semantics of the shard loaders: ``len()`` batches per epoch, fixed batch
shape with ``valid`` marking padding, and an order that is a pure function of (seed, epoch). The
augmentation is a random crop from a reflect-padded image plus a horizontal flip, drawn independently
for the two views.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from soft_dist.data.batches import EvalBatch, TwoViewBatch


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

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

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

    def epoch(self, epoch: int) -> Iterator[TwoViewBatch | EvalBatch]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.num_samples, generator=gen) if self.train else torch.arange(self.num_samples)
        for start in range(0, self.num_samples, self.batch_size):
            rows = order[start : start + self.batch_size]
            valid = torch.ones(self.batch_size, dtype=torch.bool)
            if len(rows) < self.batch_size:  # pad with repeats of the first rows, marked invalid
                valid[len(rows):] = False
                rows = torch.cat([rows, order[: self.batch_size - len(rows)]])
            x, y, i = self.images[rows], self.labels[rows], self.idx[rows]
            if self.train:
                yield TwoViewBatch(self._augment(x, gen), self._augment(x, gen), y, i, valid)
            else:
                yield EvalBatch(x, y, i, valid)

    def close(self) -> None:
        pass
