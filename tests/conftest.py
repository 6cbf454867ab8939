"""Fixtures shared by the test modules that train for real."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Every Ray cluster the tests start (in this process, in subprocesses, `ray start`) keeps its session
# folder (logs, sockets, runtime resources) under one short folder that is removed when the session
# ends: Ray's default /tmp/ray keeps every session forever. Short because of the unix-socket path limit.
_RAY_TMPDIR = tempfile.mkdtemp(prefix="sdray-")
os.environ["RAY_TMPDIR"] = _RAY_TMPDIR


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_RAY_TMPDIR, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _remove_temp_folders_after_a_clean_session(request, tmp_path_factory):
    """Folders made by module and session fixtures (shards, whole runs with checkpoints, a sweep: about
    1.3 GB) are not covered by tmp_path_retention_policy; they go too when every test passed. Set up
    first, so torn down last, after the fixtures that use them."""
    yield
    if request.session.testsfailed == 0:
        shutil.rmtree(tmp_path_factory.getbasetemp(), ignore_errors=True)


@pytest.fixture(scope="session")
def digit_shards(tmp_path_factory) -> Path:
    """scikit-learn digits at 32 px as real shards (train/val/test), written once per test session with
    the project's own sharder; 4 shards per split so that 2 ranks each get some."""
    from soft_dist.shard.build import ShardConfig, build_shards

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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 endpoint (moto's HTTP server on loopback) for the whole session.

    Sets AWS_ENDPOINT_URL, dummy keys and a region in os.environ (restored at teardown) so that boto3,
    pyarrow and Ray workers started later all reach it; moto's request log goes to a file, whose path
    is yielded with the endpoint: {"endpoint": URL, "log": Path}."""
    import logging
    import os
    import socket

    from moto.server import ThreadedMotoServer

    log_path = tmp_path_factory.mktemp("moto") / "requests.log"
    request_log = logging.getLogger("werkzeug")  # moto's server logs every request through werkzeug
    handler = logging.FileHandler(log_path)
    saved_log = (request_log.level, request_log.propagate)
    request_log.addHandler(handler)
    request_log.setLevel(logging.INFO)
    request_log.propagate = False

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved_env = {k: os.environ.get(k) for k in [*env, "AWS_SESSION_TOKEN", "AWS_PROFILE"]}
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)
    os.environ.update(env)
    try:
        yield {"endpoint": env["AWS_ENDPOINT_URL"], "log": log_path}
    finally:
        server.stop()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        request_log.removeHandler(handler)
        handler.close()
        request_log.setLevel(saved_log[0])
        request_log.propagate = saved_log[1]


@pytest.fixture(scope="session")
def trained_digits_run(digit_shards, tmp_path_factory) -> Path:
    """A real run folder with model.pt: 2 epochs of SOFT on the digit shards at 16 px through the torch
    loader, trained in this process (3 minutes on a 2-core machine under a load of 7; the first epoch
    alone stays at chance). model.pt names the shards' classes. Shared by the export and eval tests."""
    from run_fixtures import train_in_process

    return train_in_process(tmp_path_factory.mktemp("digits-run"), digit_shards,
                            ["train.epochs=2", "method.stage1_epochs=1"])
