"""The tests' port picker: never inside the kernel's ephemeral range (where any outbound
connection may take a port between the check and the bind), never the same port twice."""
from __future__ import annotations

import socket

from tests.support import ports


def test_ports_stay_outside_the_ephemeral_range_and_are_never_handed_out_twice():
    low, high = ports.ephemeral_range()
    picked = [ports.free_port() for _ in range(300)]
    assert len(set(picked)) == len(picked)
    assert not [p for p in picked if low <= p <= high]


def test_a_block_is_outside_the_range_and_free_and_its_ports_are_not_handed_out_again():
    low, high = ports.ephemeral_range()
    offsets = [1, 2, 3, 11, 12, 98, 99]
    base = ports.free_port_block(offsets)
    block = {base + o for o in offsets}
    assert not [p for p in block if low <= p <= high]
    assert all(ports.port_is_free(p) for p in block)
    assert not block.intersection(ports.free_port() for _ in range(300))


def test_a_port_held_by_a_listener_is_not_picked(monkeypatch):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        held.listen()
        assert not ports.port_is_free(taken)
        # Every draw is the taken port first, then any other: the picker must skip it.
        draws = iter([taken, taken, taken])
        real = ports.random.randrange
        monkeypatch.setattr(ports.random, "randrange", lambda *a: next(draws, None) or real(*a))
        assert ports.free_port() != taken
