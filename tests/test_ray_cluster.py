"""soft_dist.ray_cluster.init_ray on a machine without RAY_ADDRESS: a new local cluster whose Ray Train
runs stay quiet, even when Ray's "current cluster" file names a cluster that is gone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

# A Ray Train run of a few seconds: long enough for the placement-group cleaner to poll the controller's
# state several times.
SCRIPT = textwrap.dedent(
    """
    import time
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer
    from soft_dist.ray_cluster import init_ray

    init_ray()
    TorchTrainer(lambda: time.sleep(8), scaling_config=ScalingConfig(num_workers=1)).fit()
    print("RUN FINISHED")
    """
)


def test_local_cluster_run_has_no_state_api_warnings():
    # Ray keeps its sockets under RAY_TMPDIR/ray: a short private path (Unix socket paths are limited to
    # about 107 bytes), holding a ray_current_cluster file that points to a dead cluster.
    tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    try:
        (tmp / "ray").mkdir()
        (tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9\n")
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
        env.update(RAY_TMPDIR=str(tmp), OMP_NUM_THREADS="1")
        run = subprocess.run(
            [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    output = run.stdout + run.stderr
    assert run.returncode == 0 and "RUN FINISHED" in output, output[-3000:]
    assert "PlacementGroupCleaner" not in output, output[-3000:]
    assert "Failed to query Ray Train Controller" not in output
