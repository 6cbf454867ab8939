"""Label smoothing targets: SLS (paper Eq. 3-4), LSR (Eq. 1-2) and LSR* (LSR of the top-1 class).

All functions return probability rows [B, C] that sum to 1 and are finite for any finite input.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from soft_dist.method.presets import LOW_MASS_RULES


class SmoothedTarget(NamedTuple):
    target: torch.Tensor  # [B, C] float32, rows sum to 1
    k: torch.Tensor  # [B] int64, number of high-confidence classes per sample (after the k = 0 rule)
    # [B] bool: the target gives a class below tau more than some class above tau (presets.LOW_MASS_RULES)
    inverted: torch.Tensor


def soft_label_smoothing_with_k(logits: torch.Tensor, tau: float, epsilon: float | torch.Tensor, *,
                                low_mass: str) -> SmoothedTarget:
    """SLS of ``logits`` [B, C]; also returns k per sample (for the share of samples with k > 1) and
    which rows came out inverted. ``epsilon`` is one number, or one per sample [B, 1] (see
    :func:`entropy_scaled_epsilon`); ``low_mass`` is one of LOW_MASS_RULES.

    q = softmax(logits); high = {i : q_i > tau}; k = |high|; m = eps ("total") or eps (C - k) / (C - 1)
    ("per_class")
    y_i = (1 - m) * q_i / sum_{j in high} q_j   for i in high
    y_i = m / (C - k)                           otherwise

    Edge rules (the reference implementation returns NaN in both):
      k = 0 (tau >= max q): the arg-max class counts as high, so k = 1 and SLS behaves like LSR*;
      k = C (tau < min q): there is no low class to give eps to, so the target is q itself.
    Computed in float32 whatever the input dtype (bf16 softmax loses the small confidences SLS keeps).
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be [B, C], got shape {tuple(logits.shape)}")
    if low_mass not in LOW_MASS_RULES:
        raise ValueError(f"low_mass must be one of {LOW_MASS_RULES}, got {low_mass!r}")
    q = torch.softmax(logits.float(), dim=-1)
    num_classes = q.shape[-1]
    high = q > tau
    # k = 0 rule: promote the arg-max class. Rows that already have a high class are unchanged.
    top1 = F.one_hot(q.argmax(dim=-1), num_classes).bool()
    high = high | (top1 & ~high.any(dim=-1, keepdim=True))
    k = high.sum(dim=-1, keepdim=True)
    low_count = (num_classes - k).clamp(min=1).to(q.dtype)
    if low_mass == "per_class":
        epsilon = epsilon * low_count / max(num_classes - 1, 1)
    # The high mass is at least max q >= 1/C > 0, so the division is safe.
    high_mass = (q * high).sum(dim=-1, keepdim=True)
    high_part = (1.0 - epsilon) * q / high_mass
    low_part = epsilon / low_count
    target = torch.where(high, high_part, low_part)
    target = torch.where(k == num_classes, q, target)  # k = C rule
    inverted = target.masked_fill(high, -1.0).amax(dim=-1) > target.masked_fill(~high, float("inf")).amin(dim=-1)
    return SmoothedTarget(target, k.squeeze(-1), inverted)


def entropy_scaled_epsilon(logits: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Per-sample smoothing mass [B, 1] from ``logits`` [B, C]: ``epsilon`` * H(softmax) / log C.

    0 where the source is one-hot (its top classes are trusted as they are), ``epsilon`` where it is
    uniform (it knows nothing, so more of the target goes to the other classes). Float32, no gradient."""
    q = torch.softmax(logits.detach().float(), dim=-1)
    entropy = -(q * torch.log(q.clamp(min=1e-12))).sum(dim=-1, keepdim=True)
    return epsilon * (entropy / math.log(q.shape[-1])).clamp(0.0, 1.0)


def soft_label_smoothing(logits: torch.Tensor, tau: float, epsilon: float | torch.Tensor, *,
                         low_mass: str) -> torch.Tensor:
    """SLS target [B, C] from logits [B, C] (Eq. 3-4 with the edge rules above)."""
    return soft_label_smoothing_with_k(logits, tau, epsilon, low_mass=low_mass).target


def label_smoothing(labels: torch.Tensor, num_classes: int, epsilon: float) -> torch.Tensor:
    """LSR of integer labels [B]: 1 - eps on the label, eps / (C - 1) elsewhere (Eq. 1-2) -> [B, C]."""
    if num_classes < 2:
        raise ValueError("label smoothing needs at least 2 classes")
    one_hot = F.one_hot(labels.long(), num_classes).float()
    return one_hot * (1.0 - epsilon) + (1.0 - one_hot) * (epsilon / (num_classes - 1))


def label_smoothing_top1(logits: torch.Tensor, epsilon: float) -> torch.Tensor:
    """LSR*: LSR of the arg-max class of ``logits`` [B, C] -> [B, C] (not instance-aware)."""
    return label_smoothing(logits.argmax(dim=-1), logits.shape[-1], epsilon)


def tau_above_uniform_note(tau: float, num_classes: int, tau_relative: float) -> str | None:
    """A warning when ``tau`` is above the uniform confidence 1/C, else None.

    With tau > 1/C a sample gets k > 1 only when two classes beat uniform by a margin, so most SLS
    targets put 1 - eps on the top-1 class: a hard pseudo-label, which on noisy digits (10 classes,
    tau 1/8) locked the teacher into its early mistakes (docs/experiments.md). The paper's 1/8 is 7/8
    of uniform for its 7 classes; the default (method.tau null) states tau relative to uniform instead,
    ``tau_relative`` / C with ``tau_relative`` the run's method.tau_relative, so it stays below 1/C."""
    if tau * num_classes <= 1.0 + 1e-9:
        return None
    return (f"tau={tau:g} is above uniform (1/{num_classes} = {1 / num_classes:.4f}) for {num_classes} classes: "
            f"as the teacher grows confident most SLS targets keep one high class; on long runs from scratch "
            f"this locked SOFT onto its early mistakes. The paper's 1/8 is 7/8 of uniform for 7 classes; the "
            f"default stays below uniform for any class count (method.tau null: method.tau_relative "
            f"{tau_relative:g} / C, here {tau_relative / num_classes:.4f}; docs/experiments.md, 'SOFT against MT').")
