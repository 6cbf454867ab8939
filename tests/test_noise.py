"""Noise injection: exact per-class counts, asymmetric partners, seeded across processes, errors."""

import subprocess
import sys

import numpy as np
import pytest

from soft_dist.noise.table import (
    NoiseTable,
    build_noise_table,
    class_map_from_confusion,
    inject_noise,
)

LABELS = np.repeat(np.arange(7), [100, 35, 50, 61, 9, 40, 200])


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.7])
def test_symmetric_exact_counts_per_class(rate):
    noisy, flipped = inject_noise(LABELS, 7, rate, "symmetric", seed=3)
    for c in range(7):
        members = LABELS == c
        assert flipped[members].sum() == int(np.floor(rate * members.sum() + 0.5))
    assert (noisy[flipped] != LABELS[flipped]).all()
    assert (noisy[~flipped] == LABELS[~flipped]).all()
    assert set(np.unique(noisy)) <= set(range(7))


def test_symmetric_targets_are_spread_over_other_classes():
    labels = np.zeros(6000, dtype=np.int64)
    labels[:3000] = 1
    noisy, flipped = inject_noise(np.concatenate([labels, np.full(3000, 3)]), 4, 0.6, "symmetric", seed=0)
    counts = np.bincount(noisy[flipped][:3600], minlength=4)  # flips of class 0 and 1
    assert counts.min() > 0


def test_asymmetric_flips_land_on_partner():
    class_map = {0: 1, 1: 2, 2: 0, 3: 4, 4: 3, 5: 6, 6: 5}
    noisy, flipped = inject_noise(LABELS, 7, 0.3, "asymmetric", seed=1, class_map=class_map)
    for c, partner in class_map.items():
        assert (noisy[flipped & (LABELS == c)] == partner).all()
    assert flipped.sum() == sum(int(np.floor(0.3 * (LABELS == c).sum() + 0.5)) for c in range(7))


def test_rate_zero_changes_nothing():
    noisy, flipped = inject_noise(LABELS, 7, 0.0, "symmetric", seed=0)
    assert (noisy == LABELS).all() and not flipped.any()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rate=1.0, kind="symmetric"), "rate"),
        (dict(rate=-0.1, kind="symmetric"), "rate"),
        (dict(rate=0.2, kind="uniformish"), "kind"),
        (dict(rate=0.2, kind="asymmetric"), "class_map"),
        (dict(rate=0.2, kind="asymmetric", class_map={0: 0}), "0 -> 0"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        inject_noise(LABELS, 7, seed=0, **kwargs)


def test_same_seed_same_labels_in_two_processes():
    code = (
        "import numpy as np; from soft_dist.noise.table import inject_noise;"
        "l = np.repeat(np.arange(7), [100, 35, 50, 61, 9, 40, 200]);"
        "n, _ = inject_noise(l, 7, 0.3, 'symmetric', seed=11); print(','.join(map(str, n)))"
    )
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout for _ in range(2)]
    here, _ = inject_noise(LABELS, 7, 0.3, "symmetric", seed=11)
    assert runs[0] == runs[1] == ",".join(map(str, here)) + "\n"
    other, _ = inject_noise(LABELS, 7, 0.3, "symmetric", seed=12)
    assert (other != here).any()


def test_class_map_from_confusion():
    cm = np.array([[50, 3, 9], [7, 40, 2], [1, 8, 30]])
    assert class_map_from_confusion(cm) == {0: 2, 1: 0, 2: 1}


def test_noise_table_roundtrip_and_per_split(tmp_path):
    splits = {"train": (np.arange(0, 300), LABELS[:300] % 7), "val": (np.arange(300, 340), LABELS[300:340] % 7)}
    table = build_noise_table(splits, 7, "symmetric", 0.3, seed=5)
    assert len(table.idx) == 340 and (np.diff(table.idx) > 0).all()
    again = NoiseTable.load(table.save(tmp_path / "noise.csv"))
    assert again.digest() == table.digest() and again.kind == "symmetric" and again.rate == 0.3
    lookup = table.lookup()
    assert (lookup[table.idx] == table.noisy).all()
    # adding a split does not change the noise of the others
    more = build_noise_table({**splits, "zzz": (np.arange(400, 410), np.zeros(10, np.int64))}, 7, "symmetric", 0.3, 5)
    assert (more.noisy[:340] == table.noisy).all()


def test_noise_table_info_travels_in_the_header_line(tmp_path):
    """Counts about a table's origin (a noise list's, soft_dist.noise.lists) survive save and load, and
    do not change the digest that checkpoints compare."""
    idx = np.array([3, 5, 9])
    plain = NoiseTable(idx, np.array([0, 1, 2]), np.array([0, 2, 2]), kind="file", rate=0.333333)
    table = NoiseTable(idx, plain.clean, plain.noisy, kind="file", rate=0.333333,
                       info={"format": "rafdb", "rows": 4, "unlisted_kept_clean": 0})
    text = table.to_csv()
    assert text.splitlines()[0] == "# kind=file rate=0.333333 seed=0 format=rafdb rows=4 unlisted_kept_clean=0"
    assert plain.to_csv().splitlines()[0] == "# kind=file rate=0.333333 seed=0"  # unchanged without info
    again = NoiseTable.load(table.save(tmp_path / "t.csv"))
    assert again.info == {"format": "rafdb", "rows": 4, "unlisted_kept_clean": 0}
    assert (again.kind, again.rate) == ("file", 0.333333) and again.digest() == plain.digest()
    with pytest.raises(ValueError, match="single tokens"):
        NoiseTable(idx, plain.clean, plain.noisy, info={"file": "my list.txt"}).to_csv()


def test_a_sample_index_in_two_splits_is_refused():
    labels = np.arange(10) % 2
    with pytest.raises(ValueError, match="sample indices repeat across splits"):
        build_noise_table({"train": (np.arange(10), labels), "val": (np.array([10, 3]), np.array([0, 1]))},
                          2, "symmetric", 0.3, seed=0)
    table = build_noise_table({"train": (np.arange(10), labels), "val": (np.array([11, 10]), np.array([0, 1]))},
                              2, "symmetric", 0.3, seed=0)
    assert table.idx.tolist() == list(range(12))  # sorted by idx, the clean labels moved with them
    assert table.clean.tolist() == [*labels.tolist(), 1, 0]
