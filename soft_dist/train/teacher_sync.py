"""Keeping EMA teachers identical on every rank (torch.distributed only; no Ray here).

Parameters stay identical by construction: every rank applies the same EMA to a student whose
gradients DDP has all-reduced. What drifts are the teacher's BatchNorm statistics under the ``own``
buffer policy, because each rank's teacher sees different images; they are averaged across ranks
with one flattened all-reduce. A periodic check compares per-tensor checksums across ranks and
names the first tensor that differs.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
from torch import nn

from soft_dist.train.collectives import broadcast_from_rank0, is_distributed


class TeacherSyncError(RuntimeError):
    pass


class TeacherSync:
    """All-reduce of the teacher's float buffers every ``buffer_every`` steps and a cross-rank
    checksum check every ``check_every`` steps (0 disables either). Counts checks and the time spent."""

    def __init__(self, teacher: nn.Module, buffer_every: int = 1, check_every: int = 50):
        self.teacher = teacher
        self.buffer_every = buffer_every
        self.check_every = check_every
        self.float_buffers = [b for b in teacher.buffers() if b.is_floating_point()]
        self.checks = 0
        self.mismatches = 0
        self.seconds = 0.0
        self.buffer_syncs = 0

    @torch.no_grad()
    def sync_buffers(self) -> None:
        """Replace each float buffer by its mean over ranks (one collective for all of them)."""
        if not is_distributed() or not self.float_buffers:
            return
        flat = torch._utils._flatten_dense_tensors(self.float_buffers)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(dist.get_world_size())
        for buf, synced in zip(self.float_buffers, torch._utils._unflatten_dense_tensors(flat, self.float_buffers)):
            buf.copy_(synced)
        self.buffer_syncs += 1

    def check(self) -> None:
        """Compare checksums of every teacher tensor across ranks; raise naming the first mismatch."""
        if not is_distributed():
            return
        named = list(self.teacher.named_parameters()) + list(self.teacher.named_buffers())
        names = [n for n, _ in named]
        # One float64 sum per tensor, stacked on the teacher's device: a single collective and no
        # per-tensor host sync (NCCL only moves CUDA tensors; gloo takes either).
        with torch.no_grad():
            mine = torch.stack([t.detach().double().sum() for _, t in named])
        gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, mine)
        self.checks += 1
        for rank, theirs in enumerate(gathered):
            differ = (theirs != gathered[0]).nonzero()
            if len(differ):
                self.mismatches += 1
                i = int(differ[0])
                raise TeacherSyncError(
                    f"teacher differs across ranks at tensor '{names[i]}': rank 0 checksum "
                    f"{float(gathered[0][i])!r}, rank {rank} checksum {float(theirs[i])!r}"
                )

    def after_step(self, global_step: int) -> None:
        start = time.perf_counter()
        if self.buffer_every and global_step % self.buffer_every == 0:
            self.sync_buffers()
        if self.check_every and global_step % self.check_every == 0:
            self.check()
        self.seconds += time.perf_counter() - start

    def broadcast_from_rank0(self) -> None:
        """Make every rank's teacher equal to rank 0's (at start, so identical init is guaranteed)."""
        broadcast_from_rank0(self.teacher, parameters=True)

    def summary(self) -> dict:
        return {"checks": self.checks, "mismatches": self.mismatches, "buffer_syncs": self.buffer_syncs,
                "seconds": self.seconds}
