"""The one free-port helper of the tests: every harness and test asks here, never for a fixed port.

Ports are picked below the kernel's ephemeral range (`ip_local_port_range`, 32768-60999 by
default). A port from inside it that is free when checked can be taken a moment later as the
source port of any outbound connection on the machine (a client, a gRPC channel), and the service
then fails to bind: that is how CI once lost a run ("Address already in use" on 39002). Outside the
range only another listener can take it, and no port is handed out twice by one test run.
"""
from __future__ import annotations

import random
import socket
from pathlib import Path

_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10000
_handed_out: set[int] = set()


def ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(part) for part in _EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return low, high


def _pick_range() -> tuple[int, int]:
    """[start, stop) of the ports the tests use: below the ephemeral range, or above it when a
    machine has moved that range down."""
    low, high = ephemeral_range()
    if low - _LOWEST >= 5000:
        return _LOWEST, low
    return high + 1, 65536


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(attempts: int = 500) -> int:
    """A loopback TCP port, outside the ephemeral range, free right now and not handed out before."""
    start, stop = _pick_range()
    for _ in range(attempts):
        port = random.randrange(start, stop)
        if port not in _handed_out and port_is_free(port):
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free port in {start}-{stop}")


def free_port_block(offsets: list[int], attempts: int = 200) -> int:
    """A base port such that base + each offset is free (for `sealstore run`, which numbers its
    services from one base port)."""
    start, stop = _pick_range()
    span = max(offsets) + 1
    for _ in range(attempts):
        base = random.randrange(start, stop - span, 100)
        ports = [base + o for o in offsets]
        if not _handed_out.intersection(ports) and all(port_is_free(p) for p in ports):
            _handed_out.update(ports)
            return base
    raise RuntimeError("no free block of ports")
