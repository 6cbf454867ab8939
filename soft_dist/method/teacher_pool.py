"""A pool of the best past teachers: frozen copies of the EMA teacher from the epochs where it scored best
on validation, whose predictions are averaged with the current teacher's as the source of the SLS target.

An EMA teacher that goes wrong drags its own targets with it (lock-in); averaging in the teachers that
validated best dampens one bad stretch. The pool holds at most ``size`` snapshots: after each epoch the
current teacher is copied in when the pool has room or it beats the pool's worst score (ties: the newer
snapshot wins, being the more trained), and the worst is dropped.

Snapshots predict in eval mode (their own BatchNorm statistics, frozen), so a forward pass changes
nothing and every rank, which holds the same teachers and the same gathered validation scores, keeps the
same pool without any collective. No Ray, no DALI.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class PoolMember:
    epoch: int  # counted from 1, as in every file
    score: float  # the teacher's validation score at that epoch (train.select_metric)
    network: nn.Module  # eval mode, no gradients


class TeacherPool:
    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"a teacher pool needs room for at least 1 teacher, got {size}")
        self.size = size
        self.members: list[PoolMember] = []

    def consider(self, epoch: int, score: float, teacher: nn.Module) -> bool:
        """Copy ``teacher`` in when it ranks among the ``size`` best; returns whether the pool changed."""
        if len(self.members) >= self.size and score < min(m.score for m in self.members):
            return False
        self.members.append(PoolMember(epoch, float(score), _frozen_copy(teacher)))
        # best first; among equal scores the newer first, so the oldest of the worst is dropped
        self.members.sort(key=lambda m: (m.score, m.epoch), reverse=True)
        del self.members[self.size:]
        return any(m.epoch == epoch for m in self.members)

    @torch.no_grad()
    def source_logits(self, teacher_logits: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """Log of the mean of the softmaxes of the current teacher's logits [B, C] and every member's on
        ``view`` [B, 3, H, W] -> [B, C] float32 (a valid logit row: its softmax is the averaged distribution).
        An empty pool returns the teacher's logits as they are."""
        if not self.members:
            return teacher_logits.float()
        probs = torch.softmax(teacher_logits.float(), dim=-1)
        for member in self.members:
            probs = probs + torch.softmax(member.network(view).float(), dim=-1)
        return torch.log((probs / (1 + len(self.members))).clamp(min=1e-12))

    def summary(self) -> list[dict]:
        """[{epoch, score}] best first, for the epoch's log line."""
        return [{"epoch": m.epoch, "score": m.score} for m in self.members]

    def state_dict(self) -> list[dict]:
        return [{"epoch": m.epoch, "score": m.score, "state": m.network.state_dict()} for m in self.members]

    def load_state_dict(self, state: list[dict], template: nn.Module) -> None:
        """Rebuild the members from their saved weights; ``template`` is any network of the teacher's shape."""
        self.members = []
        for entry in state:
            network = _frozen_copy(template)
            network.load_state_dict(entry["state"])
            self.members.append(PoolMember(int(entry["epoch"]), float(entry["score"]), network))


def _frozen_copy(module: nn.Module) -> nn.Module:
    twin = copy.deepcopy(module).eval()
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin
