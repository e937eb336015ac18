"""The `openbao-kv` backend: key records in OpenBao's KV v2 engine, cryptography in the kms.

As KES's Vault keystore: each key is one secret `<mount>/data/<prefix>/<name>`, created
create-only (`cas=0`, so an existing key is never overwritten: KMSKeyExists). Changes
(rotate, disable, minimum version, scheduled deletion) write a new KV version with
check-and-set on the version that was read, so concurrent kms instances never lose one
another's change. Delete removes the metadata and every KV version (crypto-shredding).

Secret data (all strings, as KV stores JSON):

    {"format_version": "2", "algorithm": "AES256", "created_ns", "created_by", "enabled": "true"|"false",
     "min_version", "deletion_ns", "versions": "<b64 v1>,<b64 v2>,..."}

OpenBao encrypts it at rest under its own barrier; the kms caches parsed records (cache.py),
so data keys keep working while OpenBao is unreachable, for the offline window.
"""
from __future__ import annotations

import base64
import time
from dataclasses import replace
from typing import Callable

from sealstore import errors
from services.kms.cache import CacheSettings
from services.kms.local_backend import ALGORITHM, KeyRecord, LocalKeyBackend, UpdateConflict
from services.kms.openbao import OpenBaoConnection, OpenBaoSettings

FORMAT_VERSION = "2"


class OpenBaoKVKeyStore(LocalKeyBackend):
    kind = "openbao-kv"
    blocking = True

    def __init__(self, settings: OpenBaoSettings, cache_settings: CacheSettings | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.connection = OpenBaoConnection(settings)
        self.prefix = settings.kv_prefix.strip("/")
        super().__init__(cache_settings, clock)

    def _path(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    @staticmethod
    def _encode(record: KeyRecord) -> dict[str, str]:
        return {
            "format_version": FORMAT_VERSION,
            "algorithm": record.algorithm,
            "created_ns": str(record.created_ns),
            "created_by": record.created_by,
            "enabled": "true" if record.enabled else "false",
            "min_version": str(record.min_version),
            "deletion_ns": str(record.deletion_ns),
            "versions": ",".join(base64.b64encode(m).decode() for m in record.versions),
        }

    @staticmethod
    def _decode(name: str, data: dict, revision: int) -> KeyRecord:
        if data.get("format_version") != FORMAT_VERSION:
            raise errors.SealstoreError(f"OpenBao KV secret for key {name!r} is not a sealstore key record")
        return KeyRecord(
            name=name, versions=tuple(base64.b64decode(v) for v in data["versions"].split(",")),
            created_ns=int(data["created_ns"]), created_by=data.get("created_by", ""),
            enabled=data.get("enabled") == "true", min_version=int(data.get("min_version", 1)),
            deletion_ns=int(data.get("deletion_ns", 0)), algorithm=data.get("algorithm", ALGORITHM),
            revision=revision)

    def _write(self, record: KeyRecord, cas: int, what: str) -> KeyRecord:
        reply = self.connection.call(
            lambda c: c.secrets.kv.v2.create_or_update_secret(
                self._path(record.name), secret=self._encode(record), cas=cas, mount_point=self.settings.mount),
            what)
        return replace(record, revision=int(reply["data"]["version"]))

    def _store_new(self, record: KeyRecord) -> KeyRecord:
        try:
            return self._write(record, 0, f"create key {record.name!r}")
        except errors.KMSKeyExists:
            raise errors.KMSKeyExists(f"key {record.name!r} already exists") from None

    def _load(self, name: str) -> KeyRecord:
        reply = self.connection.call(
            lambda c: c.secrets.kv.v2.read_secret_version(
                self._path(name), mount_point=self.settings.mount, raise_on_deleted_version=True),
            f"read key {name!r}")
        data = (reply or {}).get("data") or {}
        if not data.get("data"):
            raise errors.KMSNotFound(f"key {name!r} does not exist")
        return self._decode(name, data["data"], int(data["metadata"]["version"]))

    def _store_update(self, old: KeyRecord, new: KeyRecord) -> KeyRecord:
        try:
            return self._write(new, old.revision, f"change key {old.name!r}")
        except errors.KMSKeyExists:  # the check-and-set row of the error table: someone else wrote
            raise UpdateConflict(old.name) from None

    def _remove(self, name: str) -> None:
        self._load(name)  # KMSNotFound if absent: KV deletes of missing paths succeed silently
        self.connection.call(
            lambda c: c.secrets.kv.v2.delete_metadata_and_all_versions(self._path(name), mount_point=self.settings.mount),
            f"delete key {name!r}")

    def _names(self) -> list[str]:
        try:
            reply = self.connection.call(
                lambda c: c.secrets.kv.v2.list_secrets(self.prefix, mount_point=self.settings.mount), "list keys")
        except errors.KMSNotFound:  # an empty prefix lists as 404
            return []
        return sorted(k for k in reply["data"]["keys"] if not k.endswith("/"))

    def ping(self) -> None:
        self.connection.ping()
