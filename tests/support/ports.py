"""The one free-port helper of the tests: every harness and test asks here, never for a fixed port."""
from __future__ import annotations

import random
import socket


def free_port() -> int:
    """A loopback TCP port free right now (the OS picks it, so parallel runs do not clash)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_block(offsets: list[int], attempts: int = 200) -> int:
    """A base port such that base + each offset is free (for `sealstore run`, which numbers its
    services from one base port)."""
    for _ in range(attempts):
        base = random.randrange(20000, 40000, 100)
        if all(port_is_free(base + o) for o in offsets):
            return base
    raise RuntimeError("no free block of ports")
