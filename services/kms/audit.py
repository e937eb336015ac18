"""The kms audit log: one JSON line per key operation, whichever API it came through.

Each line (keys always in this order):

    {"time": "2026-11-27T10:15:03.123Z", "api": "grpc", "identity": "<hex sha256>",
     "operation": "GenerateKey", "key": "bucket-a", "version": null,
     "outcome": "ok", "latency_ms": 0.41}

- `time`: when the call ended, RFC 3339 in UTC with milliseconds.
- `api`: "grpc" (KeyService) or "kes" (the KES-compatible HTTPS API).
- `identity`: the caller's identity (hex SHA-256 of its certificate's public key), "" if none.
- `operation`: the KeyService method name, which is also what policies match ("Decrypt", ...);
  KES routes are audited under the method they are authorised as.
- `key`: the key name the call named ("" for key-less calls; the pattern for ListKeys).
- `version`: the key version the call used, when the kms reports one; else null.
- `outcome`: "ok", or the typed error's name (`sealstore.errors`), e.g. "KMSAccessDenied",
  "KMSNotFound", "InternalError" - the same names the gRPC trailing metadata carries.
- `latency_ms`: time spent in the kms on this call, authorisation included.

Refused calls are audited like any other (outcome "KMSAccessDenied"). The log never holds key
material, data keys, plaintext or ciphertext: only the fields above are ever written, and none
of them is taken from a request or response body except the key name and version.

Every line is produced by `AuditLog.operation`; the gRPC interceptor below and the KES API's
middleware (services/kms/kes_api.py) are the two thin adapters that call it.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

import grpc

from sealstore import errors
from sealstore.rpc import peer_identity

log = logging.getLogger(__name__)

STDOUT = "-"
"""`--audit-file -` writes the audit lines to standard output."""
OFF = "off"
"""`--audit-file off` disables the audit log."""
DEFAULT_FILE_NAME = "audit.log"
"""Default audit file, inside the kms state folder (`<data>/kms/audit.log`)."""

GRPC_SERVICE_PREFIX = "/sealstore.v1.KeyService/"


def rfc3339_ms(epoch_seconds: float) -> str:
    """`2026-11-27T10:15:03.123Z`: RFC 3339, UTC, millisecond precision."""
    moment = datetime.datetime.fromtimestamp(epoch_seconds, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass
class AuditEvent:
    """One operation being audited; the caller may fill in `version` and `identity` as it learns them."""

    api: str
    identity: str
    operation: str
    key: str = ""
    version: int | None = None
    outcome: str = "ok"
    started: float = field(default_factory=time.perf_counter)

    def line(self, ended_at: float, latency_s: float) -> str:
        return json.dumps({
            "time": rfc3339_ms(ended_at),
            "api": self.api,
            "identity": self.identity,
            "operation": self.operation,
            "key": self.key,
            "version": self.version,
            "outcome": self.outcome,
            "latency_ms": round(latency_s * 1000, 3),
        }, separators=(",", ":"))


def outcome_of(exc: BaseException) -> str:
    """The `outcome` of a failed call: the typed error's name, as in gRPC trailing metadata."""
    if isinstance(exc, errors.SealstoreError):
        return errors.grpc_trailing_metadata(exc)[0][1]
    if isinstance(exc, asyncio.CancelledError):
        return "Cancelled"
    return "InternalError"


class AuditLog:
    """Appends audit lines to a file (mode 0600) or to stdout; safe from any thread.

    Each line is written and flushed whole, so a reader (or a crash) never sees half a line.
    Lines are not fsynced: the audit log costs a write() per call, not a disk flush.
    """

    def __init__(self, stream: IO[str], *, owns_stream: bool, description: str) -> None:
        self._stream = stream
        self._owns_stream = owns_stream
        self._lock = threading.Lock()
        self.description = description

    @classmethod
    def open(cls, destination: str | Path) -> "AuditLog":
        """An audit log writing to `destination`: a file path (appended to), or "-" for stdout."""
        if str(destination) == STDOUT:
            return cls(sys.stdout, owns_stream=False, description="stdout")
        path = Path(destination)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # the kms state folder, if first
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return cls(os.fdopen(fd, "a", encoding="utf-8"), owns_stream=True, description=str(path))

    def write(self, line: str) -> None:
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()

    @contextlib.contextmanager
    def operation(self, api: str, identity: str, operation: str, key: str = "") -> Iterator[AuditEvent]:
        """Audits the block as one operation: its outcome is "ok" unless the block raises.

        The exception propagates unchanged; the line is written either way.
        """
        event = AuditEvent(api=api, identity=identity, operation=operation, key=key)
        try:
            yield event
        except BaseException as exc:
            event.outcome = outcome_of(exc)
            raise
        finally:
            latency = time.perf_counter() - event.started
            try:
                self.write(event.line(time.time(), latency))
            except (OSError, ValueError) as exc:  # a full disk must not fail the key operation itself
                log.error("could not write the audit log %s: %s", self.description, exc)

    def close(self) -> None:
        if self._owns_stream:
            with self._lock:
                self._stream.close()


def open_audit_log(option: str | None, kms_state_dir: Path) -> AuditLog | None:
    """The audit log `--audit-file` asks for: None/"" means `<kms state dir>/audit.log`,
    "-" stdout, "off" none."""
    if option is not None and option.strip().lower() == OFF:
        return None
    return AuditLog.open(option or kms_state_dir / DEFAULT_FILE_NAME)


def _version_in(message) -> int | None:
    """A key version carried in a protobuf message's `version` field, if it has one (>0)."""
    descriptor = getattr(message, "DESCRIPTOR", None)
    if descriptor is None or "version" not in descriptor.fields_by_name:
        return None
    value = getattr(message, "version")
    # Only integer versions: StatusResponse.version is the software version string.
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _key_named_in(request) -> str:
    return getattr(request, "name", "") or getattr(request, "pattern", "") or ""


class AuditInterceptor(grpc.aio.ServerInterceptor):
    """Audits every KeyService call, including those the authorisation interceptor refuses.

    Place it before the authorisation interceptor, so it wraps it.
    """

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        full_method = handler_call_details.method or ""
        if handler is None or not full_method.startswith(GRPC_SERVICE_PREFIX) or not handler.unary_unary:
            return handler
        method = full_method[len(GRPC_SERVICE_PREFIX):]
        behavior = handler.unary_unary
        audit = self.audit

        async def audited(request, context):
            with audit.operation("grpc", peer_identity(context), method, _key_named_in(request)) as event:
                event.version = _version_in(request)
                response = await behavior(request, context)
                event.version = _version_in(response) or event.version
                return response

        return grpc.unary_unary_rpc_method_handler(
            audited, handler.request_deserializer, handler.response_serializer)
