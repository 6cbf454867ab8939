"""Which samples make up the train, validation and test splits of a run.

By default a run uses the splits the shards were written with (``data.train_split``, ``data.val_split``,
``data.test_split``). Small datasets cannot separate methods a point apart on one fixed split, so a run
may carve its own from the pooled samples of those shard splits, without rewriting any shard:

* ``data.folds = K >= 2``: stratified K-fold cross-validation. Every class's samples are shuffled with
  ``data.split_seed`` and dealt round-robin into K folds; fold ``data.fold`` is the test split. Running
  folds 0..K-1 tests every image exactly once.
* ``data.val_fraction``: the validation split is carved from the remaining (non-test) samples, that share
  of every class, again with ``data.split_seed``; the rest is the training split. With ``data.folds = 0``
  the shards' test split is kept and validation is re-carved from the shards' train + validation samples.

The carve is a pure function of the shards' (idx, label) pairs and the config, so the driver (noise
table) and every worker (loaders) compute the same one.
"""

from __future__ import annotations

import numpy as np

from soft_dist.config import DataConfig
from soft_dist.data.format import Manifest, ManifestError, SplitSelection
from soft_dist.data.labels import read_pooled_labels

ROLES = ("train", "val", "test")
DEFAULT_VAL_FRACTION = 0.1  # with folds and no data.val_fraction


def carves(data_cfg: DataConfig) -> bool:
    """Whether this config carves its own splits instead of using the shards' splits as written."""
    return data_cfg.folds >= 2 or data_cfg.val_fraction is not None


def _role_split_names(data_cfg: DataConfig) -> dict[str, str | None]:
    return {"train": data_cfg.train_split, "val": data_cfg.val_split, "test": data_cfg.test_split}


def _stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold number [N] of every sample: each class shuffled, then dealt round-robin into ``folds`` folds."""
    rng = np.random.Generator(np.random.PCG64(seed))
    fold = np.empty(len(labels), dtype=np.int64)
    offset = 0  # continue the deal across classes so that small classes do not all start at fold 0
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        members = members[rng.permutation(len(members))]
        fold[members] = (np.arange(len(members)) + offset) % folds
        offset += len(members)
    return fold


def _carve_share(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask [N]: round(fraction * n_c) samples of every class c, chosen with ``seed``."""
    rng = np.random.Generator(np.random.PCG64(seed))
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = int(np.floor(fraction * len(members) + 0.5))
        mask[members[rng.permutation(len(members))[:take]]] = True
    return mask


def carve_splits(manifest: Manifest, data_cfg: DataConfig) -> dict[str, SplitSelection]:
    """role -> SplitSelection for a config that carves (see the module docstring); {} when it does not."""
    if not carves(data_cfg):
        return {}
    names = _role_split_names(data_cfg)
    if data_cfg.folds >= 2:
        sources = tuple(dict.fromkeys(n for n in names.values() if n and n in manifest.splits))
    else:
        sources = tuple(dict.fromkeys(n for n in (names["train"], names["val"]) if n in manifest.splits))
    if not sources:
        raise ManifestError(f"{manifest.root}: none of the splits {list(names.values())} is in the manifest "
                            f"(it has {sorted(manifest.splits)})")
    idx, labels = read_pooled_labels(manifest, sources)

    seed = data_cfg.split_seed
    if data_cfg.folds >= 2:
        fold = _stratified_folds(labels, data_cfg.folds, seed)
        is_test = fold == data_cfg.fold
    else:
        is_test = np.zeros(len(idx), dtype=bool)
    fraction = data_cfg.val_fraction if data_cfg.val_fraction is not None else DEFAULT_VAL_FRACTION
    rest = np.flatnonzero(~is_test)
    is_val = np.zeros(len(idx), dtype=bool)
    # A seed of its own, so that changing the fold count does not re-deal validation by accident.
    is_val[rest[_carve_share(labels[rest], fraction, seed + 7919)]] = True
    is_train = ~is_test & ~is_val
    out = {"train": SplitSelection("train", sources, idx[is_train]),
           "val": SplitSelection("val", sources, idx[is_val])}
    if data_cfg.folds >= 2:
        out["test"] = SplitSelection("test", sources, idx[is_test])
    for role, selection in out.items():
        if len(selection.idx) == 0:
            raise ManifestError(f"{manifest.root}: the carved {role} split is empty (data.folds="
                                f"{data_cfg.folds}, data.val_fraction={data_cfg.val_fraction}, "
                                f"{len(idx)} samples in {list(sources)})")
    return out


def run_splits(manifest: Manifest, data_cfg: DataConfig) -> dict[str, str | SplitSelection]:
    """role -> what the loaders read for it: a shard split name, or a carved SplitSelection. The test
    role is left out when the run has no test split."""
    carved = carve_splits(manifest, data_cfg)
    out: dict[str, str | SplitSelection] = {}
    for role, name in _role_split_names(data_cfg).items():
        if role in carved:
            out[role] = carved[role]
        elif name and (role != "test" or name in manifest.splits):
            out[role] = name
    return out
