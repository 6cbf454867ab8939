"""`ray job submit` of a tiny training, through launch/submit_train.sh, against a Ray head that this test
starts on loopback with token authentication (as launch/start_head.sh does)."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from soft_dist.ports import free_local_port
from soft_dist.shard.build import ShardConfig, build_shards

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]


def wait_for_port(port: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(1.0)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def wait_for_job_agent(env: dict, timeout: float = 180.0) -> None:
    """The dashboard answers before the job agent is up ('No available agent to submit job'): submit a
    trivial job until one is accepted."""
    ray_cli = str(Path(sys.executable).parent / "ray")
    deadline = time.monotonic() + timeout
    while True:
        probe = subprocess.run([ray_cli, "job", "submit", "--address", env["RAY_JOB_ADDRESS"], "--no-wait", "--",
                                "python", "-c", "pass"], env=env, capture_output=True, text=True, timeout=120)
        if probe.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"job API not ready after {timeout} s: {probe.stderr[-500:]}")
        time.sleep(2.0)


@pytest.fixture()
def head(tmp_path, stopped_in_background):
    """A Ray head with the job API on 127.0.0.1 and token auth; yields the client environment.

    It runs beside the test session's own cluster (and, with parallel test processes, theirs), as on a
    real node that already runs Ray: that cluster holds the dashboard agent's default port, so this head
    is given a free one (without it, its job agent never comes up: "No available agent to submit job")."""
    bin_dir = Path(sys.executable).parent
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    gcs, dashboard = free_local_port(), free_local_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "RAY_GCS_PORT": str(gcs), "RAY_DASHBOARD_PORT": str(dashboard)}
    env.pop("RAY_ADDRESS", None)
    # --block keeps `ray start` in the foreground so that ending it stops this head only.
    proc = subprocess.Popen([str(REPO / "launch" / "start_head.sh"), "--num-cpus=2", "--block",
                             f"--dashboard-agent-listen-port={free_local_port()}"], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(dashboard)
        client_env = {**env, "RAY_JOB_ADDRESS": f"http://127.0.0.1:{dashboard}"}
        wait_for_job_agent(client_env)
        yield client_env
    finally:
        stopped_in_background(proc)


def test_job_submit_runs_a_tiny_training(head, tmp_path):
    shards = tmp_path / "shards"
    build_shards(ShardConfig(layout="digits", out=str(shards), size=16, min_shards=2, workers=1, progress=False))
    run_dir = tmp_path / "run"
    cmd = [str(REPO / "launch" / "submit_train.sh"), "--config", str(REPO / "configs" / "digits_cpu.yaml"),
           "--run-dir", str(run_dir), f"data.shards={shards}", "data.image_size=16", "model.width=16", "train.workers=1",
           "train.epochs=1", "method.stage1_epochs=0"]
    done = subprocess.run(cmd, env={**head, "RAY_CLI": str(Path(sys.executable).parent / "ray")},
                          capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout + done.stderr
    results = json.loads((run_dir / "results.json").read_text())
    assert results["epochs"] == 1 and results["test"]["chosen"]["num_samples"] > 0

    # Without the token the job API refuses the client.
    refused = subprocess.run([str(Path(sys.executable).parent / "ray"), "job", "list", "--address", head["RAY_JOB_ADDRESS"]],
                             env={**head, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")},
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
