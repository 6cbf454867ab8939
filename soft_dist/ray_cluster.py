"""Connecting to Ray: the cluster named by RAY_ADDRESS, else a new local one on this machine's cores."""

from __future__ import annotations

import os
import socket

# Where Ray's state API clients look first for the dashboard (see ray.dashboard.utils).
API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_ray(log_to_driver: bool = True) -> None:
    """Idempotent. With RAY_ADDRESS set, join that cluster. Otherwise start a new local cluster: a bare
    ``ray.init()`` would instead join whatever cluster /tmp/ray/ray_current_cluster names, even a dead one.

    The local cluster runs its dashboard on a free loopback port, and every process of the job is told
    where it is (RAY_API_SERVER_ADDRESS). Ray Train's placement-group cleaner polls the controller's state
    through that API: without a dashboard it logs a warning every few seconds for the whole run, and
    without the address it looks for one through ray_current_cluster, which may name a cluster that
    is gone (then its monitor thread dies with a traceback)."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
        return
    port = _free_loopback_port()
    ray.init(
        address="local", num_cpus=os.cpu_count(), include_dashboard=True, dashboard_host="127.0.0.1",
        dashboard_port=port, log_to_driver=log_to_driver,
        runtime_env={"env_vars": {API_SERVER_ENV: f"http://127.0.0.1:{port}"}},
    )
