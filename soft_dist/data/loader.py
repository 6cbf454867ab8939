"""Batch types shared by every input source (DALI, torch, in-memory) and the training loop."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TwoViewBatch:
    view_s: torch.Tensor  # [B, 3, H, W] float32, normalised (student view)
    view_t: torch.Tensor  # [B, 3, H, W] float32, normalised (teacher view), independently augmented
    label: torch.Tensor  # [B] int64 clean canonical label from the shard
    idx: torch.Tensor  # [B] int64 global sample index
    valid: torch.Tensor  # [B] bool; False marks padding rows


@dataclass
class EvalBatch:
    image: torch.Tensor  # [B, 3, H, W]
    label: torch.Tensor  # [B] int64
    idx: torch.Tensor  # [B] int64
    valid: torch.Tensor  # [B] bool
