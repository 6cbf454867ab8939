"""Connecting to Ray: the cluster named by RAY_ADDRESS, else a new local one on this machine's cores."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

from soft_dist.config import ConfigError, TrainConfig
from soft_dist.ports import free_local_port

WORKER_LOGS_ENV = "SOFT_DIST_WORKER_LOGS"  # "1": forward workers' output to the driver's console
# Ray's default is 15. The workers of a local cluster are the job: they run at the driver's priority.
WORKER_NICENESS = 0
# Ray Train's placement-group cleaner polls the Train controller's state through the dashboard's state
# API, once a second, and logs a warning whenever that fails.
_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def local_cluster_worker_setup() -> None:
    """worker_process_setup_hook of the local clusters soft-dist starts: every worker process (Train
    workers, the Train controller, its placement-group cleaner) addresses its own cluster's state, and the
    cleaner's failed polls stay quiet (its errors still show).

    Own cluster: Ray Train's cleaner asks the state API whether the controller is alive, through a
    cluster address that Ray auto-detects unless RAY_ADDRESS is set. With another Ray instance on the
    machine (a `ray start` head, a second local run) that detection fails ("Found multiple active Ray
    instances") or picks the other cluster, whose dashboard does not know this controller: the cleaner then
    takes the live controller for dead and removes the run's placement group, killing its workers. Checked
    on Ray 2.60 beside a `ray start` head: `is_actor_alive` of a live actor answered None; with this
    setting and local_node_options' dashboard port, the query fails instead, as on a machine alone.

    Quiet: local clusters run without a dashboard, so every poll fails and would log a warning every second
    for the whole run. The cleaner only matters when the controller process dies without removing its
    placement group, and a local cluster ends with the driver that started it anyway."""
    import logging

    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    logging.getLogger(_CLEANER_LOGGER).setLevel(logging.ERROR)


def init_ray(log_to_driver: bool | None = None) -> None:
    """Idempotent. With RAY_ADDRESS set, join that cluster. Otherwise start a new local cluster without
    a dashboard: a bare ``ray.init()`` would instead join whatever cluster /tmp/ray/ray_current_cluster
    names, even a dead one.

    Why no dashboard: Ray Train's placement-group cleaner then queries its state API every second, which
    cost about 7% of a 1-worker run's throughput on a 2-core machine (296 against 320 images/s, median of
    6 runs of ``soft-dist bench train``).

    Why worker niceness 0: Ray starts its workers at nice 15 (so that its own daemons stay responsive),
    and a training worker at nice 15 gets a small share of the cores whenever anything else runs on the
    machine, while the same training without Ray runs at nice 0."""
    import ray

    if ray.is_initialized():
        return
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        # Worker lines and dead-worker reports reach a log file or CI without ANSI colour codes (Ray reads
        # this variable in the driver each time it prints one).
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    if log_to_driver is None:
        log_to_driver = os.environ.get(WORKER_LOGS_ENV, "") == "1"
    # The console is for soft-dist's epoch lines (printed by the driver from metrics.jsonl): the workers'
    # and Ray Train controller's own output stays in Ray's log files unless SOFT_DIST_WORKER_LOGS=1, and
    # so do Ray's start-up notices. Failures still reach the driver as exceptions with the traceback.
    quiet = {} if log_to_driver else {"logging_level": logging.ERROR}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=log_to_driver, **quiet)
        return
    _start_local(lambda: ray.init(address="local", num_cpus=os.cpu_count(), log_to_driver=log_to_driver, **quiet,
                                  **local_node_options(), **local_job_options()))


def local_node_options() -> dict:
    """ray.init / ``Cluster`` node arguments of every local Ray instance soft-dist (and its test suite)
    starts: no dashboard, worker niceness 0 (see init_ray), and a free port as the dashboard's address.

    Why the port: without a dashboard Ray still records one at the default port (8265) in the cluster's
    GCS, and the state API goes there. With a `ray start` head on the same machine that port is the other
    cluster's dashboard, which answers that this cluster's Train controller does not exist; a free port
    that nothing listens on makes the query fail instead (see local_cluster_worker_setup)."""
    return {"include_dashboard": False, "dashboard_port": free_local_port(),
            "_system_config": {"worker_niceness": WORKER_NICENESS}}


def local_job_options() -> dict:
    """ray.init arguments of the driver of a local instance: every worker process it starts runs
    local_cluster_worker_setup."""
    return {"runtime_env": {"worker_process_setup_hook": f"{__name__}.{local_cluster_worker_setup.__name__}"}}


@contextlib.contextmanager
def local_nodes(nodes: int, cpus_per_node: int) -> Iterator[object]:
    """A Ray cluster of ``nodes`` raylets on this machine (``ray.cluster_utils.Cluster``: a head and
    ``nodes - 1`` more, ``cpus_per_node`` CPUs each), with this process connected as its driver; shut
    down, every raylet with it, on leaving. Each node has its own object store and its own workers, and
    Ray schedules across them as across machines: with ``cpus_per_node`` CPUs per Train worker, W workers
    run on W different nodes. Refused while this process is connected to another Ray instance."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        raise RuntimeError("local_nodes: this process is already connected to a Ray instance")
    if nodes < 1 or cpus_per_node < 1:
        raise ValueError(f"local_nodes: nodes ({nodes}) and cpus_per_node ({cpus_per_node}) must be >= 1")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus_per_node, **local_node_options()})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=cpus_per_node)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.ERROR, **local_job_options())
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


class RayStartError(RuntimeError):
    """A local Ray instance could not be started (twice): one line with the cause and its log folder."""


def _start_local(start: Callable[[], None], attempts: int = 2) -> None:
    """``start()`` a new local instance; once more if it fails (a start can time out on a loaded machine,
    or race another instance for a port), then RayStartError naming the cause and this start's logs.

    address="local" never joins another instance, and every port but the dashboard agent's is chosen
    free by Ray; without a dashboard nothing here uses that agent, so an instance already holding its
    port does not stop this one (tests/test_demo.py trains while another instance runs)."""
    import ray

    since = time.time()
    for _ in range(attempts):
        try:
            start()
            return
        except Exception as err:  # noqa: BLE001 - Ray raises OSError, RuntimeError, ConnectionError, ...
            ray.shutdown()  # whatever the failed start left half-running
            cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    logs = _newest_session_logs(since)
    raise RayStartError(f"could not start a local Ray instance ({attempts} attempts): {cause}; its logs: "
                        f"{logs or 'none written'}. To use a running cluster instead, set RAY_ADDRESS.")


def _newest_session_logs(since: float) -> str | None:
    """The logs folder of the newest Ray session begun after ``since`` under this process's Ray temp
    folder (RAY_TMPDIR, else the system's): this start's own, not ``session_latest``, which another
    instance may have taken over."""
    root = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray"
    sessions = [p for p in root.glob("session_2*") if p.is_dir() and p.stat().st_mtime >= since - 1]
    if not sessions:
        return None
    return str(max(sessions, key=lambda p: p.stat().st_mtime) / "logs")


def check_cluster_fits(train: TrainConfig) -> None:
    """Refuse, naming the field, a run whose workers the connected cluster cannot place today: Ray would
    otherwise wait for the resources for ever without a word (a GPU run on a CPU-only cluster, more
    workers than CPUs). An elastic run needs room for ``min_workers`` only. An autoscaling cluster counts
    the nodes it has now: start one GPU node first for a GPU run."""
    import ray

    have = ray.cluster_resources()
    workers = train.min_workers or train.workers
    if train.use_gpu and have.get("GPU", 0) < workers:
        raise ConfigError("train.use_gpu", f"{workers} worker(s) need one GPU each and the Ray cluster has "
                          f"{int(have.get('GPU', 0))}; set train.use_gpu=false or add GPU nodes")
    cpus = workers * train.cpus_per_worker
    if have.get("CPU", 0) < cpus:
        field = "train.min_workers" if train.min_workers else "train.workers"
        raise ConfigError(field, f"{workers} worker(s) x train.cpus_per_worker={train.cpus_per_worker} need "
                          f"{cpus} CPUs and the Ray cluster has {have.get('CPU', 0):g}")


def gather(refs: list, on_each: Callable[[], None] | None = None) -> list:
    """``ray.get`` of every ref, in the order given, calling ``on_each()`` as each one finishes (a progress
    bar's update), so long fan-outs show progress rather than one silent wait."""
    import ray

    pending = list(refs)
    while pending:
        _, pending = ray.wait(pending, num_returns=1)
        if on_each is not None:
            on_each()
    return ray.get(list(refs))


def live_actors() -> list[str]:
    """Class names of this job's actors that are alive (or starting, or restarting), from the GCS (no
    dashboard needed): what a finished run, sweep or grid must not leave behind. Detached actors are
    left out: they belong to the cluster (Ray Train's one AutoscalingCoordinator serves every run)."""
    import ray
    from ray._private import state

    job = ray.get_runtime_context().get_job_id()
    return sorted(a["ActorClassName"] for a in state.actors().values()
                  if a["JobID"] == job and a["State"] != "DEAD" and not a["IsDetached"])
