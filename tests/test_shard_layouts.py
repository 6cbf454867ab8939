"""Each layout reader on a tiny fixture written in that layout's real file format."""

import csv
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from shard_fixtures import write_rafdb_root

from soft_dist.shard.layouts import (FER_CLASSES, LayoutError, carve_val, ferplus_majority, read_layout)


def _jpeg(path, seed=0, size=(20, 24)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(path, quality=90)


def _by_source(dataset):
    return {r.source: r for r in dataset.records}


def test_rafdb(tmp_path):
    lines = ["train_00001.jpg 1", "train_00002.jpg 7", "train_00003.jpg 4", "test_0001.jpg 6",
             "test_0002.jpg 9",  # unknown label
             "train_00004.jpg 2"]  # listed, file missing
    (tmp_path / "EmoLabel").mkdir()
    (tmp_path / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    for i, name in enumerate(["train_00001", "train_00002", "train_00003", "test_0001", "test_0002"]):
        _jpeg(tmp_path / "Image" / "aligned" / f"{name}_aligned.jpg", i)
        _jpeg(tmp_path / "Image" / "original" / f"{name}.jpg", i)

    ds = read_layout("rafdb", tmp_path, align="none")
    assert ds.classes == FER_CLASSES[:7] and ds.default_align == "none"
    recs = _by_source(ds)
    r = recs["Image/aligned/train_00001_aligned.jpg"]  # RAF-DB 1 = surprise
    assert (r.split, ds.classes[r.label], r.orig_index) == ("train", "surprise", 1)
    assert ds.classes[recs["Image/aligned/train_00002_aligned.jpg"].label] == "neutral"  # 7
    assert ds.classes[recs["Image/aligned/train_00003_aligned.jpg"].label] == "happiness"  # 4
    t = recs["Image/aligned/test_0001_aligned.jpg"]
    assert (t.split, ds.classes[t.label]) == ("test", "anger")  # 6
    reasons = {p["source"]: p["reason"] for p in ds.problems}
    assert "unknown label 9" in reasons["test_0002.jpg"]
    assert reasons["Image/aligned/train_00004_aligned.jpg"] == "listed but missing"
    # with MTCNN the original photos are read
    ds = read_layout("rafdb", tmp_path, align="mtcnn")
    assert "Image/original/train_00001.jpg" in _by_source(ds) and ds.default_align == "mtcnn"


AFFECTNET_HEADER = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                    "facial_landmarks", "expression", "valence", "arousal"]


def _affectnet(root):
    rows = {"training.csv": [("1/a.jpg", 0), ("1/b.jpg", 1), ("2/c.jpg", 7), ("2/d.jpg", 8), ("2/e.jpg", 10),
                             ("3/f.jpg", 6), ("3/missing.jpg", 3)],
            "validation.csv": [("4/g.jpg", 2), ("4/h.jpg", 9)]}
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True)
    for name, entries in rows.items():
        with open(lists / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(AFFECTNET_HEADER)
            for i, (rel, expr) in enumerate(entries):
                w.writerow([rel, 2, 3, 15, 16, "1;2;3", expr, 0.1, -0.2])
                if "missing" not in rel:
                    _jpeg(root / "Manually_Annotated_Images" / rel, i)


def test_affectnet_8_and_7_classes(tmp_path):
    _affectnet(tmp_path)
    ds = read_layout("affectnet", tmp_path, affectnet_classes=8)
    recs = _by_source(ds)
    assert ds.classes == FER_CLASSES
    assert sorted(recs) == ["1/a.jpg", "1/b.jpg", "2/c.jpg", "3/f.jpg", "4/g.jpg"]
    assert ds.classes[recs["1/b.jpg"].label] == "happiness" and recs["1/b.jpg"].orig_index == 1
    assert ds.classes[recs["3/f.jpg"].label] == "anger"  # AffectNet 6 = anger
    assert ds.classes[recs["4/g.jpg"].label] == "sadness" and recs["4/g.jpg"].split == "test"
    assert recs["1/a.jpg"].box == (2.0, 3.0, 17.0, 19.0)
    assert ds.notes["dropped_by_label"] == {"none": 1, "non-face": 1, "uncertain": 1}
    assert [p["source"] for p in ds.problems] == ["3/missing.jpg"]
    ds7 = read_layout("affectnet", tmp_path, affectnet_classes=7)
    assert ds7.classes == FER_CLASSES[:7] and "2/c.jpg" not in _by_source(ds7)
    assert ds7.notes["dropped_by_label"]["contempt"] == 1


def test_ferplus_majority_rule():
    v = lambda **kw: [kw.get(c, 0) for c in ("ne", "ha", "su", "sa", "an", "di", "fe", "co", "un", "nf")]
    assert ferplus_majority(v(ha=8, su=2)) == 1
    assert ferplus_majority(v(ne=4, ha=4, su=2)) is None  # tie: no strict majority, dropped
    assert ferplus_majority(v(ne=5, ha=5)) is None  # exactly half is not a majority
    # single votes are outliers: 4 of 10 becomes 4 of 4
    assert ferplus_majority(v(ne=4, ha=1, su=1, sa=1, an=1, di=1, fe=1)) == 0
    assert ferplus_majority(v(un=7, ne=3)) is None and ferplus_majority(v(nf=10)) is None
    assert ferplus_majority(v(co=6, an=2)) == 7


def test_ferplus(tmp_path):
    rng = np.random.default_rng(0)
    px = lambda: " ".join(map(str, rng.integers(0, 256, 48 * 48)))
    old = [(0, px(), "Training"), (3, px(), "Training"), (4, px(), "PublicTest"), (6, px(), "PrivateTest"),
           (2, px(), "Training"), (5, "1 2 3", "Training")]
    votes = [[0, 10, 0, 0, 0, 0, 0, 0, 0, 0], [4, 4, 2, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 9, 1, 0, 0, 0, 0, 0],
             [0, 0, 0, 0, 0, 0, 0, 0, 0, 10], [0, 0, 0, 0, 0, 0, 0, 6, 2, 2], [10, 0, 0, 0, 0, 0, 0, 0, 0, 0]]
    with open(tmp_path / "fer2013.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["emotion", "pixels", "Usage"])
        w.writerows(old)
    with open(tmp_path / "fer2013new.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Usage", "Image name", "neutral", "happiness", "surprise", "sadness", "anger", "disgust",
                    "fear", "contempt", "unknown", "NF"])
        for i, (row, vote) in enumerate(zip(old, votes)):
            w.writerow([row[2], f"fer{i:07d}.png", *vote])
    ds = read_layout("ferplus", tmp_path)
    recs = _by_source(ds)
    assert ds.classes == FER_CLASSES and ds.default_align == "none"
    assert sorted(recs) == ["fer2013.csv#00000", "fer2013.csv#00002", "fer2013.csv#00004"]
    assert ds.classes[recs["fer2013.csv#00000"].label] == "happiness" and recs["fer2013.csv#00000"].split == "train"
    assert ds.classes[recs["fer2013.csv#00002"].label] == "sadness" and recs["fer2013.csv#00002"].split == "val"
    assert ds.classes[recs["fer2013.csv#00004"].label] == "contempt"
    assert recs["fer2013.csv#00000"].pixels.shape == (48, 48)
    assert ds.notes["dropped_by_label"] == {"no majority / unknown": 1, "not-a-face": 1}
    assert [p["source"] for p in ds.problems] == ["fer2013.csv#00005"]  # 3 pixels, not 2304


def test_imagefolder_sorted_and_given_class_order(tmp_path):
    for split in ("train", "test"):
        for cls in ("dog", "cat"):
            for i in range(2):
                _jpeg(tmp_path / split / cls / f"{i}.jpg", i)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    ds = read_layout("imagefolder", tmp_path)
    assert ds.classes == ("cat", "dog") and len(ds.records) == 8
    assert {r.split for r in ds.records} == {"train", "test"}
    r = _by_source(ds)["train/dog/1.jpg"]
    assert (ds.classes[r.label], r.orig_label) == ("dog", "dog")
    ds = read_layout("imagefolder", tmp_path, classes=["dog"])
    assert ds.classes == ("dog",) and len(ds.records) == 4
    assert len(ds.problems) == 4 and all("unknown label 'cat'" in p["reason"] for p in ds.problems)


def test_csv_layout(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        _jpeg(tmp_path / "img" / name)
    (tmp_path / "labels.csv").write_text(
        "path,label,split\nimg/a.jpg,2,train\nimg/b.jpg,10,test\nimg/c.jpg,2,val\nimg/gone.jpg,2,train\n"
        "img/d.jpg,2,holdout\n")
    ds = read_layout("csv", tmp_path)
    assert ds.classes == ("2", "10")  # integer names sort numerically
    assert {r.source: r.split for r in ds.records} == {"img/a.jpg": "train", "img/b.jpg": "test", "img/c.jpg": "val"}
    reasons = {p["source"]: p["reason"] for p in ds.problems}
    assert reasons == {"img/gone.jpg": "listed but missing", "img/d.jpg": "unknown split 'holdout' (use train, val or test)"}
    # no split column: everything is train
    (tmp_path / "two.csv").write_text("path,label\nimg/a.jpg,x\nimg/b.jpg,y\n")
    ds = read_layout("csv", tmp_path, csv_file="two.csv", classes=["y", "x"])
    assert [(r.split, r.label) for r in ds.records] == [("train", 1), ("train", 0)]


def test_digits_and_carved_val():
    ds = read_layout("digits", None, seed=0)
    assert len(ds.records) == 1797 and ds.classes == tuple("0123456789")
    sizes = {s: sum(r.split == s for r in ds.records) for s in ("train", "val", "test")}
    assert sizes == {"train": 1258, "val": 179, "test": 360}
    # carving val out of train: stratified, seeded, only when there is no val
    for r in ds.records:
        r.split = "train" if r.split == "val" else r.split
    carve_val(ds.records, 0.1, seed=3)
    val = [r for r in ds.records if r.split == "val"]
    assert len(val) == pytest.approx(0.1 * 1437, abs=10)
    assert np.bincount([r.label for r in val], minlength=10).min() >= 12


def test_harder_digits_are_the_same_samples_with_a_lost_patch_and_noise():
    easy, hard = read_layout("digits", None, seed=0), read_layout("digits_hard", None, seed=0)
    assert [(r.source, r.split, r.label) for r in hard.records] == [(r.source, r.split, r.label) for r in easy.records]
    again = read_layout("digits_hard", None, seed=0)
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(hard.records, again.records))  # seeded
    diff = np.stack([h.pixels.astype(int) - e.pixels.astype(int) for h, e in zip(hard.records, easy.records)])
    assert 5 < np.abs(diff).mean() < 40  # changed, but still digits


def test_a_digits_subset_keeps_the_named_digits_in_their_order_and_splits():
    """--classes 6,0,1,2,3,4,5 on a digits layout: 7 classes (the paper's count), labels renumbered in the
    given order, every kept image in the split and with the pixels it has in the 10-class set."""
    full = read_layout("digits_hard", None, seed=0)
    sub = read_layout("digits_hard", None, seed=0, classes=["6", "0", "1", "2", "3", "4", "5"])
    assert sub.classes == ("6", "0", "1", "2", "3", "4", "5")
    same = [r for r in full.records if r.orig_label in sub.classes]
    assert [(r.source, r.split) for r in sub.records] == [(r.source, r.split) for r in same]
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(sub.records, same))
    assert [sub.classes[r.label] for r in sub.records] == [r.orig_label for r in same]
    assert sub.notes == {"classes_left_out": ["7", "8", "9"], "images_left_out": len(full.records) - len(same)}
    for bad in (["0", "11"], ["1", "1"], ["a"]):
        with pytest.raises(LayoutError, match="--classes must name distinct digits"):
            read_layout("digits", None, classes=bad)


def test_a_lost_patch_is_black_before_the_noise():
    from soft_dist.shard.digits import harden_digits

    grey = np.full((50, 8, 8), 200, dtype=np.uint8)
    out = harden_digits(grey, seed=1, noise_sd=0.0)
    assert ((out == 0).sum(axis=(1, 2)) == 4).all() and ((out == 200).sum(axis=(1, 2)) == 60).all()


@pytest.mark.parametrize("layout,expected", [
    ("rafdb", "EmoLabel/list_patition_label.txt"), ("affectnet", "training.csv"),
    ("ferplus", "fer2013new.csv"), ("imagefolder", "train/<class>/<image>"), ("csv", "labels.csv")])
def test_wrong_root_is_a_clear_error(tmp_path, layout, expected):
    (tmp_path / "something.txt").write_text("x")
    with pytest.raises(LayoutError, match=expected.replace("/", ".").replace("<", ".").replace(">", ".")):
        read_layout(layout, tmp_path)


def test_cli_reports_a_wrong_root(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "soft_dist", "shard", "--layout", "rafdb", "--root", str(tmp_path),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "rafdb layout: expected the label list EmoLabel/list_patition_label.txt" in proc.stderr


def test_cli_end_to_end_rafdb_and_verify(tmp_path, capsys):
    """RAF-DB fixture -> `soft-dist shard` -> manifest keeps the dataset's labels -> `--verify` passes,
    then fails once a shard is damaged."""
    import json

    from soft_dist.cli import main

    names = [f"train_{i:05d}" for i in range(1, 21)] + [f"test_{i:04d}" for i in range(1, 6)]
    root = write_rafdb_root(tmp_path / "raf", [(f"{n}.jpg", i % 7 + 1) for i, n in enumerate(names)])
    out = tmp_path / "out"
    argv = ["shard", "--layout", "rafdb", "--root", str(root), "--out", str(out), "--size", "24",
            "--min-shards", "2", "--val-fraction", "0.25", "--workers", "1", "--no-progress"]
    assert main(argv) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["alignment"]["method"] == "none" and m["notes"]["image_dir"] == "aligned" and m["notes"]["val_carved"]
    # stratified: 25% of each class (six classes of 3 -> 1 each, one class of 2 -> round(0.5) = 0)
    assert {s: v["num_samples"] for s, v in m["splits"].items()} == {"train": 14, "val": 6, "test": 5}
    assert m["label_map"]["1"] == "surprise" and m["classes"] == list(FER_CLASSES[:7])
    import tarfile

    with tarfile.open(out / m["splits"]["test"]["shards"][0]["name"]) as tar:
        metas = [json.loads(tar.extractfile(x).read()) for x in tar if x.name.endswith(".json")]
    for meta in metas:  # the canonical label and RAF-DB's own number agree through the class map
        assert meta["class"] == m["label_map"][str(meta["orig_index"])] == m["classes"][meta["label"]]
    assert main(["shard", "--verify", str(out)]) == 0
    assert "OK: 25 samples" in capsys.readouterr().out
    shard = out / m["splits"]["train"]["shards"][0]["name"]
    shard.write_bytes(shard.read_bytes()[:-1024])
    assert main(["shard", "--verify", str(out)]) == 1
    assert "sha256 differs" in capsys.readouterr().err


def test_affectnet_build_uses_the_face_box(tmp_path):
    import json
    import tarfile

    from soft_dist.shard.build import ShardConfig, build_shards

    _affectnet(tmp_path / "an")
    m = build_shards(ShardConfig(layout="affectnet", root=str(tmp_path / "an"), out=str(tmp_path / "out"),
                                 size=16, align="none", min_shards=1, val_fraction=0, workers=1, progress=False),
                     log=lambda msg: None)
    assert {s: v["num_samples"] for s, v in m["splits"].items()} == {"train": 4, "test": 1}
    assert m["input_problems"]["count"] == 1 and m["notes"]["dropped_by_label"]["non-face"] == 1
    with tarfile.open(tmp_path / "out" / "train-000000.tar") as tar:
        metas = [json.loads(tar.extractfile(x).read()) for x in tar if x.name.endswith(".json")]
    assert [x["box"] for x in metas] == [[2.0, 3.0, 17.0, 19.0]] * 4
    assert sorted(x["orig_index"] for x in metas) == [0, 1, 6, 7]
