"""`soft-dist bench scale` at tiny sizes: a generated shard set from real digit pixels (distinct images,
the same bytes when written again, read back by the project's loaders), and the benchmark's training,
evaluation and checkpoint figures per size from fresh processes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from soft_dist.bench.scale_data import scale_images, write_scale_shards
from soft_dist.cli import main
from soft_dist.data.format import load_manifest
from soft_dist.data.tarindex import load_sample_table
from soft_dist.shard.verify import verify_shards


def test_generated_images_are_distinct_seeded_and_labelled_by_their_digit():
    pixels, labels = scale_images(200, 24, seed=5)
    assert pixels.shape == (200, 24, 24, 3) and pixels.dtype == np.uint8 and labels.shape == (200,)
    assert len({p.tobytes() for p in pixels}) == 200 and set(labels.tolist()) == set(range(10))
    again, same_labels = scale_images(200, 24, seed=5)
    assert np.array_equal(again, pixels) and np.array_equal(same_labels, labels)
    assert not np.array_equal(scale_images(200, 24, seed=6)[0], pixels)
    assert 40 < pixels.std() < 120  # ink and paper differ: not blank, not saturated


def test_a_generated_shard_set_is_real_and_written_the_same_twice(tmp_path):
    a = write_scale_shards(tmp_path / "a", 1500, size=24)
    b = write_scale_shards(tmp_path / "b", 1500, size=24)
    for name in ("train-000000.tar", "train-000001.tar", "val-000000.tar"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    manifest = load_manifest(a)
    assert manifest.split("train").num_samples == 1500 and manifest.split("val").num_samples == 150
    assert verify_shards(a, decode=True)["ok"]  # what `soft-dist shard --verify` checks of the sharder's sets
    table = load_sample_table(a, "train")
    assert table.used_index_files and table.idx.tolist() == list(range(1500))
    assert table.image_hw(np.array([0, 1499])).tolist() == [[24, 24], [24, 24]]


def test_bench_scale_reports_every_stage_at_every_size(tmp_path, capsys):
    out = tmp_path / "scale.json"
    assert main(["bench", "scale", "--sizes", "600,300", "--image-size", "16", "--steps", "1", "--warmup", "1",
                 "--eval-batches", "1", "--rounds", "1", "--folder", str(tmp_path / "sets"), "--json", str(out),
                 "--markdown", str(tmp_path / "scale.md"), "--plot", str(tmp_path / "scale.png"),
                 "model.width=16", "train.batch_size=16", "train.eval_batch_size=32"]) == 0
    result = json.loads(out.read_text())
    assert set(result["sizes"]) == {"300", "600"} and result["config"]["image_size"] == 16
    for entry in result["sizes"].values():
        assert entry["train_images_per_s_min"] <= entry["train_images_per_s"] <= entry["train_images_per_s_max"]
        assert entry["train_rss_mb"] > entry["driver_rss_mb"] > 0 and entry["eval_images_per_s"] > 0
        assert entry["checkpoint_mb"] > 0 and entry["verify_us_per_image"] > 0
    assert set(result["per_image_growth"]) == {"train_images_per_s_smallest_over_largest",
                                                "train_rss_mb_largest_minus_smallest",
                                                "driver_rss_mb_largest_minus_smallest"}
    assert "sizes.600.train_images_per_s" in capsys.readouterr().out
    rows = (tmp_path / "scale.md").read_text().splitlines()
    assert rows[0].startswith("| N | train images/s") and [r.split(" | ")[0] for r in rows[2:]] == ["| 300", "| 600"]
    assert (tmp_path / "scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the sets stay in --folder for the next run, which reuses them
    assert sorted(p.name for p in (tmp_path / "sets").iterdir()) == ["scale300_16px", "scale600_16px"]


@pytest.mark.ray  # its Ray backend starts a local cluster
def test_bench_shard_scale_shards_a_generated_folder_with_each_backend(tmp_path):
    """The real `soft-dist shard` on a folder of generated photos, with the process pool and with Ray tasks:
    every photo in the manifest, seconds and the peak memory of the command's process tree."""
    out = tmp_path / "shard-scale.json"
    folder = tmp_path / "folders"
    assert main(["bench", "shard-scale", "--sizes", "250", "--image-size", "24", "--size", "16",
                 "--runs", "process:1,ray:1", "--rounds", "1", "--folder", str(folder), "--json", str(out),
                 "--markdown", str(tmp_path / "shard-scale.md")]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert set(runs) == {"250/process:1", "250/ray:1"}
    for run in runs.values():
        assert run["seconds"] > 0 and run["images_per_s"] == pytest.approx(250 / run["seconds"])
        assert run["total_peak_mb"] >= run["driver_peak_mb"] > 20  # a Python process with numpy and PIL
    assert runs["250/ray:1"]["worker_peak_mb"] > 0  # Ray's workers are processes below the command's
    photos = sorted((folder / "folder250_24px" / "train").rglob("*.jpg"))
    assert len(photos) == 250 and {p.parent.name for p in photos} == {str(d) for d in range(10)}
    rows = (tmp_path / "shard-scale.md").read_text().splitlines()
    assert [r.split(" | ")[1] for r in rows[2:]] == ["process:1", "ray:1"]
    # the folder stays for the next run, which reuses it
    before = photos[0].stat().st_mtime_ns
    assert main(["bench", "shard-scale", "--sizes", "250", "--image-size", "24", "--size", "16",
                 "--runs", "process:1", "--rounds", "1", "--folder", str(folder)]) == 0
    assert photos[0].stat().st_mtime_ns == before


@pytest.mark.ray  # `soft-dist train` (the set-up) starts a local cluster
@pytest.mark.slow
def test_bench_tools_scale_times_eval_audit_and_predict_over_whole_splits(tmp_path):
    """A run trained on a generated set (set-up), then the real `eval`, `audit` and `predict` commands over
    all of its training images and a folder of as many photos, each in a process of its own."""
    out = tmp_path / "tools.json"
    folder = tmp_path / "data"
    assert main(["bench", "tools-scale", "--sizes", "300", "--image-size", "16", "--commands", "eval,audit,predict",
                 "--rounds", "1", "--folder", str(folder), "--json", str(out), "--markdown", str(tmp_path / "tools.md"),
                 "--train", "model.width=8", "train.epochs=1", "method.stage1_epochs=0", "data.num_threads=1"]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert set(runs) == {"300/eval", "300/audit", "300/predict"}
    for run in runs.values():
        assert run["seconds"] > 0 and run["total_peak_mb"] >= run["driver_peak_mb"] > 50
    assert json.loads((folder / "run300_16px" / "results.json").read_text())["epochs"] == 1
    rows = (tmp_path / "tools.md").read_text().splitlines()
    assert [r.split(" | ")[1] for r in rows[2:]] == ["eval", "audit", "predict"]
    with pytest.raises(SystemExit, match="unknown command 'serve'"):
        main(["bench", "tools-scale", "--commands", "eval,serve", "--folder", str(folder)])
