"""Fixtures shared by the test modules that train for real."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import pytest

# In parallel test processes (`make test`: 2 processes on 2 cores) each process computes with one thread,
# and so do the commands it starts. torch's default is a thread per core in every process, and its OpenMP
# threads spin while they wait: the SOFT two-stage test run twice side by side took 54.5 s with 2 threads
# each and 20.0 s with 1. Set before anything imports torch; a single test process keeps the default.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

# Every Ray cluster the tests start (in this process, in subprocesses, `ray start`) keeps its session
# folder (logs, sockets, runtime resources) under one short folder that is removed when the session
# ends: Ray's default /tmp/ray keeps every session forever. Short because of the unix-socket path limit.
_RAY_TMPDIR = tempfile.mkdtemp(prefix="sdray-")
os.environ["RAY_TMPDIR"] = _RAY_TMPDIR
# Ray Train's controller polls its workers every 2 s by default, so a finished run of a few seconds
# waits up to 2 s (about 3 s measured) before its worker group is shut down; the suite has about 40
# such runs. Every cluster the tests start inherits this (processes started by them inherit os.environ).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_RAY_TMPDIR, ignore_errors=True)
    if exitstatus == 0 and not os.environ.get("PYTEST_XDIST_WORKER"):
        # This process ends the session, after its test processes: the folders they shared go too (with
        # one process they lie in its own base folder, which _remove_temp_folders_after_a_clean_session
        # removes). pytest keeps its TempPathFactory on the config; xdist reads it there too.
        shutil.rmtree(session.config._tmp_path_factory.getbasetemp() / _SHARED, ignore_errors=True)


# Fixtures built once per session and read by every test process (see _once_per_session).
_SHARED = "shared"


def _once_per_session(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder ``name`` that ``build(folder)`` fills once per test session, in whichever test process
    asks first; the other processes of `make test` (pytest-xdist) wait for it and read the same one.

    Why: a session fixture is otherwise built in each of the processes, e.g. the reference run (11-16 s)
    and its export, both of which only tests that read them use. The folder lies in the session's base
    folder, which xdist's workers' own folders are inside of, and outlives every worker's clean-up."""
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / _SHARED
    shared.mkdir(exist_ok=True)
    folder, built = shared / name, shared / f"{name}.built"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if build raises
        if not built.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed build in another process left
            folder.mkdir()
            build(folder)
            built.touch()
    return folder


def _ray_sessions() -> set[str]:
    """The Ray sessions started so far by this test process and the commands it ran (RAY_TMPDIR is theirs)."""
    root = Path(_RAY_TMPDIR)  # a test's `ray start` head may keep its own folder inside (test_ray_cluster)
    return {str(p.relative_to(root)) for pattern in ("ray/session_2*", "*/ray/session_2*") for p in root.glob(pattern)}


_SESSIONS_BEFORE = pytest.StashKey[set]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    if not item.get_closest_marker("ray"):  # a marked test may start clusters
        item.stash[_SESSIONS_BEFORE] = _ray_sessions()  # before the fixtures this test sets up
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """A test not marked ``ray`` that started a Ray cluster (itself, through a fixture, or in a command it
    ran) fails here: `make test-quick` promises the tests that start no Ray cluster, and a start costs
    5-15 s on 2 cores. Mark it (``pytest.mark.ray``, or use the ``ray_cluster`` fixture)."""
    result = yield
    if _SESSIONS_BEFORE not in item.stash:  # marked ``ray``, or its set-up never ran
        return result
    started = _ray_sessions() - item.stash[_SESSIONS_BEFORE]
    if started:
        pytest.fail(f"{item.nodeid} started a Ray cluster ({', '.join(sorted(started))}) but is not marked "
                    f"`ray`: mark it so that `make test-quick` leaves it out")
    return result


def pytest_addoption(parser):
    parser.addoption("--field-walk", action="store_true",
                     help="also train every walked config value on its own (`make test-field-walk`, ~30 min)")


@pytest.fixture(scope="session")
def stopped_in_background():
    """``stop(proc)``: SIGTERM a process group started by a test (a `ray start --block` head) and let it
    shut down while the next tests run; the session waits for it at its end (SIGKILL after 60 s). A Ray
    head's graceful stop takes about 30 s, most of it waiting."""
    import signal
    import subprocess

    stopping: list[subprocess.Popen] = []

    def stop(proc: subprocess.Popen) -> None:
        os.killpg(proc.pid, signal.SIGTERM)
        stopping.append(proc)

    yield stop
    for proc in stopping:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


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
    the project's own sharder; 4 shards per split so that 2 ranks each get some. Read only."""
    from soft_dist.shard.build import ShardConfig, build_shards

    def build(out: Path) -> None:
        build_shards(ShardConfig(layout="digits", out=str(out), size=32, min_shards=4, workers=1, progress=False))

    return _once_per_session(tmp_path_factory, "digits32", build)


class SharedRayCluster:
    """The one local 2-CPU Ray cluster of the test session, started on first use and shared by every test
    that only needs "a cluster" (Ray Train runs, Ray Data, Ray tasks): each start costs 5-15 s on 2 cores.

    It is started after the S3 variables are set (see ``ray_cluster``), so its workers reach the test
    endpoint. A test that needs this process without Ray (a multi-node cluster of its own, a check that a
    command never started Ray) calls :meth:`stop`; the next user starts it again."""

    def start(self) -> None:
        import ray

        from soft_dist.ray_cluster import local_job_options, local_node_options

        if not ray.is_initialized():  # as soft-dist starts a local cluster, on the 2 cores
            ray.init(address="local", num_cpus=2, **local_node_options(), **local_job_options())

    def stop(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()


_SHARED_RAY = SharedRayCluster()


@pytest.fixture(scope="session")
def _shared_ray(s3_server):
    yield _SHARED_RAY
    _SHARED_RAY.stop()


@pytest.fixture
def ray_cluster(_shared_ray):
    """The session's local 2-CPU Ray cluster (address="local": never another one on this machine)."""
    _shared_ray.start()
    yield


@pytest.fixture
def no_ray_in_this_process(_shared_ray):
    """This process connected to no Ray cluster (the shared one is stopped; its next user restarts it)."""
    _shared_ray.stop()
    yield


S3_SECRET_CANARY = "soft-dist-canary-7f3a9c"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 endpoint (moto's HTTP server on loopback) for the whole session.

    Sets AWS_ENDPOINT_URL, dummy keys and a region in os.environ (restored at teardown) so that boto3,
    pyarrow and Ray workers started later all reach it; moto's request log goes to a file, whose path
    is yielded with the endpoint: {"endpoint": URL, "log": Path}."""
    import logging
    import os

    from moto.server import ThreadedMotoServer

    from soft_dist.ports import free_local_port

    log_path = tmp_path_factory.mktemp("moto") / "requests.log"
    request_log = logging.getLogger("werkzeug")  # moto's server logs every request through werkzeug
    handler = logging.FileHandler(log_path)
    saved_log = (request_log.level, request_log.propagate)
    request_log.addHandler(handler)
    request_log.setLevel(logging.INFO)
    request_log.propagate = False

    port = free_local_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        # A canary, not "testing": the S3 run test greps every file and console line for it.
        "AWS_SECRET_ACCESS_KEY": S3_SECRET_CANARY,
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
def reference_run(digit_shards, tmp_path_factory) -> Path:
    """THE trained run of the test session, shared by every test that only reads a run (eval, export,
    predict, audit, the protocols of results.json): 3 epochs of SOFT (the first without the uncertainty
    head) at 16 px on the digit shards with 30% symmetric noise, trained in the first test process that
    asks, through the torch loader; keeps its resumable state (the audit reads the last checkpoint).
    model.pt names the shards' classes. 11-16 s on a 2-core machine. Noise seed 3 is the noise draw the
    audit was measured on. Read only."""
    from soft_dist.config import load_config
    from soft_dist.train.local import fit_from_shards

    def train(run_dir: Path) -> None:
        fit_from_shards(load_config("digits_cpu", [
            f"data.shards={digit_shards}", "data.loader=torch", "data.image_size=16", "model.width=16",
            "data.num_threads=1", "train.batch_size=128", "train.epochs=3", "method.stage1_epochs=1",
            "method.rampup_epochs=1", "noise.kind=symmetric", "noise.rate=0.3", "noise.seed=3"]), run_dir)

    return _once_per_session(tmp_path_factory, "reference-run", train)


@pytest.fixture(scope="session")
def reference_export(reference_run, tmp_path_factory) -> Path:
    """`soft-dist export --format all` of the reference run (ONNX, TorchScript, model card), made once
    per session: the ONNX exporter alone takes 20-40 s. Read only."""
    from soft_dist.cli import main

    def export(out: Path) -> None:
        assert main(["export", str(reference_run), "--format", "all", "--out", str(out)]) == 0

    return _once_per_session(tmp_path_factory, "reference-export", export)


_RAY_FIXTURES = {"ray_cluster", "_shared_ray", "no_ray_in_this_process"}


def pytest_collection_modifyitems(session, config, items):
    """Every test that uses a Ray cluster fixture is marked ``ray`` (`make test-quick` leaves them out), as
    are the modules that start clusters of their own (they say so with ``pytestmark``). The tests marked
    ``field_walk`` run only with ``--field-walk``.

    Tests that need this process free of Ray (a multi-node cluster of their own, a command that must not
    start Ray) run last, so that the shared cluster is started once rather than again after them. A stable
    sort: every other test keeps its place, module fixtures are built once.

    In parallel test processes (`make test`: pytest-xdist, one module at a time per process) the modules
    holding a slow test go first instead, those that need this process free of Ray first of all, so that
    no process is left alone with a 3-minute module at the end; a process that starts with a multi-node
    module has no shared cluster to stop yet."""
    for item in items:
        if _RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)
    if not config.getoption("--field-walk"):  # the one-run-per-value walk; the suite packs the values
        walk = [item for item in items if item.get_closest_marker("field_walk")]
        if walk:
            config.hook.pytest_deselected(items=walk)
            items[:] = [item for item in items if not item.get_closest_marker("field_walk")]
    def needs_no_ray(item) -> bool:
        return "no_ray_in_this_process" in getattr(item, "fixturenames", ())

    if hasattr(config, "workerinput"):  # a pytest-xdist worker (xdist clears -n and --dist in its workers)
        slow = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
        own_cluster = {item.module.__name__ for item in items if needs_no_ray(item)}
        items.sort(key=lambda item: (item.module.__name__ not in slow, item.module.__name__ not in own_cluster))
    else:
        items.sort(key=needs_no_ray)
