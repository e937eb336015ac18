"""Erasure coding of a stored stream, one stripe at a time (pyeclib, ISA-L Cauchy RS).

Pure: no I/O. A stripe is a fixed number of stored bytes (the writer decides it and records it
in the object's ErasureLayout; the last stripe is shorter); it encodes to k+m fragments,
fragment i goes to member i, and any k fragments decode it. Each fragment starts with
pyeclib's own header (index, original size, checksum).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from pyeclib.ec_iface import ECDriver

from sealstore import errors

EC_TYPE = "isa_l_rs_cauchy"


def stripe_count(stored_size: int, stripe_size: int) -> int:
    return -(-stored_size // stripe_size)


def stripe_span(offset: int, length: int, stripe_size: int) -> tuple[int, int]:
    """(first stripe, number of stripes) covering stored bytes [offset, offset+length)."""
    if length <= 0:
        return offset // stripe_size, 0
    first = offset // stripe_size
    last = (offset + length - 1) // stripe_size
    return first, last - first + 1


@dataclass
class StripeCoder:
    data_shards: int
    parity_shards: int
    ec_type: str = EC_TYPE

    def __post_init__(self):
        self._driver = _driver(self.data_shards, self.parity_shards, self.ec_type)

    @property
    def width(self) -> int:
        return self.data_shards + self.parity_shards

    def encode(self, stripe: bytes) -> list[bytes]:
        """k+m fragments of one non-empty stripe; fragment i belongs to member i."""
        if not stripe:
            raise ValueError("an empty stripe has no fragments")
        return self._driver.encode(bytes(stripe))

    def decode(self, fragments: list[bytes]) -> bytes:
        """The stripe, from any k (or more) of its fragments."""
        if len(fragments) < self.data_shards:
            raise errors.SlowDown(f"need {self.data_shards} fragments to decode a stripe, have {len(fragments)}")
        try:
            return self._driver.decode(list(fragments))
        except Exception as exc:  # pyeclib raises its own ECDriverError subclasses
            raise errors.ObjectTampered(f"erasure decoding failed: {type(exc).__name__}") from None


@functools.lru_cache(maxsize=16)
def _driver(k: int, m: int, ec_type: str) -> ECDriver:
    return ECDriver(k=k, m=m, ec_type=ec_type)
