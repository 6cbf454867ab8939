"""Which samples each rank reads in each epoch: one global permutation, cut across ranks, padded.

This is shared by the DALI and the torch loader, so both give the same batches of (label, idx) for the
same (seed, epoch, rank, world_size). Rules:

* Training: every epoch draws a permutation of the whole split from ``(seed, epoch)`` (numpy PCG64, so
  the same on every machine and after a restart). Rank ``r`` of ``W`` takes positions ``r, r+W, r+2W, ...``
  of it, so every sample lands on some rank exactly once, and samples move between ranks from epoch to
  epoch (a global shuffle, not a fixed slice per rank).
* Evaluation: the same cut of the unshuffled split, identical in every epoch.
* The remainder: ranks get ``ceil(N/W)`` or ``floor(N/W)`` samples; every rank yields
  ``ceil(ceil(N/W) / batch_size)`` full batches. The rows past a rank's samples repeat its own samples
  (so they hold real images) and are marked ``valid=False``: nothing is dropped and nothing is counted
  twice when the loss and the metrics skip invalid rows.
* Resuming mid-epoch (``start``): after ``s`` full steps of ``W`` ranks with batch ``B`` the ranks have
  trained exactly the first ``s * B * W`` entries of the epoch's permutation (a checkpoint is only taken
  before the last step, where no rank has reached its padding yet). ``start`` is that count: the rest of
  the permutation is cut across the ranks of the resumed run by the same rule, so over the whole epoch
  every sample is still trained exactly once, with the same or another world size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from integers (e.g. seed, epoch, rank); stable across machines and Python runs."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def batches_per_epoch(num_samples: int, batch_size: int, world_size: int) -> int:
    """The number of batches every rank yields (the same on every rank, as DDP requires)."""
    per_rank = math.ceil(num_samples / world_size)
    return max(1, math.ceil(per_rank / batch_size))


@dataclass(frozen=True)
class EpochPlan:
    """One rank's epoch: ``positions`` into the split's SampleTable and ``valid``, both [num_batches, batch_size]."""

    positions: np.ndarray  # int64
    valid: np.ndarray  # bool

    @property
    def num_batches(self) -> int:
        return self.positions.shape[0]

    @property
    def num_valid(self) -> int:
        return int(self.valid.sum())


def epoch_plan(
    num_samples: int, batch_size: int, *, rank: int, world_size: int, seed: int, epoch: int, shuffle: bool,
    start: int = 0,
) -> EpochPlan:
    """The positions rank ``rank`` reads in epoch ``epoch`` from entry ``start`` of the epoch's order on
    (0: the whole epoch; see the module docstring for the rules)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    if num_samples < 1:
        raise ValueError("the split has no samples")
    if not 0 <= start < num_samples:
        raise ValueError(f"an epoch of {num_samples} samples cannot start at sample {start}")
    order = (
        np.random.Generator(np.random.PCG64(derive_seed(seed, epoch))).permutation(num_samples)
        if shuffle
        else np.arange(num_samples)
    )
    share = order[start:][rank::world_size]
    rows = batches_per_epoch(num_samples - start, batch_size, world_size) * batch_size
    # Padding repeats the rank's share of the whole epoch from its first sample, also after a mid-epoch
    # resume: padding rows are not trained on, but they are in the batch's BatchNorm statistics, so a
    # resumed epoch pads with the images the uninterrupted one had. A rank with no sample at all (N < W)
    # still runs the same number of steps, on padding only.
    pad = order[rank::world_size] if len(order[rank::world_size]) else order[:1]
    positions = np.concatenate([share, pad[np.arange(rows - len(share)) % len(pad)]]).astype(np.int64)
    valid = np.arange(rows) < len(share)
    return EpochPlan(positions.reshape(-1, batch_size), valid.reshape(-1, batch_size))
