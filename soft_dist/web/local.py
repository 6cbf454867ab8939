"""`soft-dist serve`'s life cycle: Ray (a new local instance, or the cluster RAY_ADDRESS names), the Serve
application on HOST:PORT, then waiting until Ctrl-C or SIGTERM, when everything it started is stopped:
on a local instance Serve and Ray themselves (no process is left), on a cluster only its application."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

from soft_dist.config import ConfigError
from soft_dist.web.options import ServeOptions

# Serve's driver-side INFO lines ("Started Serve", "Deployed app ...") would fill the console; its
# warnings and errors still show. The replicas' own logs stay in Ray's log folder (session_latest/logs/serve).
SERVE_LOGGERS = ("ray.serve",)


def quiet_serve_logs() -> None:
    """Serve's driver-side INFO lines off the console (warnings and errors still show)."""
    for name in SERVE_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def check_port_free(host: str, port: int) -> None:
    """ConfigError naming --port when HOST:PORT cannot be listened on (Serve's proxy would otherwise fail
    inside an actor and the application never become ready)."""
    with socket.socket() as s:
        # as the proxy binds: a port whose last connections are still closing (TIME_WAIT) is free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            raise ConfigError("--port", f"cannot listen on {host}:{port} ({err.strerror}); pick another port") from None


def serve_until_stopped(options: ServeOptions, host: str, port: int, stop: threading.Event | None = None) -> None:
    """Run the application until SIGINT / SIGTERM (or ``stop`` is set), then stop what was started."""
    import ray
    from ray import serve

    from soft_dist.ray_cluster import init_ray
    from soft_dist.web.app import APP_NAME, build_app

    quiet_serve_logs()
    on_cluster = bool(os.environ.get("RAY_ADDRESS"))
    app = build_app(options)  # a bad model fails here, before Ray starts
    if not on_cluster:
        check_port_free(host, port)
    stop = stop or threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    started = time.perf_counter()
    # Ctrl-C in a terminal signals the whole foreground process group, which holds the Ray processes this
    # command starts (GCS, raylet, ...): they would die at once, and Serve's orderly shutdown would then
    # wait for a controller that is gone. They are started with SIGINT blocked (the mask is inherited), so
    # only this process hears Ctrl-C and stops them in order.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        init_ray()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(app, name=APP_NAME, route_prefix="/")
        print(f"serve: {options.model} ({options.backend}) ready at http://{host}:{port}/ in "
              f"{time.perf_counter() - started:.0f} s: POST /predict, POST /predict/batch, GET /metadata, "
              f"GET /healthz; Ctrl-C stops", flush=True)
        while not stop.wait(1.0):
            pass
        print("serve: stopping", flush=True)
    finally:
        # The handlers stay while stopping: a second Ctrl-C must not cut the shutdown short. The application
        # is deleted (its replicas finish the requests they hold); on a local instance Ray's own shutdown
        # then ends Serve's controller and proxy with every other process (serve.shutdown() would, in Ray
        # 2.60, print a raylet error about the controller it has just killed).
        serve.delete(APP_NAME)
        ray.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
