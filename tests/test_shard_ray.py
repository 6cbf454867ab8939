"""The Ray backend: tasks over chunks on a small local cluster give the same shards as one process."""

import pytest

from soft_dist.shard.build import ShardConfig, build_shards
from soft_dist.shard.verify import verify_shards


@pytest.mark.ray
def test_ray_backend_matches_serial(tmp_path, ray_cluster):
    cfg = dict(layout="digits", size=12, shard_size=400, min_shards=2, progress=False)
    build_shards(ShardConfig(out=str(tmp_path / "serial"), workers=1, **cfg), log=lambda m: None)
    m = build_shards(ShardConfig(out=str(tmp_path / "ray"), backend="ray", **cfg), log=lambda m: None)
    assert m["args"]["backend"] == "ray" and m["build"]["shards_written"] == 8  # 4 train + 2 val + 2 test
    names = sorted(p.name for p in (tmp_path / "serial").glob("*.tar"))
    assert len(names) == 8
    for name in names:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "serial" / name).read_bytes()
    assert verify_shards(tmp_path / "ray")["ok"]
