"""Keeping EMA teachers identical on every rank (torch.distributed only; no Ray here).

Parameters stay identical by construction: every rank applies the same EMA to a student whose
gradients DDP has all-reduced. What drifts are the teacher's BatchNorm statistics under the ``own``
buffer policy, because each rank's teacher sees different images; they are averaged across ranks
with one flattened all-reduce. A periodic check compares per-tensor checksums across ranks and
names the first tensor that differs: the parameters always, the buffers only while they are meant to be
identical, i.e. when no teacher update happened since their last all-reduce (with
``train.teacher_buffer_sync_every`` k > 1 they drift between syncs; with 0 every rank keeps its own).
At an epoch's end buffers that are synced at all are synced once more, so that every rank evaluates
and rank 0 checkpoints the same teacher.

The run loop gets a :class:`TeacherSync` for a preset with a teacher and a :class:`NoTeacherSync`
(which calls no collective) for one without, from :func:`teacher_sync`.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
from torch import nn

from soft_dist.config import TrainConfig
from soft_dist.method.teacher import EmaTeacher, module_digest
from soft_dist.train.collectives import all_gather_objects, broadcast_from_rank0, is_distributed


class TeacherSyncError(RuntimeError):
    pass


class TeacherSync:
    """All-reduce of the teacher's float buffers every ``buffer_every`` steps and a cross-rank
    checksum check every ``check_every`` steps (0 disables either). Counts checks and the time spent."""

    def __init__(self, teacher: nn.Module, buffer_every: int, check_every: int):
        self.teacher = teacher
        self.buffer_every = buffer_every
        self.check_every = check_every
        self.float_buffers = [b for b in teacher.buffers() if b.is_floating_point()]
        self.checks = 0
        self.mismatches = 0
        self.seconds = 0.0
        self.buffer_syncs = 0
        # True while the buffers are identical on every rank: after a sync or a broadcast, until the
        # next teacher update (every training step).
        self.buffers_identical = True

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
        self.buffers_identical = True

    def check(self) -> None:
        """Compare checksums of every teacher tensor across ranks; raise naming the first mismatch."""
        if not is_distributed():
            return
        named = list(self.teacher.named_parameters())
        if self.buffers_identical:
            named += list(self.teacher.named_buffers())
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
        self.buffers_identical = not is_distributed()  # the step updated every rank's teacher
        if self.buffer_every and global_step % self.buffer_every == 0:
            self.sync_buffers()
        if self.check_every and global_step % self.check_every == 0:
            self.check()
        self.seconds += time.perf_counter() - start

    def end_epoch(self) -> None:
        """Before evaluation and the checkpoint: buffers that are synced at all are synced now if the last
        step did not (train.teacher_buffer_sync_every > 1)."""
        if self.buffer_every and not self.buffers_identical:
            start = time.perf_counter()
            self.sync_buffers()
            self.seconds += time.perf_counter() - start

    def broadcast_from_rank0(self) -> None:
        """Make every rank's teacher equal to rank 0's (at start, so identical init is guaranteed)."""
        broadcast_from_rank0(self.teacher, parameters=True)
        self.buffers_identical = True

    def summary(self) -> dict:
        return {"checks": self.checks, "mismatches": self.mismatches, "buffer_syncs": self.buffer_syncs,
                "seconds": self.seconds}

    def digests(self) -> list[str]:
        """Every rank's digest of its teacher (a collective: every rank calls it)."""
        return all_gather_objects(module_digest(self.teacher))

    def state(self) -> dict:
        """What a checkpoint keeps of the sync (its counts, restored by :meth:`restore`)."""
        return self.summary()

    def restore(self, state: dict) -> None:
        self.checks, self.mismatches = state["checks"], state["mismatches"]

    def results(self, train_seconds: float) -> dict:
        """results.json's ``teacher_sync``: the counts and the share of this process's training time spent
        in teacher synchronisation (buffer all-reduce and checksum checks, timed with perf_counter)."""
        return {**self.summary(), "share_of_train_time": self.seconds / max(train_seconds, 1e-9)}


class NoTeacherSync:
    """The sync of a preset without a teacher: nothing to keep identical, and no collective calls (the
    same on every rank, since every rank runs the same preset)."""

    def after_step(self, global_step: int) -> None:
        pass

    def end_epoch(self) -> None:
        pass

    def check(self) -> None:
        pass

    def broadcast_from_rank0(self) -> None:
        pass

    def digests(self) -> list[str]:
        return []

    def summary(self) -> None:
        return None

    def state(self) -> dict:
        return {"checks": 0, "mismatches": 0}

    def restore(self, state: dict) -> None:
        pass

    def results(self, train_seconds: float) -> None:
        return None


def teacher_sync(teacher: EmaTeacher | None, cfg: TrainConfig) -> TeacherSync | NoTeacherSync:
    """The sync for a learner's teacher (None: a preset without one)."""
    if teacher is None:
        return NoTeacherSync()
    return TeacherSync(teacher.teacher, cfg.teacher_buffer_sync_every, cfg.sync_check_every)
