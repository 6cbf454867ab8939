"""digits -> shards -> read back (tarfile, webdataset, DALI); bad inputs; resume; parallel = serial;
MTCNN inside the builder; verify."""

import json
import math
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import soft_dist
from soft_dist.shard import build as build_mod
from soft_dist.shard.build import ShardConfig, build_shards
from soft_dist.data.format import decode_int64, load_manifest, sample_key
from soft_dist.shard.verify import verify_shards

DIGITS = dict(layout="digits", size=16, shard_size=300, min_shards=3, workers=1, progress=False)


def _tar_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))} | \
        {p.name: p.read_bytes() for p in sorted(out.glob("*.idx"))}


def _read_tar(path):
    samples = {}
    with tarfile.open(path) as tar:
        for m in tar:
            key, _, ext = m.name.partition(".")
            samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


@pytest.fixture(scope="module")
def digits_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    build_shards(ShardConfig(out=str(out), **DIGITS), log=lambda m: None)
    return out


def test_manifest(digits_out):
    m = json.loads((digits_out / "manifest.json").read_text())
    assert m["dataset"] == "digits" and m["classes"] == list("0123456789")
    assert {s: v["num_samples"] for s, v in m["splits"].items()} == {"train": 1258, "val": 179, "test": 360}
    train = m["splits"]["train"]
    assert [s["name"] for s in train["shards"]] == [f"train-{i:06d}.tar" for i in range(5)]  # ceil(1258/300)
    assert sum(train["class_counts"].values()) == 1258 and set(train["class_counts"]) == set(m["classes"])
    assert len(m["splits"]["val"]["shards"]) == 3  # min_shards
    for split in m["splits"].values():
        for s in split["shards"]:
            assert len(s["sha256"]) == 64 and (digits_out / s["name"]).with_suffix(".idx").is_file()
    assert m["num_indices"] == 1797
    assert m["alignment"]["method"] == "none" and m["alignment"]["failures"] == 0
    assert m["args"]["size"] == 16 and m["package"]["version"] == soft_dist.__version__
    assert not (digits_out / ".shard-progress.json").exists()
    assert load_manifest(digits_out).split("test").num_samples == 360  # the reader contract accepts it


def test_read_back_with_tarfile(digits_out):
    from sklearn.datasets import load_digits

    target = load_digits().target
    m = load_manifest(digits_out)
    seen = set()
    for split in m.splits.values():
        counts = dict.fromkeys(m.classes, 0)
        for shard in split.shards:
            samples = _read_tar(digits_out / shard.name)
            assert len(samples) == shard.num_samples
            for key, parts in samples.items():
                label, idx = decode_int64(parts["cls"]), decode_int64(parts["idx"])
                meta = json.loads(parts["json"])
                assert key == sample_key(idx) and idx not in seen
                seen.add(idx)
                # the clean label is the digit sklearn gives for that source image
                assert label == target[int(meta["source"].split("#")[1])] == meta["label"]
                assert meta["split"] == split.name and meta["dataset"] == "digits"
                assert Image.open(__import__("io").BytesIO(parts["jpg"])).size == (16, 16)
                counts[m.classes[label]] += 1
        assert counts == split.class_counts
    assert seen == set(range(1797))  # unique across splits, nothing lost


def test_read_back_with_webdataset(digits_out):
    import webdataset as wds

    m = load_manifest(digits_out)
    for name, split in m.splits.items():
        urls = [str(p) for p in m.shard_paths(name)]
        ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False).to_tuple("__key__", "cls", "idx")
        rows = [(k, decode_int64(c), decode_int64(i)) for k, c, i in ds]
        assert len(rows) == split.num_samples
        assert all(k == sample_key(i) for k, _, i in rows)
        counts = np.bincount([c for _, c, _ in rows], minlength=10)
        assert dict(zip(m.classes, counts.tolist())) == split.class_counts


def test_read_back_with_dali_and_index_files(digits_out):
    from nvidia.dali import fn, pipeline_def, types

    m = load_manifest(digits_out)
    expected = {}
    for shard in m.split("train").shards:
        for parts in _read_tar(digits_out / shard.name).values():
            expected[decode_int64(parts["idx"])] = decode_int64(parts["cls"])

    @pipeline_def(batch_size=100, num_threads=1, device_id=None)
    def pipe():
        jpg, cls, idx = fn.readers.webdataset(
            paths=[str(p) for p in m.shard_paths("train")], index_paths=[str(p) for p in m.index_paths("train")],
            ext=["jpg", "cls", "idx"], dtypes=[types.UINT8, types.INT64, types.INT64],
            missing_component_behavior="error", pad_last_batch=True, name="reader")
        return fn.decoders.image(jpg, device="cpu"), cls, idx

    p = pipe()
    p.build()
    n = p.epoch_size("reader")
    assert n == 1258
    got = {}
    for _ in range(math.ceil(n / 100)):
        images, cls, idx = p.run()
        for i in range(len(idx)):
            assert images.at(i).shape == (16, 16, 3)
            got[int(np.array(idx.at(i))[0])] = int(np.array(cls.at(i))[0])
    assert got == expected


def test_parallel_workers_give_identical_shards(digits_out, tmp_path):
    out = tmp_path / "par"
    build_shards(ShardConfig(out=str(out), **{**DIGITS, "workers": 2}), log=lambda m: None)
    assert _tar_bytes(out) == _tar_bytes(digits_out)


def test_interrupted_run_resumes_byte_identical(digits_out, tmp_path, monkeypatch):
    out = tmp_path / "resume"
    real_write, calls = build_mod.write_shard, []

    def dying_write(path, samples, **kw):
        if len(calls) == 4:  # the 5th shard: half-written, then the process "dies"
            Path(str(path) + ".partial").write_bytes(b"half a tar")
            raise KeyboardInterrupt
        calls.append(path.name)
        return real_write(path, samples, **kw)

    monkeypatch.setattr(build_mod, "write_shard", dying_write)
    with pytest.raises(KeyboardInterrupt):
        build_shards(ShardConfig(out=str(out), **DIGITS), log=lambda m: None)
    assert not (out / "manifest.json").exists() and (out / ".shard-progress.json").exists()
    assert len(list(out.glob("*.tar"))) == 4 and list(out.glob("*.partial"))  # never under a final name
    kept = {name: (out / name).stat().st_mtime_ns for name in calls}

    monkeypatch.setattr(build_mod, "write_shard", real_write)
    m = build_shards(ShardConfig(out=str(out), **DIGITS), log=lambda m: None)
    assert m["build"]["shards_kept"] == 4 and m["build"]["shards_written"] == 7
    assert {name: (out / name).stat().st_mtime_ns for name in calls} == kept  # not rewritten
    assert not list(out.glob("*.partial"))
    assert _tar_bytes(out) == _tar_bytes(digits_out)
    assert verify_shards(out)["ok"]
    # a complete set rerun keeps everything; a damaged shard is redone
    (out / "test-000001.tar").write_bytes(b"damaged")
    m = build_shards(ShardConfig(out=str(out), **DIGITS), log=lambda m: None)
    assert m["build"]["shards_written"] == 1 and _tar_bytes(out) == _tar_bytes(digits_out)


def test_verify_finds_tampering(digits_out, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(digits_out, out)
    assert verify_shards(out) == {"ok": True, "errors": [], "num_samples": 1797, "num_shards": 11}
    data = bytearray((out / "val-000001.tar").read_bytes())
    data[600] ^= 0xFF  # one flipped byte inside the first JPEG
    (out / "val-000001.tar").write_bytes(bytes(data))
    (out / "test-000002.tar").unlink()
    m = json.loads((out / "manifest.json").read_text())
    m["splits"]["train"]["class_counts"]["3"] += 1
    m["splits"]["train"]["class_counts"]["4"] -= 1
    (out / "manifest.json").write_text(json.dumps(m))
    errors = verify_shards(out)["errors"]
    assert any("val-000001.tar: sha256" in e for e in errors)
    assert any("test-000002.tar: missing" in e for e in errors)
    assert any("split 'train': class counts" in e for e in errors)



@pytest.mark.parametrize("bounded", [True, False])
def test_verify_finds_an_idx_repeated_in_another_shard(digits_out, tmp_path, bounded):
    """Repeats are found with a flag per idx below the manifest's num_indices, or a set without one."""
    out = tmp_path / "copy"
    shutil.copytree(digits_out, out)
    for ext in ("tar", "idx"):
        shutil.copy(out / f"test-000001.{ext}", out / f"test-000002.{ext}")
    m = json.loads((out / "manifest.json").read_text())
    if not bounded:
        del m["num_indices"]
    (out / "manifest.json").write_text(json.dumps(m))
    errors = verify_shards(out)["errors"]
    assert any(e.startswith("test-000002.tar:") and "appears twice" in e for e in errors)
    assert not any("appears twice" in e for e in errors if not e.startswith("test-000002.tar:"))

def _faces(n):
    import skimage.data

    faces = skimage.data.lfw_subset()[:n]
    return [Image.fromarray((f * 255).astype(np.uint8)).convert("RGB").resize((64, 64)) for f in faces]


def test_bad_inputs_are_counted_not_fatal(tmp_path):
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    rows = ["path,label,split"]
    for i, face in enumerate(_faces(6)):
        face.save(root / "img" / f"ok{i}.jpg", quality=90)
        rows.append(f"img/ok{i}.jpg,{'ab'[i % 2]},{'train' if i < 4 else 'test'}")
    (root / "img" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg at all")
    full = (root / "img" / "ok0.jpg").read_bytes()
    (root / "img" / "truncated.jpg").write_bytes(full[: len(full) // 2])
    rows += ["img/corrupt.jpg,a,train", "img/truncated.jpg,b,train", "img/missing.jpg,a,train", "img/ok5.jpg,zzz,test"]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    m = build_shards(ShardConfig(layout="csv", root=str(root), out=str(out), size=24, align="none",
                                 classes=["a", "b"], min_shards=2, val_fraction=0.25, progress=False, workers=1),
                     log=lambda m: None)
    failed = {f["source"]: f["reason"] for f in m["alignment"]["failed_files"]}
    assert set(failed) == {"img/corrupt.jpg", "img/truncated.jpg"}
    assert "truncated" in failed["img/truncated.jpg"].lower()
    problems = {p["source"]: p["reason"] for p in m["input_problems"]["items"]}
    assert problems["img/missing.jpg"] == "listed but missing" and "unknown label 'zzz'" in problems["img/ok5.jpg"]
    total = sum(s["num_samples"] for s in m["splits"].values())
    assert total == 6 and m["num_indices"] == 8  # failures leave gaps in idx, never duplicates
    assert verify_shards(out, decode=True)["ok"]


def test_mtcnn_alignment_in_the_builder(tmp_path):
    root = tmp_path / "folder"
    for i, face in enumerate(_faces(4)):
        (root / "train" / "face").mkdir(parents=True, exist_ok=True)
        face.save(root / "train" / "face" / f"{i}.jpg")
    (root / "train" / "blank").mkdir()
    Image.new("RGB", (64, 48), (120, 120, 120)).save(root / "train" / "blank" / "grey.jpg")
    cfg = dict(layout="imagefolder", root=str(root), size=32, align="mtcnn", min_shards=1, val_fraction=0,
               progress=False, workers=1)
    m = build_shards(ShardConfig(out=str(tmp_path / "crop"), **cfg), log=lambda m: None)
    a = m["alignment"]
    assert a["faces_found"] >= 3 and "train/blank/grey.jpg" in a["fallback_files"]
    assert a["faces_found"] + a["fallbacks"] == 5 == m["splits"]["train"]["num_samples"]
    metas = [json.loads(p["json"]) for p in _read_tar(tmp_path / "crop" / "train-000000.tar").values()]
    aligned = [x for x in metas if x["align"] == "mtcnn"]
    assert len(aligned) == a["faces_found"]
    assert all(len(x["landmarks"]) == 5 and x["score"] > 0.5 and len(x["box"]) == 4 for x in aligned)
    assert [x["align"] for x in metas if x["source"] == "train/blank/grey.jpg"] == ["centre-crop"]

    m = build_shards(ShardConfig(out=str(tmp_path / "skip"), on_no_face="skip", **cfg), log=lambda m: None)
    assert m["alignment"]["skipped_files"] == ["train/blank/grey.jpg"]
    assert m["splits"]["train"]["num_samples"] == m["alignment"]["faces_found"]



def test_an_mtcnn_build_after_one_without_alignment_forks_from_a_server_with_torch_loaded(digits_out, tmp_path):
    """A fork server keeps the imports it started with. After a 2-process build without alignment, a
    2-process MTCNN build must start a new server that imports torch and facenet once, not fork workers
    that each import them (that made 2 processes slower than 1 in `bench shard`)."""
    from multiprocessing import forkserver

    build_shards(ShardConfig(out=str(tmp_path / "plain"), **{**DIGITS, "workers": 2}), log=lambda m: None)
    plain_server = forkserver._forkserver._forkserver_pid
    assert plain_server is not None and "torch" not in build_mod._SERVER_PRELOAD
    root = tmp_path / "folder" / "train" / "face"
    root.mkdir(parents=True)
    for i, face in enumerate(_faces(4)):
        face.save(root / f"{i}.jpg")
    m = build_shards(ShardConfig(layout="imagefolder", root=str(tmp_path / "folder"), out=str(tmp_path / "crop"),
                                 size=32, align="mtcnn", min_shards=2, val_fraction=0, progress=False, workers=2),
                     log=lambda m: None)
    assert m["alignment"]["faces_found"] >= 3
    assert forkserver._forkserver._forkserver_pid not in (None, plain_server)
    assert {"torch", "facenet_pytorch"} <= set(build_mod._SERVER_PRELOAD)

def test_progress_in_a_log_is_lines_not_carriage_return_frames(tmp_path):
    """`soft-dist shard ... > log 2>&1`: stderr is a file, not a terminal."""
    import subprocess
    import sys

    log = tmp_path / "shard.log"
    with log.open("w") as f:
        subprocess.run([sys.executable, "-m", "soft_dist", "shard", "--layout", "digits", "--size", "8",
                        "--out", str(tmp_path / "out"), "--shard-size", "100", "--workers", "1"],
                       stdout=f, stderr=subprocess.STDOUT, check=True)
    text = log.read_text()
    assert "\r" not in text
    progress = [line for line in text.splitlines() if line.startswith("shard digits: ")]
    assert 3 <= len(progress) <= 11 and "(100%)" in progress[-1], text
