"""The digits set as in-memory loaders (train / val / test / train_eval), without shards."""

from __future__ import annotations

import numpy as np
import torch

from soft_dist.config import Config
from soft_dist.shard.digits import DIGIT_CLASSES, load_digits_rgb, split_indices
from soft_dist.data.memory import MemoryLoader, to_normalised_tensor
from soft_dist.data.loader import Loaders

DIGIT_SPLITS = {"train": 0.7, "val": 0.1, "test": 0.2}


def digits_memory_loaders(cfg: Config, seed: int = 0) -> tuple[Loaders, int, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(loaders, num_classes, {split: (idx, clean labels)} for train and val) at cfg.data.image_size.

    idx is the position in scikit-learn's digits array, so it is stable across runs."""
    images, labels = load_digits_rgb(cfg.data.image_size)
    x = to_normalised_tensor(images, cfg.data.mean, cfg.data.std)
    y = torch.from_numpy(labels)
    parts = split_indices(labels, DIGIT_SPLITS, seed=seed)

    def loader(split: str, train: bool, batch_size: int) -> MemoryLoader:
        rows = torch.from_numpy(parts[split])
        return MemoryLoader(x[rows], y[rows], rows.clone(), batch_size, train=train, seed=cfg.train.seed,
                            flip=cfg.data.augment.flip)

    bs, ebs = cfg.train.batch_size, cfg.train.eval_batch_size
    loaders = Loaders(
        train=loader("train", True, bs),
        val=loader("val", False, ebs),
        test=loader("test", False, ebs),
        train_eval=loader("train", False, ebs),
    )
    noise_splits = {s: (parts[s], labels[parts[s]]) for s in ("train", "val")}
    return loaders, len(DIGIT_CLASSES), noise_splits
