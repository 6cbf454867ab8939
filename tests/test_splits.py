"""Splits carved by the run (cross-validated test folds, re-carved validation) on real digit shards."""

import numpy as np
import pytest

from soft_dist.config import ConfigError, load_config
from soft_dist.data.format import load_manifest
from soft_dist.data.labels import read_split_labels
from soft_dist.data.loader import build_eval_loader, build_train_loader
from soft_dist.data.splits import run_splits
from soft_dist.data.tarindex import load_sample_table


def _splits(shards, *overrides):
    cfg = load_config(None, ["data.image_size=32", "data.loader=torch", "data.num_threads=1", *overrides])
    return cfg, run_splits(load_manifest(shards), cfg.data)


def test_without_a_carve_the_shards_splits_are_used(digit_shards):
    _, splits = _splits(digit_shards)
    assert splits == {"train": "train", "val": "val", "test": "test"}


def test_five_folds_test_every_image_once_and_never_train_on_it(digit_shards):
    manifest = load_manifest(digit_shards)
    total = sum(s.num_samples for s in manifest.splits.values())
    tested = []
    for fold in range(5):
        _, s = _splits(digit_shards, "data.folds=5", f"data.fold={fold}")
        train, val, test = (set(s[r].idx.tolist()) for r in ("train", "val", "test"))
        assert not (train & val) and not (train & test) and not (val & test)
        assert len(train) + len(val) + len(test) == total
        assert abs(len(test) - total / 5) <= 1
        # stratified: every class is in every fold's test split in proportion (within one image)
        _, labels = read_split_labels(manifest, s["test"])
        _, all_labels = zip(*(read_split_labels(manifest, n) for n in manifest.splits))
        share = np.bincount(np.concatenate(all_labels)) / 5
        assert np.all(np.abs(np.bincount(labels, minlength=10) - share) <= 1)
        assert abs(len(val) - 0.1 * (total - len(test))) <= 10  # 10% of each class, rounded per class
        tested += sorted(test)
    assert sorted(tested) == list(range(total))  # the digits layout numbers idx 0..N-1


def test_a_carve_is_the_same_in_every_process_and_moves_with_its_seed(digit_shards):
    _, a = _splits(digit_shards, "data.folds=5", "data.fold=2")
    _, b = _splits(digit_shards, "data.folds=5", "data.fold=2")
    _, c = _splits(digit_shards, "data.folds=5", "data.fold=2", "data.split_seed=1")
    assert all(np.array_equal(a[r].idx, b[r].idx) for r in a)
    assert not np.array_equal(a["test"].idx, c["test"].idx)


def test_recarved_validation_keeps_the_shards_test_split(digit_shards):
    manifest = load_manifest(digit_shards)
    _, s = _splits(digit_shards, "data.val_fraction=0.2")
    assert s["test"] == "test"
    pool = manifest.splits["train"].num_samples + manifest.splits["val"].num_samples
    assert len(s["train"].idx) + len(s["val"].idx) == pool
    assert abs(len(s["val"].idx) - 0.2 * pool) <= 10


def test_loaders_read_exactly_the_carved_samples(digit_shards):
    cfg, s = _splits(digit_shards, "data.folds=3", "data.fold=1")
    table = load_sample_table(digit_shards, s["val"])
    assert np.array_equal(np.sort(table.idx), s["val"].idx)
    loader = build_eval_loader(digit_shards, s["test"], cfg.data, 64)
    try:
        seen = np.concatenate([b.idx[b.valid].numpy() for b in loader.epoch(0)])
    finally:
        loader.close()
    assert np.array_equal(np.sort(seen), s["test"].idx)
    train = build_train_loader(digit_shards, s["train"], cfg.data, 64, seed=0)
    try:
        first = next(iter(train.epoch(0)))
        assert set(first.idx.tolist()) <= set(s["train"].idx.tolist())
        assert train.num_samples == len(s["train"].idx)
    finally:
        train.close()


@pytest.mark.parametrize("overrides, field", [(["data.folds=1"], "data.folds"),
                                               (["data.folds=3", "data.fold=3"], "data.fold"),
                                               (["data.val_fraction=1.0"], "data.val_fraction")])
def test_bad_carve_settings_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, overrides)
