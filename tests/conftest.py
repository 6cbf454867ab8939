"""Fixtures shared by the test modules that train for real."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def digit_shards(tmp_path_factory) -> Path:
    """scikit-learn digits at 32 px as real shards (train/val/test), written once per test session with
    the project's own sharder; 4 shards per split so that 2 ranks each get some."""
    from soft_dist.data.build import ShardConfig, build_shards

    out = tmp_path_factory.mktemp("digits32")
    build_shards(ShardConfig(layout="digits", out=str(out), size=32, min_shards=4, workers=1, progress=False))
    return out


@pytest.fixture(scope="module")
def ray_cluster():
    """A new local 2-CPU Ray cluster for one test module (address="local": never join another one)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()
