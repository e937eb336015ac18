"""Talking to OpenBao (or Vault) over HTTP with hvac: connection settings, one client per
thread, and the one table that turns OpenBao's errors into sealstore's typed errors.

Both OpenBao backends (openbao_kv.py, openbao_transit.py) call OpenBao only through
`OpenBaoConnection.call`, so every failure is mapped here and nowhere else.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, TypeVar

import hvac
import hvac.exceptions as hx
import requests

from sealstore import errors

T = TypeVar("T")


@dataclass(frozen=True)
class OpenBaoSettings:
    address: str
    """e.g. http://127.0.0.1:8200 (SEALSTORE_OPENBAO_ADDR)."""
    token: str
    """From SEALSTORE_OPENBAO_TOKEN or the file SEALSTORE_OPENBAO_TOKEN_FILE."""
    mount: str
    """The secrets engine's mount path (SEALSTORE_OPENBAO_MOUNT)."""
    kv_prefix: str = "sealstore/keys"
    """Path inside the KV mount under which keys live (SEALSTORE_OPENBAO_KV_PREFIX)."""
    ca_cert: str | None = None
    """CA bundle for an https address (SEALSTORE_OPENBAO_CACERT); None = system CAs."""
    timeout_seconds: float = 5.0
    """Per-request timeout (SEALSTORE_OPENBAO_TIMEOUT)."""

    def __repr__(self) -> str:  # never show the token
        return f"OpenBaoSettings(address={self.address!r}, mount={self.mount!r}, kv_prefix={self.kv_prefix!r})"


# The one table: (exception type, substring of OpenBao's message or None for any, typed error,
# what it means). The first matching row wins; docs/kms.md shows the same table.
ERROR_TABLE: list[tuple[type[BaseException], str | None, type[errors.SealstoreError], str]] = [
    (hx.InvalidPath, None, errors.KMSNotFound, "404: no such key (transit key or KV secret)"),
    (hx.InvalidRequest, "encryption key not found", errors.KMSNotFound, "transit: no such key"),
    (hx.InvalidRequest, "not found", errors.KMSNotFound, "transit delete: no such key"),
    (hx.InvalidRequest, "no existing key named", errors.KMSNotFound, "transit config: no such key"),
    (hx.InvalidRequest, "soft-deleted", errors.KMSDisabled, "transit: key is soft-deleted (sealstore: disabled)"),
    (hx.InternalServerError, "soft-deleted", errors.KMSDisabled, "transit rotate of a soft-deleted key"),
    (hx.InvalidRequest, "message authentication failed", errors.KMSInvalidCiphertext,
     "transit: ciphertext not authentic for this key and context"),
    (hx.InvalidRequest, "invalid ciphertext", errors.KMSInvalidCiphertext, "transit: malformed ciphertext"),
    (hx.InvalidRequest, "too old", errors.KMSInvalidCiphertext,
     "transit: ciphertext version below min_decryption_version (retired)"),
    (hx.InvalidRequest, "invalid version", errors.KMSInvalidCiphertext, "transit: ciphertext names no such version"),
    (hx.InvalidRequest, "check-and-set parameter did not match", errors.KMSKeyExists,
     "KV: create-only write (cas=0) found the key"),
    (hx.Forbidden, None, errors.KMSUnavailable, "403: OpenBao refused the kms's token (policy or expiry)"),
    (hx.VaultDown, None, errors.KMSUnavailable, "503: OpenBao is sealed or standby"),
    (hx.RateLimitExceeded, None, errors.KMSUnavailable, "429: OpenBao rate limit"),
    (hx.BadGateway, None, errors.KMSUnavailable, "502"),
    (hx.InternalServerError, None, errors.KMSUnavailable, "500: OpenBao failed"),
    (hx.VaultNotInitialized, None, errors.KMSUnavailable, "OpenBao not initialised"),
    (requests.exceptions.ConnectionError, None, errors.KMSUnavailable, "OpenBao unreachable"),
    (requests.exceptions.Timeout, None, errors.KMSUnavailable, "OpenBao did not answer in time"),
    (requests.exceptions.RequestException, None, errors.KMSUnavailable, "any other HTTP failure"),
    (hx.InvalidRequest, None, errors.SealstoreError, "400 not listed above: a bug or misconfiguration"),
    (hx.VaultError, None, errors.SealstoreError, "anything else from OpenBao"),
]


def map_error(exc: BaseException, what: str) -> errors.SealstoreError:
    """The typed error for an OpenBao failure while doing `what` (e.g. "decrypt with key 'k'").

    OpenBao's message never contains key bytes or plaintext, so it may be quoted.
    """
    text = str(exc)
    for exc_type, needle, typed, _meaning in ERROR_TABLE:
        if isinstance(exc, exc_type) and (needle is None or needle in text):
            detail = text.split(", on ")[0] if isinstance(exc, hx.VaultError) else type(exc).__name__
            if typed is errors.KMSUnavailable:
                return typed(f"OpenBao cannot {what}: {detail or type(exc).__name__}")
            return typed(f"cannot {what}: {detail}" if detail and detail != "None" else f"cannot {what}")
    raise exc


class OpenBaoConnection:
    """hvac clients for one OpenBao address and token, one per thread (requests sessions are
    not meant to be shared between threads)."""

    def __init__(self, settings: OpenBaoSettings) -> None:
        self.settings = settings
        self._local = threading.local()

    def client(self) -> hvac.Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = hvac.Client(url=self.settings.address, token=self.settings.token,
                                 verify=self.settings.ca_cert or True, timeout=self.settings.timeout_seconds)
            self._local.client = client
        return client

    def call(self, fn: Callable[[hvac.Client], T], what: str) -> T:
        """Runs `fn(client)`; any OpenBao failure comes out as a typed error."""
        try:
            return fn(self.client())
        except (hx.VaultError, requests.exceptions.RequestException) as exc:
            raise map_error(exc, what) from None

    def ping(self) -> None:
        """Raises KMSUnavailable unless OpenBao answers and is unsealed."""
        health = self.call(lambda c: c.sys.read_health_status(method="GET"), "report its health")
        if isinstance(health, dict) and health.get("sealed"):
            raise errors.KMSUnavailable("OpenBao is sealed")
        if not isinstance(health, dict) and getattr(health, "status_code", 200) >= 500:
            raise errors.KMSUnavailable(f"OpenBao health check answered {health.status_code}")
