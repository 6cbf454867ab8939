"""`soft-dist predict` on real images: digit photos written from the same source pixels as the test shards
get the probabilities `soft-dist eval`'s pipeline gives their shard samples; real face photos are aligned
exactly as `soft-dist shard` aligns them; Ray Data gives the same rows as one process; onnxruntime the same
probabilities as PyTorch; bad inputs get rows, bad options exit 2 naming what is wrong."""

from __future__ import annotations

import csv
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from soft_dist.cli import main
from soft_dist.serve.classifier import load_spec
from soft_dist.serve.faces import AlignSettings, FacePreparer
from soft_dist.serve.predict import in_input_order

PHOTOS = 48  # real digit photos per test (the test split has 360)
PROB_TOLERANCE = 2e-6  # the CSV keeps 6 decimals


def _test_split_sources(shards) -> list[tuple[int, int]]:
    """(idx, position in scikit-learn's digits) of every sample in the shards' test split, from the
    samples' own metadata (source "digits#NNNN")."""
    found = []
    for tar_path in sorted(shards.glob("test-*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    found.append((int(member.name.split(".")[0]), int(meta["source"].split("#")[1])))
    return sorted(found)


@pytest.fixture(scope="module")
def digit_photos(digit_shards, tmp_path_factory):
    """PNG files of the first PHOTOS test samples holding the very pixels the sharder read (8x8, lossless),
    named by the sample's idx; plus a corrupt JPEG and a text file."""
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("digit-photos")
    grey = (load_digits().images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # as the digits layout reads them
    for idx, position in _test_split_sources(digit_shards)[:PHOTOS]:
        Image.fromarray(grey[position]).convert("RGB").save(folder / f"{idx:09d}.png")
    (folder / "zz-broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not a photo\n")
    return folder


def _read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _probabilities(rows: list[dict], classes) -> np.ndarray:
    return np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows])


def _eval_pipeline_probabilities(run_dir, shards) -> dict[int, np.ndarray]:
    """idx -> class probabilities [C] of every test sample through `soft-dist eval`'s pipeline (the torch
    eval loader on the shards, the model's eval view, the network)."""
    from soft_dist.data.loader import build_eval_loader
    from soft_dist.serve.evaluate import eval_view
    from soft_dist.serve.network import build_network, read_model

    model = read_model(run_dir)
    net = build_network(model)
    loader = build_eval_loader(shards, "test", eval_view(model.meta, "torch", 1), 128)
    out = {}
    try:
        with torch.no_grad():
            for batch in loader.epoch(0):
                probs = torch.softmax(net(batch.image), dim=1).numpy()
                for i, p in zip(batch.idx[batch.valid].tolist(), probs[batch.valid.numpy()]):
                    out[i] = p
    finally:
        loader.close()
    return out


def test_photos_get_the_probabilities_of_their_shard_samples(reference_run, digit_shards, digit_photos,
                                                             tmp_path):
    out = tmp_path / "pred.csv"
    missing = tmp_path / "nowhere.png"
    assert main(["predict", str(reference_run), str(digit_photos), str(digit_photos / "notes.txt"),
                 str(missing), str(tmp_path / "*.nomatch"), "--out", str(out), "--runner", "local",
                 "--no-progress"]) == 0
    rows = _read_csv(out)
    classes = load_spec(str(reference_run), "torch").classes
    # the folder's PNGs and the broken JPEG (the folder's text file is left out), then the named paths
    assert len(rows) == PHOTOS + 4
    photos, (broken, text, absent, pattern) = rows[:PHOTOS], rows[PHOTOS:]
    assert broken["status"] == text["status"] == "unreadable" and "cannot identify" in text["error"]
    assert broken["predicted"] == "" and broken["prob_0"] == ""
    assert (absent["status"], absent["error"]) == ("missing", "no such file")
    assert (pattern["status"], pattern["error"]) == ("missing", "no file matches this pattern")

    assert {r["status"] for r in photos} == {"ok"} and {r["face_found"] for r in photos} == {""}
    reference = _eval_pipeline_probabilities(reference_run, digit_shards)
    idx = [int(r["path"].rsplit("/", 1)[1].split(".")[0]) for r in photos]
    expected = np.stack([reference[i] for i in idx])
    got = _probabilities(photos, classes)
    # same pixels as the shards (re-encoded at the shards' JPEG quality), so the same probabilities
    assert np.abs(got - expected).max() < PROB_TOLERANCE
    assert [r["predicted"] for r in photos] == [classes[i] for i in expected.argmax(1)]
    assert len({r["predicted"] for r in photos}) > 1  # a trained model, not one constant answer


def test_ray_data_gives_the_rows_of_one_process(reference_run, digit_photos, ray_cluster, tmp_path):
    local, ray_out = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    args = ["predict", str(reference_run), str(digit_photos), "--no-progress", "--batch-size", "16"]
    assert main([*args, "--out", str(local), "--runner", "local"]) == 0
    assert main([*args, "--out", str(ray_out), "--runner", "ray", "--align-actors", "1"]) == 0
    a, b = ([json.loads(line) for line in f.read_text().splitlines()] for f in (local, ray_out))
    assert len(b) == PHOTOS + 1 and b[-1]["status"] == "unreadable"
    # the same rows in the same order; probabilities may differ in the 6th decimal (one torch thread per
    # Ray actor, two in this process: another summation order)
    probs = lambda rows: np.array([list(r["probabilities"].values()) for r in rows[:PHOTOS]])  # noqa: E731
    drop = lambda r: {k: v for k, v in r.items() if k != "probabilities"}  # noqa: E731
    assert [drop(r) for r in a] == [drop(r) for r in b]
    assert np.abs(probs(a) - probs(b)).max() < 1e-5
    assert abs(sum(b[0]["probabilities"].values()) - 1) < 1e-4


def test_rows_go_out_in_input_order_as_soon_as_every_earlier_row_has_come():
    """Ray Data's batches may come in any order; each row is handed on once the rows before it are, so the
    writer never waits for the whole result (nor holds it)."""
    def batch(*positions):
        positions = np.array(positions)
        return {"order": positions, "path": np.array([f"p{i}" for i in positions], dtype=object),
                "box": np.stack([np.full(4, float(i)) for i in positions])}

    arrived = [batch(4, 5), batch(2, 0, 1), batch(6), batch(3, 7)]
    consumed = 0

    def feed():
        nonlocal consumed
        for b in arrived:
            consumed += 1
            yield b

    handed_on = []  # (batches consumed when the run went out, its paths)
    for run in in_input_order(feed()):
        assert "order" not in run and run["box"].shape == (len(run["path"]), 4)
        handed_on.append((consumed, [int(p[1:]) for p in run["path"]]))
    # 0-2 go out with the second batch; 3 only comes in the last one, and 4-5 and 6 wait for it
    assert handed_on == [(2, [0, 1, 2]), (4, [3]), (4, [4, 5]), (4, [6]), (4, [7])]
    for run in in_input_order(iter([batch(1, 0), batch(2)])):  # every column moves with its row
        assert run["box"][:, 0].tolist() == [float(p[1:]) for p in run["path"]]
    with pytest.raises(RuntimeError, match="row 1 never did"):
        list(in_input_order(iter([batch(0, 2)])))


def test_onnxruntime_backend_matches_pytorch(reference_run, reference_export, digit_photos, tmp_path):
    exported = reference_export
    torch_csv, onnx_csv = tmp_path / "torch.csv", tmp_path / "onnx.csv"
    assert main(["predict", str(reference_run), str(digit_photos), "--out", str(torch_csv),
                 "--runner", "local", "--no-progress"]) == 0
    assert main(["predict", str(exported), str(digit_photos), "--backend", "onnxruntime", "--out", str(onnx_csv),
                 "--runner", "local", "--no-progress"]) == 0
    a, b = _read_csv(torch_csv)[:PHOTOS], _read_csv(onnx_csv)[:PHOTOS]
    classes = load_spec(str(exported), "onnxruntime").classes
    assert [r["predicted"] for r in a] == [r["predicted"] for r in b]
    assert np.abs(_probabilities(a, classes) - _probabilities(b, classes)).max() <= 1e-4


def _face_photos(folder) -> dict[str, str]:
    """Real photos: two faces (the alignment tests' photos) and one without a face (coins)."""
    import matplotlib.cbook
    import skimage.data

    paths = {"astronaut": folder / "astronaut.jpg", "grace_hopper": folder / "grace_hopper.jpg",
             "coins": folder / "coins.png"}
    Image.fromarray(skimage.data.astronaut()).save(paths["astronaut"], quality=95)
    Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB").save(paths["grace_hopper"])
    Image.fromarray(skimage.data.coins()).convert("RGB").save(paths["coins"])
    return {k: str(v) for k, v in paths.items()}


def test_faces_are_aligned_exactly_as_the_sharder_aligns_them(tmp_path):
    from soft_dist.shard.encode import EncodeOptions, encode_chunk
    from soft_dist.shard.layouts import Record

    photos = _face_photos(tmp_path)
    settings = AlignSettings(method="mtcnn", size=64, margin=0.2, jpeg_quality=90, on_no_face="skip")
    prepared = FacePreparer(settings, detector_batch=4)({"path": np.array(list(photos.values()), dtype=object)})
    assert list(prepared["status"]) == ["ok", "ok", "no_face"]
    assert list(prepared["face_found"]) == [1, 1, 0]
    assert (prepared["face_prob"][:2] > 0.95).all() and np.isnan(prepared["face_prob"][2])
    records = [(i, Record(source=name, split="test", label=0, orig_label="x", path=path))
               for i, (name, path) in enumerate(photos.items())]
    sharded = encode_chunk(records, EncodeOptions(dataset="faces", classes=("x",), size=64, align="mtcnn",
                                                  margin=0.2, quality=90, on_no_face="skip", batch_size=4))
    assert [s.idx for s in sharded.samples] == [0, 1] and sharded.skipped_no_face == ["coins"]
    for i, sample in enumerate(sharded.samples):
        assert prepared["jpeg"][i] == sample.jpeg  # the very bytes a shard would hold
        assert prepared["box"][i].tolist() == sample.meta["box"]


def test_face_photos_through_the_command(reference_run, tmp_path):
    photos = _face_photos(tmp_path)
    out = tmp_path / "faces.jsonl"
    common = ["predict", str(reference_run), *photos.values(), "--align", "mtcnn", "--runner", "local",
              "--no-progress"]
    assert main([*common, "--out", str(out)]) == 0
    rows = {r["path"]: r for r in map(json.loads, out.read_text().splitlines())}
    for name in ("astronaut", "grace_hopper"):
        row = rows[photos[name]]
        width, height = Image.open(photos[name]).size
        x0, y0, x1, y1 = row["box"]
        assert row["status"] == "ok" and row["face_found"] is True and row["face_prob"] > 0.95
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert row["predicted"] in row["probabilities"]
    coins = rows[photos["coins"]]
    assert (coins["status"], coins["face_found"], coins["predicted"], coins["box"]) == ("no_face", False, None, None)

    cropped = tmp_path / "crop.csv"
    assert main([*common, "--on-no-face", "crop", "--out", str(cropped)]) == 0
    coins = [r for r in _read_csv(cropped) if r["path"] == photos["coins"]][0]
    assert coins["status"] == "no_face_centre_crop" and coins["face_found"] == "False" and coins["predicted"]


def test_nothing_classified_exits_1_and_still_writes_its_csv(reference_run, tmp_path, capsys):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"not a jpeg")
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "p.csv"
    assert main(["predict", str(reference_run), str(folder), "--runner", "local", "--no-progress",
                 "--out", str(out)]) == 1
    assert "none of the 2 photos could be classified" in capsys.readouterr().err
    assert [r["status"] for r in _read_csv(out)] == ["unreadable", "unreadable"]


def test_bad_options_exit_2_naming_the_problem(reference_run, digit_photos, tmp_path, capsys):
    assert main(["predict", str(reference_run), str(digit_photos), "--out", str(tmp_path / "p.txt")]) == 2
    assert "option '--out'" in capsys.readouterr().err
    assert main(["predict", str(reference_run), str(digit_photos), "--backend", "onnxruntime",
                 "--out", str(tmp_path / "p.csv")]) == 2
    assert "model.onnx: not found" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "no-run"), str(digit_photos), "--out", str(tmp_path / "p.csv")]) == 2
    assert "no-run" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()


def test_the_benchmark_model_predicts_on_real_faces(tmp_path):
    """`bench predict`'s default model is a valid model.pt with MTCNN alignment: real LFW faces (the
    benchmark's photos) are found and classified."""
    from soft_dist.bench.predict import write_untrained_model
    from soft_dist.bench.shard import make_face_folder

    model = write_untrained_model(tmp_path, 64)
    photos = make_face_folder(tmp_path / "photos", 6, 160)
    out = tmp_path / "bench.jsonl"
    assert main(["predict", str(model), str(photos), "--out", str(out), "--runner", "local", "--no-progress"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and sum(r["status"] == "ok" for r in rows) >= 5
    assert all(len(r["probabilities"]) == 7 for r in rows if r["status"] == "ok")


_PEAK_RSS = """
import resource, sys
from soft_dist.cli import main
code = main(sys.argv[1:])
print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "EXIT", code)
"""


def _peak_rss_kb(args: list[str]) -> int:
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, "-c", _PEAK_RSS, *args], capture_output=True, text=True, env=env,
                         timeout=600)
    last = run.stdout.strip().splitlines()[-1].split()
    assert last[0] == "PEAK_RSS_KB" and last[-1] == "0", run.stdout[-2000:] + run.stderr[-2000:]
    return int(last[1])


def test_huge_photos_are_decoded_within_a_memory_bound(reference_run, tmp_path):
    """16 photos of 9000 x 9000 (a PNG takes 243 MB decoded) cost at most 1.5x the peak memory of 16 small
    ones: each is reduced to --max-pixels while or right after it is decoded."""
    gradient = np.tile(np.linspace(0, 255, 9000, dtype=np.uint8), (9000, 1))
    big = Image.fromarray(np.stack([gradient, gradient.T, gradient], axis=-1))
    (tmp_path / "big").mkdir(), (tmp_path / "small").mkdir()
    big.save(tmp_path / "big" / "00.png", compress_level=1)
    big.save(tmp_path / "big" / "01.jpg", quality=80)
    big.resize((300, 300)).save(tmp_path / "small" / "00.png")
    del big, gradient
    for n in range(2, 16):  # 8 PNGs (decoded whole, then reduced) and 8 JPEGs (reduced while decoding)
        first = tmp_path / "big" / ("00.png" if n % 2 == 0 else "01.jpg")
        (tmp_path / "big" / f"{n:02d}{first.suffix}").write_bytes(first.read_bytes())
    for n in range(1, 16):
        (tmp_path / "small" / f"{n:02d}.png").write_bytes((tmp_path / "small" / "00.png").read_bytes())
    peaks = {folder: _peak_rss_kb(["predict", str(reference_run), str(tmp_path / folder), "--runner", "local",
                                   "--no-progress", "--batch-size", "16", "--out", str(tmp_path / f"{folder}.csv")])
             for folder in ("small", "big")}
    assert peaks["big"] <= 1.5 * peaks["small"], peaks
    rows = _read_csv(tmp_path / "big.csv")
    assert len(rows) == 16 and {r["status"] for r in rows} == {"ok"}
