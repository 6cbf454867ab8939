"""`soft-dist bench metadata` at small sizes: real shard sets written with the project's writer, every
metadata stage timed on them, and a JSON a person can read the growth from."""

from __future__ import annotations

import json

import numpy as np
import pytest

from soft_dist.bench.metadata import parse_sizes, write_metadata_shards
from soft_dist.cli import main
from soft_dist.data.format import load_manifest
from soft_dist.data.labels import read_split_labels
from soft_dist.data.tarindex import load_sample_table

STAGES = {"manifest", "labels", "splits", "noise_table", "sampler", "audit_rank"}


def test_bench_metadata_times_every_stage_at_every_size(tmp_path, capsys):
    out = tmp_path / "metadata.json"
    table = tmp_path / "scale.md"
    assert main(["bench", "metadata", "--sizes", "400,200", "--repeats", "5", "--folder", str(tmp_path / "sets"),
                 "--json", str(out), "--markdown", str(table), "--plot", str(tmp_path / "metadata.png")]) == 0
    assert (tmp_path / "metadata.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads(out.read_text())
    assert result["sizes"] == [200, 400] and set(result["by_size"]) == {"200", "400"}
    for n in (200, 400):
        stages = result["by_size"][str(n)]["stages"]
        assert set(stages) == STAGES
        for entry in stages.values():
            assert entry["repeats"] == 5 and entry["min_s"] <= entry["median_s"] <= entry["max_s"]
            assert entry["us_per_sample"] == pytest.approx(entry["median_s"] / n * 1e6) and entry["peak_mb"] >= 0
    assert set(result["per_sample_growth"]) == STAGES and result["machine"]["cores"] >= 1
    assert not any((tmp_path / "sets").iterdir())  # each shard set is removed once measured
    assert "per_sample_growth.labels" in capsys.readouterr().out
    rows = table.read_text().splitlines()
    assert rows[0].startswith("| stage | N=200") and [r.split(" | ")[0] for r in rows[2:8]] == [
        f"| {name}" for name in ("manifest", "labels", "splits", "noise_table", "sampler", "audit_rank")]


def test_the_bench_shard_set_is_a_real_one(tmp_path):
    shards = write_metadata_shards(tmp_path, 2500)  # 3 training shards of at most 1,000 samples
    manifest = load_manifest(shards)
    assert manifest.split("train").num_samples == 2500 and manifest.split("val").num_samples == 250
    idx, labels = read_split_labels(manifest, "train")
    assert np.array_equal(idx, np.arange(2500)) and set(labels.tolist()) == set(range(10))
    table = load_sample_table(shards, "val")
    assert table.used_index_files and table.idx.tolist() == list(range(2500, 2750))
    assert table.image_hw(np.array([0, 249])).tolist() == [[8, 8], [8, 8]]  # real JPEGs in the tars


@pytest.mark.parametrize("text", ["", "10,x", "50"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(SystemExit, match="--sizes"):
        parse_sizes(text)
