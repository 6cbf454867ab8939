"""The learner's step: forward passes, the SOFT objective, the optimizer and the EMA update (no Ray, no DALI).

:class:`SoftLearner` owns the student, the EMA teacher and the optimizer and performs one step on a
batch with attributes ``view_s``, ``view_t`` [B, 3, H, W], ``label``, ``idx`` [B] int64 and ``valid`` [B]
bool (see soft_dist.data.batches). Any iterable of such batches works, so the DALI, torch and in-memory
sources and the Ray trainer all plug in here.

The loss itself (paper Eq. 9) is soft_dist.method.objective; which terms it has follows ``method.name``
(soft_dist.method.presets).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch
from torch import nn

from soft_dist.config import Config, OptimConfig
from soft_dist.method.losses import masked_mean
from soft_dist.method.model import ExpressionNet
from soft_dist.method.objective import soft_objective
from soft_dist.method.teacher import EmaTeacher
from soft_dist.method.teacher_pool import TeacherPool


def build_optimizer(cfg: OptimConfig, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    params = list(params)
    # fused=True: one kernel for all tensors. On CPU torch otherwise runs Adam's per-tensor loop, which
    # a profile showed at about a quarter of a ResNet-18 step at 32 px.
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, foreach=True)


def uses_head(cfg: Config, epoch: int) -> bool:
    """Paper 4.2: stage 1 (the first ``stage1_epochs``) trains without the uncertainty head."""
    return cfg.preset.head and epoch >= cfg.method.stage1_epochs


class SoftLearner:
    """One SOFT (or ablation) training step at a time.

    student: the raw ExpressionNet (EMA and checkpoints read it);
    wrap: builds the module used for the student's forward pass, e.g. DDP; called again whenever the
        set of trainable parameters changes (the head switched on), because DDP registers its gradient
        hooks for the parameters that require grad at construction time;
    noisy_labels: [max idx + 1] int64 lookup of the (noisy) training label by sample idx; None uses the
        batch's own labels.
    """

    def __init__(
        self,
        cfg: Config,
        student: ExpressionNet,
        device: torch.device | str = "cpu",
        noisy_labels: torch.Tensor | None = None,
        wrap: Callable[[nn.Module], nn.Module] | None = None,
        sync_batchnorm: bool = False,
    ):
        self.cfg = cfg
        self.preset = cfg.preset
        self.device = torch.device(device)
        self.student = student.to(self.device)
        self.num_classes = student.classifier.out_features
        self.wrap = wrap or (lambda module: module)
        self.noisy_labels = None if noisy_labels is None else noisy_labels.to(self.device)
        self.teacher: EmaTeacher | None = None
        if self.preset.teacher:
            self.teacher = EmaTeacher.from_student(
                self.student,
                decay=cfg.method.ema_decay,
                warmup=cfg.method.ema_warmup,
                buffer_policy=cfg.method.teacher_buffers,
            )
        # the best past teachers, averaged into the consistency source (presets with teacher_pool > 0)
        self.teacher_pool = TeacherPool(self.preset.teacher_pool) if self.preset.teacher_pool else None
        if sync_batchnorm:
            # After the teacher is made, so only the student's BatchNorm is synchronised: a SyncBN teacher
            # would add a collective to every teacher forward. The converted layers keep the same parameter
            # and buffer tensors, which the EMA teacher holds.
            self.student = nn.SyncBatchNorm.convert_sync_batchnorm(self.student)
        self.optimizer = build_optimizer(cfg.optim, self.student.parameters())
        self.autocast = self.device.type == "cuda" and cfg.train.bf16
        self.global_step = 0
        self.epoch = 0
        self.head_on: bool | None = None
        self.forward_module: nn.Module | None = None

    # ------------------------------------------------------------------ stages
    def start_epoch(self, epoch: int) -> None:
        """Switch the uncertainty head on or off for ``epoch`` and (re)wrap the student if needed."""
        self.epoch = epoch
        head_on = uses_head(self.cfg, epoch)
        if head_on != self.head_on or self.forward_module is None:
            if self.student.uncertainty is not None:
                self.student.uncertainty.requires_grad_(head_on)
            self.forward_module = None  # release the old DDP wrapper (and its gradient hooks) first
            self.forward_module = self.wrap(self.student)
            self.head_on = head_on
        self.student.train()
        if self.teacher is not None:
            self.teacher.teacher.train()  # the paper's code: the teacher normalises with batch statistics

    def _autocast(self):
        if self.autocast:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ the step
    def _source_logits(self, logits_s: torch.Tensor, view_t: torch.Tensor) -> torch.Tensor:
        """[B, C] float32 logits the consistency target is made from, without gradient: the teacher's on its
        own view, or the student's own (detached) for a preset without a teacher."""
        if self.teacher is None:
            return logits_s.detach().float()
        with torch.inference_mode(), self._autocast():
            teacher_logits = self.teacher.teacher(view_t)
            if self.teacher_pool is not None:
                teacher_logits = self.teacher_pool.source_logits(teacher_logits, view_t)
        return teacher_logits.float().clone()  # a normal tensor, usable by autograd

    def train_step(self, batch, progress_epochs: float) -> dict[str, torch.Tensor]:
        """One optimisation step; returns detached per-step values (tensors; no host sync here)."""
        assert self.forward_module is not None, "call start_epoch() before train_step()"
        dev = self.device
        view_s = batch.view_s.to(dev, non_blocking=True)
        idx = batch.idx.to(dev, non_blocking=True)
        valid = batch.valid.to(dev, non_blocking=True) if getattr(batch, "valid", None) is not None else None
        labels = self.noisy_labels[idx] if self.noisy_labels is not None else batch.label.to(dev)

        with self._autocast():
            if self.head_on:
                logits_s, alpha = self.forward_module(view_s, with_alpha=True)
            else:
                logits_s, alpha = self.forward_module(view_s), None
        logits_s = logits_s.float()
        source = None
        if self.preset.target != "none":
            source = self._source_logits(logits_s, batch.view_t.to(dev, non_blocking=True))
        loss, out = soft_objective(
            self.preset, self.cfg.method, student_logits=logits_s, alpha=alpha, labels=labels,
            source_logits=source, valid=valid, epoch=self.epoch, progress_epochs=progress_epochs,
        )

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.teacher is not None:
            out["ema_decay"] = torch.tensor(self.teacher.update())
        if alpha is not None:
            out["alpha_mean"] = masked_mean(alpha.detach().float().squeeze(-1), valid)
        out["loss"] = loss.detach()
        self.global_step += 1
        return out

    def end_epoch(self, epoch: int, val_reports: dict[str, dict], metric: str) -> list[dict] | None:
        """After an epoch's validation (``val_reports``: branch -> report, the same on every rank): offer the
        teacher to the pool. Returns the pool's [{epoch, score}] for the log, or None without a pool."""
        if self.teacher_pool is None:
            return None
        self.teacher_pool.consider(epoch, val_reports["teacher"][metric], self.teacher.teacher)
        return self.teacher_pool.summary()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        state = {
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict() if self.teacher is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "global_step": self.global_step,
        }
        if self.teacher_pool is not None:
            state["teacher_pool"] = self.teacher_pool.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        if self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])
        if self.teacher_pool is not None:
            self.teacher_pool.load_state_dict(state.get("teacher_pool", []), self.teacher.teacher)
        self.optimizer.load_state_dict(state["optimizer"])
        self.global_step = int(state["global_step"])

    def branches(self) -> dict[str, nn.Module]:
        """The inference branches: the student without its head, and the teacher when there is one."""
        out = {"student": self.student}
        if self.teacher is not None:
            out["teacher"] = self.teacher.teacher
        return out


class RunningMeans:
    """Averages of per-step tensors over an epoch, kept on the device until :meth:`result`; ``sums`` and
    ``count`` continue an epoch's averages from a mid-epoch checkpoint (:meth:`state`)."""

    def __init__(self, sums: dict[str, float] | None = None, count: int = 0):
        self.sums: dict[str, torch.Tensor] = {k: torch.tensor(float(v)) for k, v in (sums or {}).items()}
        self.count = count

    def state(self) -> tuple[dict[str, float], int]:
        """(sums as floats, count): what a mid-epoch checkpoint keeps of the epoch's averages."""
        return {k: float(v) for k, v in self.sums.items()}, self.count

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for key, value in values.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
        self.count += 1

    def result(self) -> dict[str, float]:
        return {k: float(v) / max(self.count, 1) for k, v in self.sums.items()}
