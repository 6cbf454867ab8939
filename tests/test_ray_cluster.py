"""soft_dist.ray_cluster.init_ray on a machine without RAY_ADDRESS: a new local cluster (no dashboard)
whose processes query only its own state, even beside a `ray start` head, and whose Ray Train runs do not
log the placement-group cleaner's failed state queries; and the console of `soft-dist train` as a person
(or a CI log) sees it: one line per epoch, nothing from Ray's internals."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from soft_dist.ports import free_local_port

pytestmark = pytest.mark.ray

# A Ray Train run of a few seconds: long enough for the placement-group cleaner to poll the controller's
# state several times.
SCRIPT = textwrap.dedent(
    """
    import time
    import ray
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer
    from soft_dist.ray_cluster import init_ray

    init_ray()
    ray.get(ray.remote(lambda: print("HELLO FROM A WORKER", flush=True)).remote())

    @ray.remote
    class Live:
        def ping(self):
            return True

    @ray.remote(num_cpus=0)
    def cleaner_verdict(actor_id):
        # the placement-group cleaner's liveness check, run in a worker as the cleaner runs it
        from ray.train.v2._internal.state.util import is_actor_alive
        try:
            return repr(is_actor_alive(actor_id=actor_id, timeout=10))
        except Exception as err:
            return type(err).__name__

    live = Live.remote()
    ray.get(live.ping.remote())
    print("CLEANER VERDICT ON A LIVE ACTOR:", ray.get(cleaner_verdict.remote(live._actor_id.hex())))
    TorchTrainer(lambda: time.sleep(8), scaling_config=ScalingConfig(num_workers=1)).fit()
    print("RUN FINISHED")
    """
)

# Ray's default dashboard port: the address every dashboard-less instance records in its GCS (before
# local_node_options gave it a free one). The suite starts no other dashboard on it.
DEFAULT_DASHBOARD_PORT = 8265


def start_head_with_dashboard(env: dict) -> subprocess.Popen:
    """`ray start --head --block` with its dashboard on the default port, as launch/start_head.sh starts
    one: the last `ray start` in env's RAY_TMPDIR, so Ray's auto-detection names it. Returns once its
    dashboard answers."""
    ray_cli = str(Path(sys.executable).parent / "ray")
    head = subprocess.Popen([ray_cli, "start", "--head", "--block", f"--port={free_local_port()}", "--num-cpus=1",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={DEFAULT_DASHBOARD_PORT}",
                             f"--dashboard-agent-listen-port={free_local_port()}", "--disable-usage-stats"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", DEFAULT_DASHBOARD_PORT)) == 0:
                return head
        assert head.poll() is None, f"ray start --head exited (is port {DEFAULT_DASHBOARD_PORT} taken?)"
        time.sleep(0.5)
    raise TimeoutError("the head's dashboard did not answer in 120 s")


def test_local_cluster_run_beside_a_ray_start_head_keeps_its_own_state_and_no_warnings(stopped_in_background):
    """The local cluster's workers ask their own cluster about their own actors, even with a `ray start`
    head and its dashboard on this machine: Ray's auto-detection would otherwise send the cleaner's
    liveness check to that dashboard, which answered None for a live actor (the cleaner then removes the
    run's placement group). Here the check fails to connect, as on a machine alone, and stays quiet."""
    # Ray keeps its sockets under RAY_TMPDIR/ray: a short private path (Unix socket paths are limited to
    # about 107 bytes) shared by the head and the local cluster, so that the head is the "latest cluster".
    # Inside the session's RAY_TMPDIR, removed at the session's end after the head has stopped.
    tmp = Path(tempfile.mkdtemp(prefix="rt", dir=os.environ.get("RAY_TMPDIR", "/tmp")))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    # SOFT_DIST_WORKER_LOGS=1 forwards the controller's log lines, where the warnings would appear.
    env.update(RAY_TMPDIR=str(tmp), OMP_NUM_THREADS="1", SOFT_DIST_WORKER_LOGS="1")
    head = start_head_with_dashboard(env)
    try:
        run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    finally:
        stopped_in_background(head)
    output = run.stdout + run.stderr
    assert run.returncode == 0 and "RUN FINISHED" in output, output[-3000:]
    assert "CLEANER VERDICT ON A LIVE ACTOR: ServerUnavailable" in output, output[-3000:]
    assert "Failed to query Ray Train Controller" not in output, output[-3000:]
    # a worker's line reached this console (not a terminal) with its prefix but without colour codes
    assert "HELLO FROM A WORKER" in output and "pid=" in output and "\x1b" not in output, output[-3000:]


@pytest.mark.slow
def test_train_console_is_one_line_per_epoch(digit_shards, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SOFT_DIST_WORKER_LOGS")}
    config = Path(__file__).resolve().parents[1] / "configs" / "digits_cpu.yaml"
    # data.shards relative to the command's folder, as a person types it: Ray Train starts its workers
    # in a folder of their own, where this path would name nothing (it failed there until the driver
    # made it absolute).
    shards = os.path.relpath(digit_shards, tmp_path)
    run = subprocess.run(
        [sys.executable, "-m", "soft_dist", "train", "--config", str(config), "--run-dir", "run",
         f"data.shards={shards}", "data.image_size=16", "model.width=16", "train.epochs=2", "train.workers=2",
         "method.stage1_epochs=1", "method.rampup_epochs=1"],
        env=env, capture_output=True, text=True, timeout=400, cwd=tmp_path,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    lines = output.splitlines()
    epoch_lines = [x for x in lines if x.startswith("epoch ")]
    assert [x.split(" | ")[0] for x in epoch_lines] == ["epoch 1/2", "epoch 2/2"], output
    # what the numbers mean: validation on noisy labels, and SOFT's loss in its parts (it rises with the ramp)
    assert all("val on noisy labels: student " in x and " x cons " in x for x in epoch_lines), output
    assert len(lines) <= 8, output  # the epoch lines and the short summary
    for noise in ("\x1b", "Traceback", "TrainingReport", "RayTrainWorker", "TrainController", "WARNING", "INFO"):
        assert noise not in output, f"{noise!r} in:\n{output}"
    assert "model.pt: epoch" in run.stdout
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert Path(saved["data"]["shards"]) == digit_shards  # what ran, usable from any folder (a resume)


def test_a_local_ray_start_that_fails_is_one_line_with_its_own_logs(digit_shards, tmp_path):
    """A real failed start (Ray's socket paths under a temp folder too long for AF_UNIX), tried twice:
    exit 1, one line with the cause and that start's log folder, no traceback, no run directory."""
    ray_tmp = tmp_path / ("x" * 90)
    ray_tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(ray_tmp)}
    run = subprocess.run([sys.executable, "-m", "soft_dist", "train", "--config", "digits_cpu",
                          "--run-dir", str(tmp_path / "run"), f"data.shards={digit_shards}"],
                         env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert "could not start a local Ray instance (2 attempts)" in lines[0] and "AF_UNIX" in lines[0]
    assert f"its logs: {ray_tmp}/ray/session_" in lines[0]
    assert not (tmp_path / "run").exists()
