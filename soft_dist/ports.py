"""A free TCP port on loopback, for servers and Ray addresses that must not collide with another's."""

from __future__ import annotations

import socket


def free_local_port() -> int:
    """A port nothing on 127.0.0.1 listens on now (the OS picks it; free again once this returns, so a
    caller binds it soon or only records it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
