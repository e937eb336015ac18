"""Backends that hold key material and do the cryptography in the kms (fs, OpenBao KV, memory).

A key is one `KeyRecord`: its material per version plus its state. Subclasses only persist
records (`_store_new`, `_load`, `_store_update`, `_remove`, `_names`); this class caches
them (cache.py: any/unused/offline expiry, so data keys keep working while the store is
unreachable) and makes and opens data keys with KES's AEAD (ciphertext.py), tagging each
ciphertext with the version it was made under.
"""
from __future__ import annotations

import abc
import os
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from sealstore import errors
from services.kms import ciphertext
from services.kms.backend import (KEY_SIZE, DataKey, KeyBackend, KeyMeta, Opened, refuse_unusable,
                                  validate_key_name)
from services.kms.cache import Availability, CacheSettings, ExpiringCache

ALGORITHM = "AES256"
"""AES-256-GCM with a per-ciphertext HMAC-SHA256-derived key, as KES names it."""
_UPDATE_ATTEMPTS = 8


@dataclass(frozen=True)
class KeyRecord:
    """One external key as a local backend stores it."""

    name: str
    versions: tuple[bytes, ...] = field(repr=False)
    """Material of version i+1 at index i; never logged, never in a message (hence repr=False)."""
    created_ns: int
    created_by: str
    enabled: bool = True
    min_version: int = 1
    deletion_ns: int = 0
    algorithm: str = ALGORITHM
    revision: int = 0
    """The store's revision of this record (OpenBao KV version, for check-and-set); 0 if unused."""

    @property
    def version(self) -> int:
        return len(self.versions)

    def meta(self) -> KeyMeta:
        return KeyMeta(name=self.name, algorithm=self.algorithm, created_ns=self.created_ns,
                       created_by=self.created_by, enabled=self.enabled, version=self.version,
                       min_version=self.min_version, deletion_ns=self.deletion_ns)


class UpdateConflict(Exception):
    """The record changed in the store since it was read (check-and-set failed): read again."""


class LocalKeyBackend(KeyBackend):
    """Key records in some store; data keys made and opened here, under cached records."""

    def __init__(self, cache_settings: CacheSettings | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.availability = Availability(cache_settings or CacheSettings(), clock)
        self._records: ExpiringCache[str, KeyRecord] = ExpiringCache(f"{self.kind}-keys", self.availability)
        self._lock = threading.Lock()
        """Serialises this process's changes; other writers are caught by _store_update's check."""

    # ------------------------------------------------------------ what a store implements

    @abc.abstractmethod
    def _store_new(self, record: KeyRecord) -> KeyRecord:
        """Persists a record whose name is new; returns it with its revision.
        Raises KMSKeyExists if the name is taken."""

    @abc.abstractmethod
    def _load(self, name: str) -> KeyRecord:
        """The stored record. Raises KMSNotFound if absent."""

    @abc.abstractmethod
    def _store_update(self, old: KeyRecord, new: KeyRecord) -> KeyRecord:
        """Replaces `old` (as read) by `new`; returns `new` with its revision.
        Raises UpdateConflict if the stored record is no longer `old`, KMSNotFound if gone."""

    @abc.abstractmethod
    def _remove(self, name: str) -> None:
        """Removes the record and every version of it. Raises KMSNotFound if absent."""

    @abc.abstractmethod
    def _names(self) -> list[str]:
        """Names of all stored records, sorted."""

    # ------------------------------------------------------------ the KeyBackend contract

    def _record(self, name: str) -> KeyRecord:
        validate_key_name(name)
        return self._records.read_through(name, lambda: self._load(name), what=f"read key {name!r}")

    def _add(self, name: str, material: bytes, caller: str) -> KeyMeta:
        validate_key_name(name)
        record = KeyRecord(name=name, versions=(material,), created_ns=time.time_ns(), created_by=caller)
        with self._lock:
            stored = self.availability.call(lambda: self._store_new(record), f"create key {name!r}")
            self._records.put(name, stored)
        return stored.meta()

    def create(self, name: str, caller: str) -> KeyMeta:
        return self._add(name, os.urandom(KEY_SIZE), caller)

    def import_key(self, name: str, material: bytes, caller: str) -> KeyMeta:
        if len(material) != KEY_SIZE:
            raise errors.InvalidArgument(f"an imported key must be exactly {KEY_SIZE} bytes, not {len(material)}")
        return self._add(name, bytes(material), caller)

    def describe(self, name: str) -> KeyMeta:
        return self._record(name).meta()

    def list(self) -> list[str]:
        return self.availability.call(self._names, "list keys")

    def delete(self, name: str) -> None:
        validate_key_name(name)
        with self._lock:
            try:
                self.availability.call(lambda: self._remove(name), f"delete key {name!r}")
            finally:
                self._records.drop(name)

    def _modify(self, name: str, change: Callable[[KeyRecord], KeyRecord]) -> KeyMeta:
        """Applies `change` to the freshly read record and stores the result (check-and-set)."""
        validate_key_name(name)
        with self._lock:
            for _ in range(_UPDATE_ATTEMPTS):
                old = self.availability.call(lambda: self._load(name), f"change key {name!r}")
                new = change(old)
                try:
                    stored = self.availability.call(lambda: self._store_update(old, new), f"change key {name!r}")
                except UpdateConflict:
                    continue
                except errors.KMSNotFound:
                    self._records.drop(name)
                    raise
                self._records.put(name, stored)
                return stored.meta()
        raise errors.KMSUnavailable(f"key {name!r} kept changing under us; try again")

    def set_enabled(self, name: str, enabled: bool) -> KeyMeta:
        def change(record: KeyRecord) -> KeyRecord:
            if enabled and record.deletion_ns:
                raise errors.KMSPendingDeletion(f"key {name!r} is pending deletion: cancel the deletion first")
            return replace(record, enabled=enabled)
        return self._modify(name, change)

    def schedule_deletion(self, name: str, deletion_ns: int) -> KeyMeta:
        def change(record: KeyRecord) -> KeyRecord:
            if record.deletion_ns:
                raise errors.KMSPendingDeletion(f"key {name!r} is already pending deletion")
            return replace(record, deletion_ns=deletion_ns)
        return self._modify(name, change)

    def cancel_deletion(self, name: str) -> KeyMeta:
        def change(record: KeyRecord) -> KeyRecord:
            if not record.deletion_ns:
                raise errors.InvalidRequest(f"key {name!r} is not pending deletion")
            return replace(record, deletion_ns=0, enabled=False)
        return self._modify(name, change)

    def rotate(self, name: str) -> KeyMeta:
        def change(record: KeyRecord) -> KeyRecord:
            if record.deletion_ns:
                raise errors.KMSPendingDeletion(f"key {name!r} is pending deletion")
            return replace(record, versions=record.versions + (os.urandom(KEY_SIZE),))
        return self._modify(name, change)

    def set_min_version(self, name: str, min_version: int) -> KeyMeta:
        def change(record: KeyRecord) -> KeyRecord:
            if not 1 <= min_version <= record.version:
                raise errors.InvalidArgument(
                    f"key {name!r} has versions 1..{record.version}; min version {min_version} is outside")
            return replace(record, min_version=min_version)
        return self._modify(name, change)

    def generate_data_key(self, name: str, context: bytes) -> DataKey:
        record = self._record(name)
        refuse_unusable(record.meta())
        plaintext = os.urandom(KEY_SIZE)
        return DataKey(plaintext, self._wrap(record, plaintext, context), record.version)

    @staticmethod
    def _wrap(record: KeyRecord, plaintext: bytes, context: bytes) -> bytes:
        return ciphertext.add_version(record.version, ciphertext.seal(record.versions[-1], plaintext, context))

    def decrypt(self, name: str, sealed: bytes, context: bytes) -> Opened:
        record = self._record(name)
        readings = ciphertext.split_version(sealed)
        if readings[0][0] > record.version:
            # A newer version than we know: another kms may have rotated the key meanwhile.
            record = self._records.read_through(name, lambda: self._load(name), what=f"read key {name!r}",
                                                serve_fresh=False)
        refuse_unusable(record.meta())
        refusal: errors.SealstoreError | None = None
        for version, kes_ciphertext in readings:
            if version > record.version:
                refusal = refusal or errors.KMSInvalidCiphertext(
                    f"ciphertext names version {version} of key {name!r}, which has only {record.version}")
                continue
            if version < record.min_version:
                refusal = refusal or errors.KMSInvalidCiphertext(
                    f"ciphertext is under version {version} of key {name!r}, below its minimum version "
                    f"{record.min_version}: that version is retired (rewrap before retiring)")
                continue
            try:
                return Opened(ciphertext.unseal(record.versions[version - 1], kes_ciphertext, context,
                                                key_name=name), version)
            except errors.KMSInvalidCiphertext as err:
                refusal = refusal or err
        assert refusal is not None
        raise refusal

    def rewrap(self, name: str, sealed: bytes, context: bytes) -> DataKey:
        opened = self.decrypt(name, sealed, context)
        record = self._record(name)
        return DataKey(b"", self._wrap(record, opened.plaintext, context), record.version)


class MemoryKeyStore(LocalKeyBackend):
    """Records in a dict; for unit tests. Same contract as every backend."""

    kind = "mem"
    blocking = False

    def __init__(self, cache_settings: CacheSettings | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(cache_settings, clock)
        self._stored: dict[str, KeyRecord] = {}

    def _store_new(self, record: KeyRecord) -> KeyRecord:
        if record.name in self._stored:
            raise errors.KMSKeyExists(f"key {record.name!r} already exists")
        self._stored[record.name] = stored = replace(record, revision=1)
        return stored

    def _load(self, name: str) -> KeyRecord:
        try:
            return self._stored[name]
        except KeyError:
            raise errors.KMSNotFound(f"key {name!r} does not exist") from None

    def _store_update(self, old: KeyRecord, new: KeyRecord) -> KeyRecord:
        current = self._load(old.name)
        if current.revision != old.revision:
            raise UpdateConflict(old.name)
        self._stored[old.name] = stored = replace(new, revision=old.revision + 1)
        return stored

    def _remove(self, name: str) -> None:
        if self._stored.pop(name, None) is None:
            raise errors.KMSNotFound(f"key {name!r} does not exist")

    def _names(self) -> list[str]:
        return sorted(self._stored)
