"""What the kms does, without gRPC: key lifecycle and data-key generation/decryption (KES semantics).

Beyond KES: a key can be disabled, after which it refuses GenerateKey and Decrypt
(KMS.DisabledException) until enabled again; describe, list and delete still work.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from sealstore import errors
from services.kms import ciphertext
from services.kms.keystore import KEY_SIZE, KeyStore, StoredKey

log = logging.getLogger(__name__)

VERSION = "0.1.0"


@dataclass(frozen=True)
class KeyInfo:
    """What a caller may learn about a key: everything but its material."""

    name: str
    algorithm: str
    created_ns: int
    created_by: str
    enabled: bool

    @classmethod
    def of(cls, key: StoredKey) -> "KeyInfo":
        return cls(key.name, key.algorithm, key.created_ns, key.created_by, key.enabled)


@dataclass(frozen=True)
class DataKey:
    """A fresh data key (DEK): its plaintext, and its ciphertext under the external key."""

    plaintext: bytes = field(repr=False)
    ciphertext: bytes


@dataclass(frozen=True)
class Status:
    version: str
    keystore: str
    key_count: int
    uptime_seconds: float
    caller_identity: str


class KeyManager:
    """The kms's operations over one keystore. `caller` is always the caller's identity."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self._started = time.monotonic()

    def create_key(self, name: str, caller: str) -> KeyInfo:
        return self._add(name, os.urandom(KEY_SIZE), caller)

    def import_key(self, name: str, material: bytes, caller: str) -> KeyInfo:
        if len(material) != KEY_SIZE:
            raise errors.InvalidArgument(
                f"an imported key must be exactly {KEY_SIZE} bytes, not {len(material)}")
        return self._add(name, bytes(material), caller)

    def _add(self, name: str, material: bytes, caller: str) -> KeyInfo:
        key = StoredKey(name=name, material=material, created_ns=time.time_ns(), created_by=caller)
        self.store.create(key)
        log.info("key %r created by %s", name, caller)
        return KeyInfo.of(key)

    def describe_key(self, name: str) -> KeyInfo:
        return KeyInfo.of(self.store.get(name))

    def list_keys(self, pattern: str = "") -> list[KeyInfo]:
        pattern = pattern or "*"
        infos = []
        for name in self.store.list():
            if not fnmatchcase(name, pattern):
                continue
            try:
                infos.append(KeyInfo.of(self.store.get(name)))
            except errors.KMSNotFound:
                continue  # deleted while we listed
        return infos

    def delete_key(self, name: str, caller: str) -> None:
        self.store.delete(name)
        log.info("key %r deleted by %s", name, caller)

    def disable_key(self, name: str, caller: str) -> KeyInfo:
        info = KeyInfo.of(self.store.set_enabled(name, False))
        log.info("key %r disabled by %s", name, caller)
        return info

    def enable_key(self, name: str, caller: str) -> KeyInfo:
        info = KeyInfo.of(self.store.set_enabled(name, True))
        log.info("key %r enabled by %s", name, caller)
        return info

    def _usable_key(self, name: str) -> StoredKey:
        key = self.store.get(name)
        if not key.enabled:
            raise errors.KMSDisabled(f"key {name!r} is disabled")
        return key

    def generate_key(self, name: str, context: bytes) -> DataKey:
        key = self._usable_key(name)
        plaintext = os.urandom(KEY_SIZE)
        return DataKey(plaintext, ciphertext.seal(key.material, plaintext, context))

    def decrypt(self, name: str, sealed: bytes, context: bytes) -> bytes:
        key = self._usable_key(name)
        return ciphertext.unseal(key.material, sealed, context, key_name=name)

    def status(self, caller: str) -> Status:
        return Status(version=VERSION, keystore=self.store.kind, key_count=len(self.store.list()),
                      uptime_seconds=time.monotonic() - self._started, caller_identity=caller)
