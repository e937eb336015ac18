"""The gateway's front-door limits: sizes, timeouts and the failed-authentication throttle.

Every number can be changed through an environment variable (named next to each field), so
an operator can tighten or loosen the front door without code. The defaults fit S3 clients:
botocore, the AWS CLI and minio-py stay far below every size limit.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, fields

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_request_line: int = 16384
    """SEALSTORE_GATEWAY_MAX_REQUEST_LINE: bytes in the request line (long presigned URLs fit)."""
    max_header_size: int = 8190
    """SEALSTORE_GATEWAY_MAX_HEADER_SIZE: bytes in one header field."""
    max_headers: int = 100
    """SEALSTORE_GATEWAY_MAX_HEADERS: header fields in one request."""
    max_xml_body: int = 2 << 20
    """SEALSTORE_GATEWAY_MAX_XML_BODY: bytes of an XML request body (DeleteObjects with 1000 long keys fits)."""
    header_timeout: float = 20.0
    """SEALSTORE_GATEWAY_HEADER_TIMEOUT: seconds to send a complete request head once its first byte came."""
    body_timeout: float = 60.0
    """SEALSTORE_GATEWAY_BODY_TIMEOUT: seconds a request body may send nothing before RequestTimeout."""
    idle_timeout: float = 75.0
    """SEALSTORE_GATEWAY_IDLE_TIMEOUT: seconds a connection may wait for its next request (also the first)."""
    auth_fail_burst: int = 50
    """SEALSTORE_GATEWAY_AUTH_FAIL_BURST: failed authentications from one address before SlowDown."""
    auth_fail_rate: float = 5.0
    """SEALSTORE_GATEWAY_AUTH_FAIL_RATE: failed authentications per second one address earns back."""

    @classmethod
    def from_env(cls, env=None) -> "Limits":
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            name = "SEALSTORE_GATEWAY_" + f.name.upper()
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            kind = int if f.type in ("int", int) else float
            try:
                value = kind(raw)
            except ValueError:
                raise ValueError(f"{name} must be a number, not {raw!r}") from None
            if value <= 0:
                raise ValueError(f"{name} must be positive")
            values[f.name] = value
        return cls(**values)


class FailedAuthThrottle:
    """Token bucket per source address, spent by failed authentications only.

    An address whose bucket is empty gets SlowDown for every request until it has earned a
    token back, so a password-guessing or garbage-spraying client costs one dictionary
    lookup per request instead of an HMAC chain and a log line. Each burst is logged once
    when it starts and once when throttling starts, never per request.
    """

    MAX_TRACKED = 10000

    def __init__(self, burst: int, rate: float, clock=time.monotonic):
        self.burst = float(burst)
        self.rate = float(rate)
        self.clock = clock
        self._buckets: dict[str, list] = {}  # address -> [tokens, last update, failures, refused, throttled]

    def _refill(self, address: str) -> list | None:
        state = self._buckets.get(address)
        if state is None:
            return None
        now = self.clock()
        state[0] = min(self.burst, state[0] + (now - state[1]) * self.rate)
        state[1] = now
        if state[0] >= self.burst:
            if state[4] or state[2] > 1:
                log.info("failed authentication burst from %s ended: %d failures, %d requests refused",
                         address, state[2], state[3])
            del self._buckets[address]
            return None
        return state

    def allow(self, address: str) -> bool:
        """False when `address` is throttled (the caller answers SlowDown without authenticating)."""
        state = self._refill(address)
        if state is None or state[0] >= 1:
            return True
        state[3] += 1
        return False

    def failed(self, address: str, reason: str) -> None:
        state = self._refill(address)
        if state is None:
            if len(self._buckets) >= self.MAX_TRACKED:
                self._prune()
            state = self._buckets[address] = [self.burst, self.clock(), 0, 0, False]
            log.info("failed authentication from %s: %s", address, reason)
        state[0] -= 1
        state[2] += 1
        if state[0] < 1 and not state[4]:
            state[4] = True
            log.warning("failed authentication burst from %s: %d failures; answering SlowDown until it slows",
                        address, state[2])

    def _prune(self) -> None:
        for address in list(self._buckets):
            self._refill(address)
        if len(self._buckets) >= self.MAX_TRACKED:
            # Still full of live bursts: forget the oldest half rather than grow without bound.
            oldest = sorted(self._buckets, key=lambda a: self._buckets[a][1])
            for address in oldest[: len(oldest) // 2]:
                del self._buckets[address]
