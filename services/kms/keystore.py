"""Where external keys live: one narrow interface and its backends.

`FileKeyStore` (the default, KES's "fs" keystore) keeps one JSON file per key under
`<data>/kms/keys/<name>.json`; the key material in it is sealed under the kms master key
`<data>/kms/master.key` (32 random bytes, mode 0600, made on first start):

    sealed_key = nonce(12) ‖ AES-256-GCM(master key, nonce, material, AAD = "sealstore-kms-key/v1/" ‖ name)

Binding the name in the AAD means a key file copied or renamed to another name fails to open.
`MemoryKeyStore` keeps everything in a dict, for unit tests.
"""
from __future__ import annotations

import abc
import base64
import json
import os
import re
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sealstore import errors
from sealstore.config import write_file_atomic

ALGORITHM = "AES256"
"""AES-256-GCM with a per-ciphertext HMAC-SHA256-derived key, as KES names it."""
KEY_SIZE = 32
MASTER_KEY_FILE = "master.key"
KEYS_DIR = "keys"
FILE_FORMAT_VERSION = 1
_KEY_AAD_PREFIX = b"sealstore-kms-key/v1/"
_NAME_RE = re.compile(r"[0-9A-Za-z_-]{1,80}")


def validate_key_name(name: str) -> None:
    """KES key names: 1-80 of [0-9A-Za-z_-], no hyphen first or last, not just "_"."""
    if (not _NAME_RE.fullmatch(name) or name.startswith("-") or name.endswith("-") or name == "_"):
        raise errors.KMSInvalidKeyName(
            f"invalid key name {name!r}: use 1-80 characters of [0-9A-Za-z_-], no hyphen first or last")


@dataclass(frozen=True)
class StoredKey:
    """One external key as the keystore holds it."""

    name: str
    material: bytes = field(repr=False)
    """The 32 key bytes; never logged, never in a message (hence repr=False)."""
    created_ns: int
    created_by: str
    """Identity of the caller that created or imported the key."""
    enabled: bool = True
    algorithm: str = ALGORITHM


class KeyStore(abc.ABC):
    """The contract every keystore backend keeps. Names are validated by every method."""

    kind: str = ""
    """Short backend name reported by Status ("fs", "mem")."""

    @abc.abstractmethod
    def create(self, key: StoredKey) -> None:
        """Stores `key` unless its name is taken.

        Raises KMSKeyExists if a key of that name exists, KMSInvalidKeyName for a bad name.
        """

    @abc.abstractmethod
    def get(self, name: str) -> StoredKey:
        """The key called `name`. Raises KMSNotFound if absent, KMSInvalidKeyName for a bad name."""

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Removes the key for good. Raises KMSNotFound if absent, KMSInvalidKeyName for a bad name."""

    @abc.abstractmethod
    def list(self) -> list[str]:
        """Names of all keys, sorted. Raises nothing."""

    @abc.abstractmethod
    def set_enabled(self, name: str, enabled: bool) -> StoredKey:
        """Enables or disables the key and persists that; returns the updated key.

        Raises KMSNotFound if absent, KMSInvalidKeyName for a bad name.
        """


class MemoryKeyStore(KeyStore):
    """Keys in a dict; for tests. Same contract as the file store."""

    kind = "mem"

    def __init__(self) -> None:
        self._keys: dict[str, StoredKey] = {}
        self._lock = threading.Lock()

    def create(self, key: StoredKey) -> None:
        validate_key_name(key.name)
        with self._lock:
            if key.name in self._keys:
                raise errors.KMSKeyExists(f"key {key.name!r} already exists")
            self._keys[key.name] = key

    def get(self, name: str) -> StoredKey:
        validate_key_name(name)
        try:
            return self._keys[name]
        except KeyError:
            raise errors.KMSNotFound(f"key {name!r} does not exist") from None

    def delete(self, name: str) -> None:
        validate_key_name(name)
        with self._lock:
            if self._keys.pop(name, None) is None:
                raise errors.KMSNotFound(f"key {name!r} does not exist")

    def list(self) -> list[str]:
        return sorted(self._keys)

    def set_enabled(self, name: str, enabled: bool) -> StoredKey:
        with self._lock:
            key = replace(self.get(name), enabled=enabled)
            self._keys[name] = key
            return key


def load_or_create_master_key(path: Path) -> bytes:
    """The 32-byte master key at `path`, created (mode 0600) if the file does not exist yet."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, os.urandom(KEY_SIZE))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            # link, not rename: if another process made the key meanwhile, keep theirs.
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    master = path.read_bytes()
    if len(master) != KEY_SIZE:
        raise ValueError(f"{path} must hold exactly {KEY_SIZE} bytes, it holds {len(master)}")
    return master


class FileKeyStore(KeyStore):
    """One JSON file per key under `<root>/keys/`, key material sealed under `<root>/master.key`.

    Only this process writes the directory, so parsed keys are cached until changed here.
    """

    kind = "fs"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.keys_dir = root / KEYS_DIR
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._master = AESGCM(load_or_create_master_key(root / MASTER_KEY_FILE))
        self._cache: dict[str, StoredKey] = {}
        self._lock = threading.Lock()
        self._generation = 0
        """Bumped under the lock after every change to the key files."""

    def _path(self, name: str) -> Path:
        return self.keys_dir / f"{name}.json"

    def _encode(self, key: StoredKey) -> bytes:
        nonce = os.urandom(12)
        sealed = nonce + self._master.encrypt(nonce, key.material, _KEY_AAD_PREFIX + key.name.encode())
        return json.dumps({
            "format_version": FILE_FORMAT_VERSION,
            "name": key.name,
            "algorithm": key.algorithm,
            "created_ns": key.created_ns,
            "created_by": key.created_by,
            "enabled": key.enabled,
            "sealed_key": base64.b64encode(sealed).decode(),
        }, indent=2).encode()

    def _decode(self, name: str, raw: bytes) -> StoredKey:
        doc = json.loads(raw)
        if doc.get("name") != name:
            raise errors.SealstoreError(f"key file for {name!r} names another key")
        sealed = base64.b64decode(doc["sealed_key"])
        try:
            material = self._master.decrypt(sealed[:12], sealed[12:], _KEY_AAD_PREFIX + name.encode())
        except InvalidTag:
            raise errors.SealstoreError(
                f"key file for {name!r} does not open under this kms's master key") from None
        return StoredKey(name=name, material=material, created_ns=int(doc["created_ns"]),
                         created_by=doc.get("created_by", ""), enabled=bool(doc.get("enabled", True)),
                         algorithm=doc.get("algorithm", ALGORITHM))

    def create(self, key: StoredKey) -> None:
        validate_key_name(key.name)
        if len(key.material) != KEY_SIZE:
            raise ValueError(f"key material must be {KEY_SIZE} bytes")
        with self._lock:
            if self._path(key.name).exists():
                raise errors.KMSKeyExists(f"key {key.name!r} already exists")
            write_file_atomic(self._path(key.name), self._encode(key), mode=0o600)
            self._generation += 1
            self._cache[key.name] = key

    def get(self, name: str) -> StoredKey:
        validate_key_name(name)
        cached = self._cache.get(name)
        if cached is not None:
            return cached
        # Not under the lock (a writer may be fsyncing); cache the result only if no write
        # happened meanwhile, so a concurrent disable or delete cannot leave a stale entry.
        generation = self._generation
        try:
            raw = self._path(name).read_bytes()
        except FileNotFoundError:
            raise errors.KMSNotFound(f"key {name!r} does not exist") from None
        key = self._decode(name, raw)
        with self._lock:
            if generation == self._generation:
                self._cache[name] = key
        return key

    def delete(self, name: str) -> None:
        validate_key_name(name)
        with self._lock:
            self._cache.pop(name, None)
            try:
                self._path(name).unlink()
            except FileNotFoundError:
                raise errors.KMSNotFound(f"key {name!r} does not exist") from None
            self._generation += 1
            dir_fd = os.open(self.keys_dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def list(self) -> list[str]:
        # Dot-files are write_file_atomic's temporaries; key names never start with a dot.
        return sorted(p.name[:-len(".json")] for p in self.keys_dir.glob("*.json") if not p.name.startswith("."))

    def set_enabled(self, name: str, enabled: bool) -> StoredKey:
        key = self.get(name)
        with self._lock:
            if not self._path(name).exists():
                raise errors.KMSNotFound(f"key {name!r} does not exist")
            key = replace(key, enabled=enabled)
            write_file_atomic(self._path(name), self._encode(key), mode=0o600)
            self._generation += 1
            self._cache[name] = key
        return key
