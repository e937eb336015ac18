"""The one free-port helper of the tests: every harness and test asks here, never for a fixed port."""
from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback TCP port free right now (the OS picks it, so parallel runs do not clash)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
