"""`soft-dist bench scaling --local-nodes`: a real multi-node Ray cluster on this machine (two raylets of
1 CPU each), 1 then 2 Train workers placed one per node, with the figures the scaling table reports."""

from __future__ import annotations

import json

import pytest

from soft_dist.cli import main

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_bench_scaling_on_two_local_nodes_reports_speed_sync_share_and_checkpoint_time(
        digit_shards, tmp_path, no_ray_in_this_process, capsys):
    import ray

    out = tmp_path / "scaling.json"
    assert main(["bench", "scaling", "--workers", "2", "--threads", "1", "--local-nodes", "--shards", str(digit_shards),
                 "--json", str(out), "data.image_size=16", "model.width=16", "data.num_threads=1"]) == 0
    result = json.loads(out.read_text())
    assert result["config"]["local_nodes"] == 2 and result["config"]["timed_epochs"] == 5
    one, two = result["runs"]
    assert (one["workers"], two["workers"]) == (1, 2) and one["efficiency"] == 1.0
    for run in (one, two):
        assert run["images_per_s"] > 0 and run["images_per_s_per_worker"] == pytest.approx(
            run["images_per_s"] / run["workers"])
        assert run["checkpoint_seconds"] > 0  # rank 0's epoch checkpoints, timed in the run
        assert 0 <= run["teacher_sync_share"] < 1
    # with two ranks the teachers' buffers are all-reduced across the nodes: a cost one rank does not have
    assert two["teacher_sync_share"] > one["teacher_sync_share"]
    assert [len(v) for v in result["per_epoch_images_per_s_total"].values()] == [6, 6]
    assert "runs.1.teacher_sync_share" in capsys.readouterr().out
    assert not ray.is_initialized()  # the nodes are gone with the benchmark
