"""The collectives the run loop calls, as no-ops in one process (torch.distributed only; no Ray here).

Every rank must call each of them, in the same order: a collective that only some ranks reach blocks
the others for ever."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def broadcast_from_rank0(module: nn.Module, parameters: bool = False) -> None:
    """Copy rank 0's buffers (and parameters when asked) to every rank.

    Used on the student before evaluation and checkpoints: DDP keeps parameters identical, but each
    rank's last forward pass moved its own BatchNorm statistics; after this every rank holds exactly
    the state rank 0 checkpoints, so a restored run continues as the uninterrupted one would."""
    if not is_distributed():
        return
    tensors = list(module.buffers()) + (list(module.parameters()) if parameters else [])
    for t in tensors:
        dist.broadcast(t.data, src=0)


@torch.no_grad()
def all_reduce_sum(counts: np.ndarray, device: torch.device) -> np.ndarray:
    """The element-wise sum over ranks of int64 ``counts`` (any shape; ``counts`` itself when not
    distributed). A tensor collective on ``device`` (NCCL needs the GPU): its size is that of the counts,
    whatever the number of samples behind them."""
    if not is_distributed():
        return counts
    tensor = torch.from_numpy(np.ascontiguousarray(counts, dtype=np.int64)).to(device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().numpy()


def all_gather_objects(obj) -> list:
    """Every rank's ``obj`` (a list of world-size items; [obj] when not distributed)."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object_from_rank0(obj):
    """Rank 0's ``obj`` on every rank (a picklable value; ``obj`` itself when not distributed). Ranks
    other than 0 pass anything (None): only rank 0's value travels."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
