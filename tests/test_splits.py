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


def test_labels_come_from_the_index_files_and_a_missing_or_short_shard_is_named(tmp_path):
    """read_split_labels reads the two 8-byte members of each sample at the offsets of the DALI index files
    (about 10x faster than a tarfile pass over every member); without the index files it reads the tars;
    either way a shard that is gone, or holds fewer samples than the manifest says, is named."""
    import shutil

    from shard_fixtures import write_digit_shards
    from soft_dist.data.format import ManifestError

    shards = write_digit_shards(tmp_path / "s", {"train": 40, "val": 8}, image_size=8, shard_size=16)
    manifest = load_manifest(shards)
    idx, labels = read_split_labels(manifest, "train")
    assert idx.tolist() == list(range(1000, 1040)) and load_sample_table(shards, "train").used_index_files
    plain = tmp_path / "plain"
    shutil.copytree(shards, plain, ignore=shutil.ignore_patterns("*.idx"))
    assert not load_sample_table(plain, "train").used_index_files
    again = read_split_labels(load_manifest(plain), "train")
    assert np.array_equal(again[0], idx) and np.array_equal(again[1], labels)
    (plain / "train-000001.tar").unlink()
    with pytest.raises(ManifestError, match="train-000001.tar: shard listed in the manifest is missing"):
        read_split_labels(load_manifest(plain), "train")
    shutil.copy(shards / "train-000000.tar", plain / "train-000001.tar")  # 16 samples where the manifest has 16 ...
    shutil.copy(shards / "train-000002.tar", plain / "train-000000.tar")  # ... and 8 where it has 16
    with pytest.raises(ManifestError, match="train-000000.tar: holds 8 samples, the manifest says 16"):
        read_split_labels(load_manifest(plain), "train")
