"""What the kms does, without gRPC: key lifecycle, versions, and data keys (KES semantics),
over whichever backend the configuration chose (backend.py, settings.py).

Beyond KES:
- a key can be disabled (KMS.DisabledException for GenerateKey/Decrypt/ReWrap) and enabled;
- a key has versions: `rotate_key` adds one, GenerateKey uses the newest, Decrypt opens every
  version >= the key's minimum version (`set_min_version`), `rewrap` moves a data key
  ciphertext to the newest version without the plaintext leaving the kms;
- deletion may be scheduled 7-30 days ahead (as AWS KMS): meanwhile the key refuses data-key
  calls (KMS.KMSInvalidStateException), `cancel_key_deletion` recovers it (disabled), and
  `purge_due_deletions` (run at start and periodically by the server) deletes it when due.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Callable

from sealstore import errors
from services.kms.backend import DataKey, KeyBackend, KeyMeta, Opened, validate_key_name

log = logging.getLogger(__name__)

VERSION = "0.1.0"
MIN_PENDING_WINDOW_DAYS = 7
MAX_PENDING_WINDOW_DAYS = 30
DAY_NS = 86_400 * 1_000_000_000


@dataclass(frozen=True)
class KeyInfo:
    """What a caller may learn about a key: everything but its material."""

    name: str
    algorithm: str
    created_ns: int
    created_by: str
    enabled: bool
    """False while disabled or pending deletion."""
    version: int = 1
    min_version: int = 1
    deletion_ns: int = 0
    """When a scheduled deletion happens (Unix ns); 0 if none is pending."""

    @classmethod
    def of(cls, meta: KeyMeta) -> "KeyInfo":
        return cls(meta.name, meta.algorithm, meta.created_ns, meta.created_by, meta.usable,
                   meta.version, meta.min_version, meta.deletion_ns)


@dataclass(frozen=True)
class Status:
    version: str
    keystore: str
    key_count: int
    uptime_seconds: float
    caller_identity: str
    keystore_reachable: bool = True


class KeyManager:
    """The kms's operations over one backend. `caller` is always the caller's identity."""

    def __init__(self, store: KeyBackend, *, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.store = store
        self.clock_ns = clock_ns
        self._started = time.monotonic()

    @property
    def may_block(self) -> bool:
        """True if calls may wait on the network (run them off the event loop)."""
        return self.store.blocking

    # ------------------------------------------------------------ lifecycle

    def create_key(self, name: str, caller: str) -> KeyInfo:
        validate_key_name(name)
        info = KeyInfo.of(self.store.create(name, caller))
        log.info("key %r created by %s", name, caller)
        return info

    def import_key(self, name: str, material: bytes, caller: str) -> KeyInfo:
        validate_key_name(name)
        info = KeyInfo.of(self.store.import_key(name, material, caller))
        log.info("key %r imported by %s", name, caller)
        return info

    def describe_key(self, name: str) -> KeyInfo:
        validate_key_name(name)
        return KeyInfo.of(self.store.describe(name))

    def list_keys(self, pattern: str = "") -> list[KeyInfo]:
        pattern = pattern or "*"
        infos = []
        for name in self.store.list():
            if not fnmatchcase(name, pattern):
                continue
            try:
                infos.append(KeyInfo.of(self.store.describe(name)))
            except errors.KMSNotFound:
                continue  # deleted while we listed
        return infos

    def delete_key(self, name: str, caller: str, *, pending_window_days: int = 0) -> KeyInfo | None:
        """Deletes now (returns None), or with `pending_window_days` (7-30) schedules the
        deletion and returns the key's state."""
        validate_key_name(name)
        if not pending_window_days:
            self.store.delete(name)
            log.info("key %r deleted by %s", name, caller)
            return None
        if not MIN_PENDING_WINDOW_DAYS <= pending_window_days <= MAX_PENDING_WINDOW_DAYS:
            raise errors.InvalidArgument(
                f"a deletion window is {MIN_PENDING_WINDOW_DAYS} to {MAX_PENDING_WINDOW_DAYS} days, "
                f"not {pending_window_days}")
        deletion_ns = self.clock_ns() + pending_window_days * DAY_NS
        info = KeyInfo.of(self.store.schedule_deletion(name, deletion_ns))
        log.info("key %r scheduled for deletion in %d days by %s", name, pending_window_days, caller)
        return info

    def cancel_key_deletion(self, name: str, caller: str) -> KeyInfo:
        validate_key_name(name)
        info = KeyInfo.of(self.store.cancel_deletion(name))
        log.info("deletion of key %r cancelled by %s; the key stays disabled", name, caller)
        return info

    def disable_key(self, name: str, caller: str) -> KeyInfo:
        validate_key_name(name)
        info = KeyInfo.of(self.store.set_enabled(name, False))
        log.info("key %r disabled by %s", name, caller)
        return info

    def enable_key(self, name: str, caller: str) -> KeyInfo:
        validate_key_name(name)
        info = KeyInfo.of(self.store.set_enabled(name, True))
        log.info("key %r enabled by %s", name, caller)
        return info

    def rotate_key(self, name: str, caller: str) -> KeyInfo:
        validate_key_name(name)
        info = KeyInfo.of(self.store.rotate(name))
        log.info("key %r rotated to version %d by %s", name, info.version, caller)
        return info

    def set_min_version(self, name: str, min_version: int, caller: str) -> KeyInfo:
        validate_key_name(name)
        info = KeyInfo.of(self.store.set_min_version(name, min_version))
        log.info("key %r min version set to %d by %s", name, min_version, caller)
        return info

    # ------------------------------------------------------------ data keys

    def generate_key(self, name: str, context: bytes) -> DataKey:
        validate_key_name(name)
        return self.store.generate_data_key(name, context)

    def decrypt_versioned(self, name: str, sealed: bytes, context: bytes) -> Opened:
        validate_key_name(name)
        return self.store.decrypt(name, sealed, context)

    def decrypt(self, name: str, sealed: bytes, context: bytes) -> bytes:
        return self.decrypt_versioned(name, sealed, context).plaintext

    def rewrap(self, name: str, sealed: bytes, context: bytes) -> DataKey:
        """The same data key under the newest version; `.plaintext` is empty."""
        validate_key_name(name)
        return self.store.rewrap(name, sealed, context)

    # ------------------------------------------------------------ upkeep

    def purge_due_deletions(self) -> list[str]:
        """Deletes every key whose scheduled deletion is due; returns their names."""
        now = self.clock_ns()
        purged = []
        for name in self.store.list():
            try:
                meta = self.store.describe(name)
                if meta.pending_deletion and meta.deletion_ns <= now:
                    self.store.delete(name)
                    purged.append(name)
                    log.info("key %r deleted: its scheduled deletion was due", name)
            except errors.KMSNotFound:
                continue
        return purged

    def check_backend(self) -> bool:
        """Pings the backend (which also ends an offline period); True if it answered."""
        availability = getattr(self.store, "availability", None)
        try:
            self.store.ping()
        except errors.KMSUnavailable as err:
            if availability is not None:
                availability.mark_down()
            log.warning("keystore %s unreachable: %s", self.store.kind, err.message)
            return False
        if availability is not None:
            availability.mark_up()
        return True

    def status(self, caller: str) -> Status:
        availability = getattr(self.store, "availability", None)
        reachable = availability.online if availability is not None else True
        try:
            count = len(self.store.list())
        except errors.KMSUnavailable:
            count, reachable = 0, False
        return Status(version=VERSION, keystore=self.store.kind, key_count=count,
                      uptime_seconds=time.monotonic() - self._started, caller_identity=caller,
                      keystore_reachable=reachable)
