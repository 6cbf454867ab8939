"""Loss terms of SOFT (paper Eq. 6, 8, 9) and the consistency ramp-up.

Losses return PER-SAMPLE values [B] so that callers can drop padding rows (``valid`` masks) before
averaging; :func:`masked_mean` does that reduction.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def consistency_kl(target: torch.Tensor, student_log_probs: torch.Tensor) -> torch.Tensor:
    """KL(target || student) per sample.

    target: [B, C] probabilities (no gradient expected, but not required);
    student_log_probs: [B, C] log-probabilities of the student.
    Returns [B]. Zero target entries contribute 0 (xlogy), so SLS(0) targets are fine.
    """
    return (torch.xlogy(target, target) - target * student_log_probs).sum(dim=-1)


def weighted_cross_entropy(
    logits: torch.Tensor, alpha: torch.Tensor | None, target: torch.Tensor
) -> torch.Tensor:
    """Cross entropy of ``alpha * logits`` per sample (Eq. 8); alpha None is plain CE.

    logits: [B, C]; alpha: [B, 1] or [B] in (0, 1) from the uncertainty head;
    target: [B] int64 class indices, or [B, C] probabilities (e.g. LSR targets). Returns [B].
    """
    if alpha is not None:
        logits = logits * alpha.reshape(-1, 1)
    if target.dim() == 1:
        return F.cross_entropy(logits.float(), target, reduction="none")
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1)


def sigmoid_rampup(progress_epochs: float, rampup_epochs: float) -> float:
    """exp(-5 (1 - t/T)^2) for t < T, else 1 (Laine & Aila's ramp, used by the mean teacher)."""
    if rampup_epochs <= 0 or progress_epochs >= rampup_epochs:
        return 1.0
    phase = 1.0 - max(progress_epochs, 0.0) / rampup_epochs
    return math.exp(-5.0 * phase * phase)


def masked_mean(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` [B] over rows where ``valid`` [B] is True (all rows when valid is None)."""
    if valid is None:
        return values.mean()
    weights = valid.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp(min=1.0)
