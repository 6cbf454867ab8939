"""Published noise lists (soft_dist.noise.lists) on real shards: scikit-learn digits for the paths, soft
and table formats and the errors, a tiny RAF-DB set (written in RAF-DB's own layout and sharded by the
project's sharder) for the rafdb format, and `soft-dist noise export` round trips."""

import numpy as np
import pytest
from shard_fixtures import write_rafdb_root

from soft_dist.config import ConfigError, DataConfig, load_config
from soft_dist.shard.layouts import RAFDB_LABELS
from soft_dist.data.format import load_manifest
from soft_dist.data.labels import read_split_labels
from soft_dist.data.splits import run_splits
from soft_dist.noise.lists import NoiseListError, read_noise_list, read_sample_index

RAF_ROWS = [(f"train_{i:05d}.jpg", i % 7 + 1) for i in range(1, 21)] + \
           [(f"test_{i:04d}.jpg", (i + 3) % 7 + 1) for i in range(1, 6)]
RAF_NUMBER = {name: number for number, name in RAFDB_LABELS.items()}  # class name -> RAF-DB's 1..7


@pytest.fixture(scope="module")
def raf_shards(tmp_path_factory):
    """20 training and 5 test images in RAF-DB's layout, sharded without alignment; 25% of train carved
    as val (stratified: 14 train, 6 val, 5 test)."""
    from soft_dist.shard.build import ShardConfig, build_shards

    tmp = tmp_path_factory.mktemp("rafdb")
    root = write_rafdb_root(tmp / "raf", RAF_ROWS)
    out = tmp / "shards"
    build_shards(ShardConfig(layout="rafdb", root=str(root), out=str(out), size=24, min_shards=2,
                             val_fraction=0.25, workers=1, progress=False), log=lambda msg: None)
    return out


def _splits(shards, **data):
    manifest = load_manifest(shards)
    return manifest, run_splits(manifest, DataConfig(shards=str(shards), **data))


def _read(tmp_path, shards, fmt, lines, name="list.txt", **data):
    path = tmp_path / name
    path.write_text("".join(f"{line}\n" for line in lines))
    manifest, roles = _splits(shards, **data)
    return read_noise_list(path, fmt, manifest, roles), path


def _train_val(shards, **data):
    """(idx, clean) of the run's training and validation samples, as synthetic noise would cover them."""
    manifest, roles = _splits(shards, **data)
    parts = [read_split_labels(manifest, roles[r]) for r in ("train", "val")]
    idx = np.concatenate([p[0] for p in parts])
    order = np.argsort(idx)
    return idx[order], np.concatenate([p[1] for p in parts])[order]


def _positions(index, role):
    return [p for p, r in enumerate(index.role) if r == role]


# ----------------------------------------------------------------------------- the shards' names


def test_sample_index_of_digit_shards(digit_shards):
    manifest, roles = _splits(digit_shards)
    index = read_sample_index(manifest, roles)
    assert len(index) == 1797 and (np.diff(index.idx) > 0).all()
    assert {r: index.role.count(r) for r in ("train", "val", "test")} == {"train": 1258, "val": 179, "test": 360}
    assert sorted(index.source)[:2] == ["digits#0000", "digits#0001"]  # the sharder's source names
    for role in ("train", "val", "test"):
        idx, clean = read_split_labels(manifest, role)
        pos = _positions(index, role)
        assert (index.idx[pos] == idx).all() and (index.clean[pos] == clean).all()
    # a carved split moves samples between roles; the index follows the carve
    manifest, carved = _splits(digit_shards, val_fraction=0.3)
    assert read_sample_index(manifest, carved).role.count("val") == len(carved["val"].idx)


# ----------------------------------------------------------------------------- paths and soft on digits


def test_paths_list_maps_by_path_suffix_and_keeps_unlisted_clean(digit_shards, tmp_path):
    index = read_sample_index(*_splits(digit_shards))
    train, val, test = (_positions(index, r) for r in ("train", "val", "test"))
    a, b, v, t = train[0], train[5], val[0], test[0]
    other = lambda p: (int(index.clean[p]) + 3) % 10  # noqa: E731 - always another class
    table, path = _read(tmp_path, digit_shards, "paths", [
        "path,label",  # a CSV header is allowed
        f"/data/sklearn/{index.source[a]},{other(a)}",  # absolute: ends with the sample's source
        f"{index.source[b]} {other(b)}",
        "# a comment",
        "",
        f"./{index.source[v]} {other(v)}",
        f"{index.source[t]} {other(t)}",  # a test image: ignored, counted
    ])
    idx, clean = _train_val(digit_shards)
    assert (table.idx == idx).all() and (table.clean == clean).all() and table.kind == "file"
    changed = set(table.idx[table.noisy != table.clean].tolist())
    assert changed == {int(index.idx[a]), int(index.idx[b]), int(index.idx[v])}
    assert table.lookup()[index.idx[a]] == other(a) and table.lookup()[index.idx[v]] == other(v)
    assert int(index.idx[t]) not in set(table.idx.tolist())  # noise never reaches the test split
    assert table.info == {"format": "paths", "rows": 4, "applied": 3, "flipped": 3,
                          "ignored_outside_train_val": 1, "unlisted_kept_clean": 1258 + 179 - 3}
    assert table.rate == round(3 / 1437, 6)


def test_soft_list_covers_train_and_test_and_only_train_val_is_noised(digit_shards, tmp_path):
    """The SOFT authors' files list every image; their test rows (noisy in their files too) are ignored."""
    index = read_sample_index(*_splits(digit_shards))
    labels = index.clean.copy()
    rng = np.random.default_rng(0)
    flip = rng.choice(len(index), 300, replace=False)
    labels[flip] = (labels[flip] + rng.integers(1, 10, 300)) % 10
    lines = [f"{src} {label}" for src, label in zip(index.source, labels.tolist())]
    table, _ = _read(tmp_path, digit_shards, "soft", lines[::-1])  # row order does not matter
    in_table = index.in_table()
    assert (table.idx == index.idx[in_table]).all() and (table.noisy == labels[in_table]).all()
    test_flips = int((~in_table[flip]).sum())
    assert test_flips > 0  # the list changed some test labels; none of them is in the table
    assert table.info["rows"] == 1797 and table.info["ignored_outside_train_val"] == 360
    assert table.info["unlisted_kept_clean"] == 0 and table.info["flipped"] == 300 - test_flips


# ----------------------------------------------------------------------------- errors


def test_names_that_match_no_sample_are_counted_listed_and_located(digit_shards, tmp_path):
    index = read_sample_index(*_splits(digit_shards))
    good = [f"{src} 1" for src in index.source[:3]]
    missing = [f"digits#{9000 + i} 1" for i in range(7)]
    with pytest.raises(NoiseListError) as err:
        _read(tmp_path, digit_shards, "soft", [good[0], missing[0], good[1], *missing[1:], good[2]],
              name="published.txt")
    text = str(err.value)
    assert "published.txt: 7 of 10 rows name no sample" in text and "dataset digits, 1797 samples" in text
    assert "line 2 'digits#9000'" in text and "line 4 'digits#9001'" in text and "first 5 shown" in text
    assert "digits#9006" not in text


@pytest.mark.parametrize("fmt, lines, match", [
    ("paths", ["digits#0001 3", "digits#0002 10"], r"list\.txt:2: label 10 is out of range for the paths format"),
    ("soft", ["digits#0001 -1"], r"list\.txt:1: label -1 is out of range .* 0 0, 1 1"),
    ("paths", ["digits#0001 3", "/mnt/d/digits#0001 4"],
     r"list\.txt:2: '/mnt/d/digits#0001' names the same sample \(digits#0001\) as line 1 .*another label"),
    ("soft", ["digits#0001"], r"list\.txt:1: expected 'name label'"),
    ("soft", ["digits#0001 three"], r"list\.txt:1: label 'three' is not an integer"),
    ("paths", ["digits#0001;3"], r"list\.txt:1: expected 'path label' or 'path,label'"),
])
def test_bad_rows_name_file_and_line(digit_shards, tmp_path, fmt, lines, match):
    with pytest.raises(NoiseListError, match=match):
        _read(tmp_path, digit_shards, fmt, lines)


def test_same_name_twice_with_the_same_label_is_one_row(digit_shards, tmp_path):
    table, _ = _read(tmp_path, digit_shards, "paths", ["digits#0001 3", "/x/digits#0001 3"])
    assert table.info["applied"] == 1 and table.info["rows"] == 2


def test_a_list_naming_only_test_images_is_an_error(digit_shards, tmp_path):
    index = read_sample_index(*_splits(digit_shards))
    test = _positions(index, "test")[:2]
    with pytest.raises(NoiseListError, match="none of its 2 rows names a training or validation sample"):
        _read(tmp_path, digit_shards, "soft", [f"{index.source[p]} 0" for p in test])


def test_rafdb_format_needs_rafdb_shards(digit_shards, tmp_path):
    with pytest.raises(NoiseListError, match="hold dataset 'digits'") as err:
        _read(tmp_path, digit_shards, "rafdb", ["train_00001.jpg 1"])
    assert err.value.field == "noise.file_format"
    # through the run's config, the error names the config field
    from soft_dist.noise.setup import make_noise_table

    cfg = load_config(None, [f"data.shards={digit_shards}", "noise.kind=file",
                             f"noise.file={tmp_path / 'list.txt'}", "noise.file_format=rafdb"])
    with pytest.raises(ConfigError, match="'noise.file_format'.*'digits'"):
        make_noise_table(cfg)
    (tmp_path / "list.txt").write_text("digits#0001 1\nnothing 2\n")
    with pytest.raises(ConfigError, match=r"'noise.file'.*list\.txt: 1 of 2 rows name no sample.*line 2 'nothing'"):
        make_noise_table(load_config(None, [f"data.shards={digit_shards}", "noise.kind=file",
                                            f"noise.file={tmp_path / 'list.txt'}", "noise.file_format=soft"]))


# ----------------------------------------------------------------------------- rafdb


def test_rafdb_list_maps_raf_numbers_and_aligned_names(raf_shards, tmp_path):
    index = read_sample_index(*_splits(raf_shards))
    assert index.dataset == "rafdb" and "Image/aligned/train_00001_aligned.jpg" in index.source
    # the shards' clean labels are RAF-DB's own numbers mapped through class names
    by_name = {src.rsplit("/", 1)[1].replace("_aligned", ""): p for p, src in enumerate(index.source)}
    for name, number in RAF_ROWS:
        assert index.classes[index.clean[by_name[name]]] == RAFDB_LABELS[number]

    listed = {f"train_{i:05d}.jpg": (i + 3) % 7 + 1 for i in range(1, 19)}  # 19 and 20 stay unlisted
    lines = [f"{n.replace('.jpg', '_aligned.jpg') if i % 2 else n} {label}"  # with and without _aligned
             for i, (n, label) in enumerate(listed.items())] + ["test_0002.jpg 4"]
    table, _ = _read(tmp_path, raf_shards, "rafdb", lines)
    noisy = dict(zip(table.idx.tolist(), table.noisy.tolist()))
    for name, number in listed.items():
        assert index.classes[noisy[int(index.idx[by_name[name]])]] == RAFDB_LABELS[number]
    # the numbering spelled out: RAF-DB 1 Surprise, 4 Happiness, 7 Neutral
    assert [index.classes[noisy[int(index.idx[by_name[n]])]] for n in
            ("train_00004.jpg", "train_00007.jpg", "train_00003.jpg")] == ["surprise", "happiness", "neutral"]
    for name in ("train_00019.jpg", "train_00020.jpg"):
        p = by_name[name]
        assert noisy[int(index.idx[p])] == index.clean[p]
    assert int(index.idx[by_name["test_0002.jpg"]]) not in noisy
    assert table.info["unlisted_kept_clean"] == 2 and table.info["ignored_outside_train_val"] == 1
    assert len(table.idx) == 20  # train 14 + val 6: the test images are not in the table


@pytest.mark.parametrize("label", [0, 8])
def test_rafdb_labels_are_1_to_7(raf_shards, tmp_path, label):
    with pytest.raises(NoiseListError, match=rf"list\.txt:2: label {label} is out of range .* 1\.\.7 in RAF-DB"):
        _read(tmp_path, raf_shards, "rafdb", ["train_00001.jpg 1", f"train_00002.jpg {label}"])


def test_paths_list_suffix_matches_both_ways_on_rafdb(raf_shards, tmp_path):
    index = read_sample_index(*_splits(raf_shards))
    table, _ = _read(tmp_path, raf_shards, "paths", [
        "/data/RAF/basic/Image/aligned/train_00003_aligned.jpg 0",  # the row's path ends with the source
        "aligned/train_00004_aligned.jpg 1",  # the source ends with the row's path
    ])
    noisy = dict(zip(table.idx.tolist(), table.noisy.tolist()))
    pos = {src: p for p, src in enumerate(index.source)}
    assert noisy[int(index.idx[pos["Image/aligned/train_00003_aligned.jpg"]])] == 0
    assert noisy[int(index.idx[pos["Image/aligned/train_00004_aligned.jpg"]])] == 1
    # paths are whole components: no _aligned folding and no partial names
    with pytest.raises(NoiseListError, match="2 of 2 rows name no sample"):
        _read(tmp_path, raf_shards, "paths", ["train_00003.jpg 0", "ned/train_00004_aligned.jpg 1"])


def test_make_noise_table_reads_a_rafdb_list(raf_shards, tmp_path):
    from soft_dist.noise.setup import make_noise_table

    path = tmp_path / "noise.txt"
    path.write_text("train_00001.jpg 7\ntrain_00002_aligned.jpg 2\ntest_0001.jpg 1\n")
    cfg = load_config(None, [f"data.shards={raf_shards}", "noise.kind=file", f"noise.file={path}",
                             "noise.file_format=rafdb"])
    table, num_classes = make_noise_table(cfg)
    idx, clean = _train_val(raf_shards)
    index = read_sample_index(*_splits(raf_shards))
    expected = clean.copy()
    for name, number in (("train_00001.jpg", 7), ("train_00002.jpg", 2)):
        p = index.source.index(f"Image/aligned/{name.replace('.jpg', '_aligned.jpg')}")
        expected[np.flatnonzero(idx == index.idx[p])] = index.classes.index(RAFDB_LABELS[number])
    assert num_classes == 7 and table.kind == "file"
    assert (table.idx == idx).all() and (table.clean == clean).all() and (table.noisy == expected).all()
    assert table.info["applied"] == 2 and table.info["ignored_outside_train_val"] == 1


# ----------------------------------------------------------------------------- soft-dist noise export


def _run_dir(tmp_path, shards, overrides):
    """A run directory as `soft-dist train` leaves it before the first epoch: config.yaml + noise_table.csv."""
    from soft_dist.storage import RunStore
    from soft_dist.run_inputs import write_run_inputs
    from soft_dist.noise.setup import make_noise_table

    cfg = load_config(None, [f"data.shards={shards}", *overrides])
    table, _ = make_noise_table(cfg)
    run = tmp_path / "run"
    write_run_inputs(RunStore(run), cfg, table)
    return run, table


def _read_back(shards, path, fmt, data_overrides):
    from soft_dist.noise.setup import make_noise_table

    cfg = load_config(None, [f"data.shards={shards}", "noise.kind=file", f"noise.file={path}",
                             f"noise.file_format={fmt}", *data_overrides])
    return make_noise_table(cfg)[0]


@pytest.mark.parametrize("data_overrides", [[], ["data.val_fraction=0.2", "data.split_seed=4"]])
def test_export_then_read_back_gives_the_same_noise_digits(digit_shards, tmp_path, capsys, data_overrides):
    from soft_dist.cli import main

    run, table = _run_dir(tmp_path, digit_shards,
                          ["noise.kind=symmetric", "noise.rate=0.3", "noise.seed=3", *data_overrides])
    assert table.flipped.sum() > 300
    for fmt in ("table", "paths", "soft"):
        out = tmp_path / f"noise.{fmt}.txt"
        assert main(["noise", "export", str(run), "--format", fmt, "--out", str(out)]) == 0
        back = _read_back(digit_shards, out, fmt, data_overrides)
        assert (back.idx == table.idx).all() and (back.clean == table.clean).all()
        assert (back.noisy == table.noisy).all(), fmt
        if fmt != "table":
            assert back.info["unlisted_kept_clean"] == 0 and back.info["flipped"] == table.flipped.sum()
    assert "noise.soft.txt: 1797 rows (soft)" in capsys.readouterr().out
    assert len((tmp_path / "noise.paths.txt").read_text().splitlines()) == len(table.idx)
    # rafdb is RAF-DB's format: an error that names the dataset
    assert main(["noise", "export", str(run), "--format", "rafdb", "--out", str(tmp_path / "x.txt")]) == 2
    assert "hold dataset 'digits'" in capsys.readouterr().err and not (tmp_path / "x.txt").exists()


def test_a_folder_without_the_run_inputs_is_refused_by_name(digit_shards, tmp_path, capsys):
    """`soft-dist noise export` and `soft-dist train --resume` name the file a run directory lacks, before
    reading anything else (config.yaml first, then noise_table.csv)."""
    from soft_dist.cli import main

    run, _ = _run_dir(tmp_path, digit_shards, ["noise.kind=symmetric", "noise.rate=0.3"])
    (run / "noise_table.csv").unlink()
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, missing in ((run, "noise_table.csv"), (empty, "config.yaml")):
        assert main(["noise", "export", str(folder), "--format", "table", "--out", str(tmp_path / "n.csv")]) == 2
        assert f"{folder} is not a run directory (no {missing})" in capsys.readouterr().err
        assert main(["train", "--resume", str(folder)]) == 2
        err = capsys.readouterr().err
        assert f"option '--resume': {folder} is not a run directory (no {missing})" in err and "Traceback" not in err
    assert not (tmp_path / "n.csv").exists() and sorted(p.name for p in run.iterdir()) == ["config.yaml"]


def test_export_then_read_back_gives_the_same_noise_rafdb(raf_shards, tmp_path):
    from soft_dist.cli import main

    run, table = _run_dir(tmp_path, raf_shards, ["noise.kind=symmetric", "noise.rate=0.5", "noise.seed=1"])
    assert table.flipped.sum() >= 7
    index = read_sample_index(*_splits(raf_shards))
    noisy = dict(zip(table.idx.tolist(), table.noisy.tolist()))
    for fmt in ("rafdb", "soft"):
        out = tmp_path / f"{fmt}.txt"
        assert main(["noise", "export", str(run), "--format", fmt, "--out", str(out)]) == 0
        rows = [line.split() for line in out.read_text().splitlines()]
        written = {name: int(label) for name, label in rows}
        for p, src in enumerate(index.source):
            name = src.rsplit("/", 1)[1].replace("_aligned", "")
            if int(index.idx[p]) in noisy:  # RAF-DB's own number of the noisy class, under RAF-DB's name
                assert written[name] == RAF_NUMBER[index.classes[noisy[int(index.idx[p])]]]
            elif fmt == "soft":  # the test images too, with their clean labels, as in the authors' files
                assert written[name] == RAF_NUMBER[index.classes[index.clean[p]]]
            else:
                assert name not in written  # rafdb lists hold training images only
        assert len(rows) == (20 if fmt == "rafdb" else 25)
        back = _read_back(raf_shards, out, fmt, [])
        assert (back.idx == table.idx).all() and (back.noisy == table.noisy).all()


def test_command_formats_match_the_config_choices():
    import dataclasses

    from soft_dist.cli.noise import FORMATS
    from soft_dist.config import NoiseConfig
    from soft_dist.noise.lists import FILE_FORMATS

    choices = {f.name: f.metadata.get("choices") for f in dataclasses.fields(NoiseConfig)}["file_format"]
    assert FORMATS == FILE_FORMATS == tuple(choices)
