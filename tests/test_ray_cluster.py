"""soft_dist.ray_cluster.init_ray on a machine without RAY_ADDRESS: a new local cluster (no dashboard)
whose Ray Train runs do not log the placement-group cleaner's failed state queries."""

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
    # about 107 bytes) that no other cluster uses.
    tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
        env.update(RAY_TMPDIR=str(tmp), OMP_NUM_THREADS="1")
        run = subprocess.run(
            [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    output = run.stdout + run.stderr
    assert run.returncode == 0 and "RUN FINISHED" in output, output[-3000:]
    assert "Failed to query Ray Train Controller" not in output, output[-3000:]
