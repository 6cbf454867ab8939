"""The two batch types every loader yields (DALI, torch and in-memory alike)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TwoViewBatch:
    """A training batch of B rows; images are [B, 3, H, W] float32, normalised, RGB."""

    view_s: torch.Tensor  # [B, 3, H, W] student view
    view_t: torch.Tensor  # [B, 3, H, W] teacher view, augmented independently of view_s
    label: torch.Tensor  # [B] int64 clean canonical label from the shard
    idx: torch.Tensor  # [B] int64 global sample index
    valid: torch.Tensor  # [B] bool; False marks padding rows


@dataclass
class EvalBatch:
    """An evaluation batch: one deterministic view (resize + centre crop)."""

    image: torch.Tensor  # [B, 3, H, W]
    label: torch.Tensor  # [B] int64
    idx: torch.Tensor  # [B] int64
    valid: torch.Tensor  # [B] bool
