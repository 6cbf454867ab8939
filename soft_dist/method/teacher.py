"""The mean teacher: an EMA of the student's weights (paper Eq. 5), paired by parameter NAME.

theta' <- w_t theta' + (1 - w_t) theta,  w_t = min(1 - 1/(t + 1), w) with warm-up, else w.

The teacher has the student's architecture without the uncertainty head. Parameters are paired by
name; the student's names without a teacher counterpart must all be expected (the head), otherwise
construction fails, so nothing is silently dropped or mis-paired. The update is one vectorised
``torch._foreach_lerp_`` over all tensors, not a Python loop of small kernels.

Buffer policies (BatchNorm statistics):
  own  - the teacher keeps its own statistics: it runs in train mode during training and its forward
         pass updates them (what the paper's code does).
  copy - the student's buffers are copied after every update.
  ema  - float buffers follow the same EMA; integer buffers (num_batches_tracked) are copied.

Under DDP every rank applies the same update to its own teacher from the all-reduced student, so
teachers stay identical; with ``own`` the BN statistics are fed different data per rank and must be
synchronised by the caller (see soft_dist.train.teacher_sync).
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

BUFFER_POLICIES = ("own", "copy", "ema")


class EmaTeacher:
    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        *,
        decay: float,
        warmup: bool,
        buffer_policy: str,
        student_only_prefixes: tuple[str, ...] = ("uncertainty.",),
    ):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        if buffer_policy not in BUFFER_POLICIES:
            raise ValueError(f"buffer policy must be one of {BUFFER_POLICIES}, got {buffer_policy!r}")
        self.teacher = teacher
        self.decay = decay
        self.warmup = warmup
        self.buffer_policy = buffer_policy
        self.num_updates = 0
        for p in teacher.parameters():
            p.requires_grad_(False)

        s_params = dict(student.named_parameters())
        t_params = dict(teacher.named_parameters())
        self.student_only = sorted(set(s_params) - set(t_params))
        teacher_only = sorted(set(t_params) - set(s_params))
        if teacher_only:
            raise ValueError(f"teacher parameters with no student counterpart: {teacher_only}")
        unexpected = [n for n in self.student_only if not n.startswith(student_only_prefixes)]
        if unexpected:
            raise ValueError(f"student parameters with no teacher counterpart (not a known head): {unexpected}")
        names = sorted(t_params)
        for n in names:
            if s_params[n].shape != t_params[n].shape:
                raise ValueError(f"shape mismatch for '{n}': student {tuple(s_params[n].shape)}, teacher {tuple(t_params[n].shape)}")
        self.param_names = names
        self._t_params = [t_params[n] for n in names]
        self._s_params = [s_params[n] for n in names]

        s_bufs = dict(student.named_buffers())
        t_bufs = dict(teacher.named_buffers())
        if set(t_bufs) - set(s_bufs):
            raise ValueError(f"teacher buffers with no student counterpart: {sorted(set(t_bufs) - set(s_bufs))}")
        buf_names = sorted(t_bufs)
        self._float_bufs = [(t_bufs[n], s_bufs[n]) for n in buf_names if t_bufs[n].is_floating_point()]
        self._other_bufs = [(t_bufs[n], s_bufs[n]) for n in buf_names if not t_bufs[n].is_floating_point()]

    @classmethod
    def from_student(cls, student, **kwargs) -> "EmaTeacher":
        """Teacher = the student's architecture without its head, starting from the student's weights."""
        return cls(student, student.without_head(), **kwargs)

    def current_decay(self) -> float:
        """w_t for the next update (t = updates done so far)."""
        if not self.warmup:
            return self.decay
        return min(1.0 - 1.0 / (self.num_updates + 1), self.decay)

    @torch.no_grad()
    def update(self) -> float:
        """One EMA step from the student's current weights; returns the decay used."""
        w = self.current_decay()
        torch._foreach_lerp_(self._t_params, self._s_params, 1.0 - w)
        if self.buffer_policy == "copy":
            for t, s in self._float_bufs + self._other_bufs:
                t.copy_(s)
        elif self.buffer_policy == "ema":
            if self._float_bufs:
                torch._foreach_lerp_([t for t, _ in self._float_bufs], [s for _, s in self._float_bufs], 1.0 - w)
            for t, s in self._other_bufs:
                t.copy_(s)
        self.num_updates += 1
        return w

    def state_dict(self) -> dict:
        return {"teacher": self.teacher.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.num_updates = int(state["num_updates"])


def module_digest(module: nn.Module) -> str:
    """sha256 over the exact bytes of every parameter and buffer, in name order."""
    h = hashlib.sha256()
    for name, t in sorted(list(module.named_parameters()) + list(module.named_buffers()), key=lambda x: x[0]):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
