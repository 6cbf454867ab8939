"""Connecting to Ray: the cluster named by RAY_ADDRESS, else a new local one on this machine's cores."""

from __future__ import annotations

import os


def init_ray(log_to_driver: bool = True) -> None:
    """Idempotent. Without RAY_ADDRESS a new local cluster is started (no dashboard): a bare
    ``ray.init()`` would instead join whatever cluster /tmp/ray/ray_current_cluster names, even a dead one."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
    else:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=log_to_driver)
