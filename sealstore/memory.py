"""Keeps a long-running service's resident memory near its working set.

The launcher raises glibc's mmap and trim thresholds (launcher.MALLOC_ENV) so that the ~1 MiB
stripe and message buffers are reused from the heap instead of being mapped and faulted in
afresh each time (3-5x faster erasure coding here). The price: glibc keeps every freed block
resident, in each of its per-thread arenas (up to 8 per core; gRPC's threads each get one).
Measured after 6 rounds of 512 MiB PUT + GET: the crypto worker's malloc heap held 161 MiB free
around 19 MiB in use (RSS 53 -> 228 MiB, still rising), the gateway's 163 MiB free; the Python
heap (tracemalloc) grew by less than 1 MiB. Nothing leaked: it was retention.

Two remedies, both needed: two arenas instead of sixteen (MALLOC_ARENA_MAX=2 in MALLOC_ENV),
and `malloc_trim(0)` every few seconds, which hands whole free pages back (about 9 ms for
250 MiB of free heap, 0.1 ms when there is nothing to give back). With both, RSS stayed flat
over 8 rounds of 512 MiB (crypto 77-86 MiB, storage 60-67, gateway 72-81) at the same
throughput.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

TRIM_INTERVAL = 10.0
"""Seconds between two trims: each costs a few ms at most, and the pages it frees are faulted in
again only if the next seconds need that much memory again."""


def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim this way
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def trim() -> None:
    """Returns the heap's free pages to the OS now (no-op without glibc)."""
    if _TRIM is not None:
        _TRIM(0)


async def _trim_forever(interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        trim()


def start_trimming(interval: float = TRIM_INTERVAL) -> asyncio.Task | None:
    """Trims the heap every `interval` seconds for the life of the running event loop; keep the
    returned task referenced. None when the C library cannot trim."""
    if _TRIM is None:
        log.info("malloc_trim is not available: resident memory keeps what the allocator retains")
        return None
    return asyncio.get_running_loop().create_task(_trim_forever(interval))
