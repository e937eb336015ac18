"""The `fs` backend (KES's embedded default): one JSON file per key, material sealed under the
kms master key. The other backends: openbao_kv.py, openbao_transit.py; the interface: backend.py.

`<data>/kms/master.key` is 32 random bytes (mode 0600, made on first start). A key file is
`<data>/kms/keys/<name>.json` (mode 0600). Format 2 (written since key versions exist):

    {"format_version": 2, "name", "algorithm", "created_ns", "created_by", "enabled",
     "min_version", "deletion_ns", "versions": [{"sealed_key": b64}, ...]}   # version i+1 at index i
    sealed_key = nonce(12) ‖ AES-256-GCM(master key, nonce, material,
                                          AAD = "sealstore-kms-key/v2/" ‖ name ‖ "/" ‖ version)

Format 1 (the foundation's, still read; rewritten as format 2 on the first change) holds one
version: `"sealed_key"` at top level, AAD = "sealstore-kms-key/v1/" ‖ name.
Binding name (and version) in the AAD means a key file copied or renamed to another name, or a
version moved to another slot, fails to open.
"""
from __future__ import annotations

import base64
import json
import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sealstore import errors
from sealstore.config import write_file_atomic
from services.kms.backend import KEY_SIZE, validate_key_name  # noqa: F401  (re-exported)
from services.kms.cache import CacheSettings
from services.kms.local_backend import ALGORITHM, KeyRecord, LocalKeyBackend, MemoryKeyStore, UpdateConflict  # noqa: F401

MASTER_KEY_FILE = "master.key"
KEYS_DIR = "keys"
FILE_FORMAT_VERSION = 2
_V1_AAD_PREFIX = b"sealstore-kms-key/v1/"
_V2_AAD_PREFIX = b"sealstore-kms-key/v2/"


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


def _version_aad(name: str, version: int) -> bytes:
    return _V2_AAD_PREFIX + f"{name}/{version}".encode()


class FileKeyStore(LocalKeyBackend):
    """One JSON file per key under `<root>/keys/`, key material sealed under `<root>/master.key`.

    Only this process writes the directory; `revision` counts this process's writes of a file.
    """

    kind = "fs"
    blocking = False
    """Reads are one small file, and cached: cheap enough to run on the event loop."""

    def __init__(self, root: Path, cache_settings: CacheSettings | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = root
        self.keys_dir = root / KEYS_DIR
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._master = AESGCM(load_or_create_master_key(root / MASTER_KEY_FILE))
        self._file_lock = threading.Lock()
        super().__init__(cache_settings, clock)

    def _path(self, name: str) -> Path:
        return self.keys_dir / f"{name}.json"

    def _seal_material(self, material: bytes, aad: bytes) -> str:
        nonce = os.urandom(12)
        return base64.b64encode(nonce + self._master.encrypt(nonce, material, aad)).decode()

    def _open_material(self, name: str, sealed_b64: str, aad: bytes) -> bytes:
        sealed = base64.b64decode(sealed_b64)
        try:
            return self._master.decrypt(sealed[:12], sealed[12:], aad)
        except InvalidTag:
            raise errors.SealstoreError(
                f"key file for {name!r} does not open under this kms's master key") from None

    def _encode(self, record: KeyRecord) -> bytes:
        return json.dumps({
            "format_version": FILE_FORMAT_VERSION,
            "name": record.name,
            "algorithm": record.algorithm,
            "created_ns": record.created_ns,
            "created_by": record.created_by,
            "enabled": record.enabled,
            "min_version": record.min_version,
            "deletion_ns": record.deletion_ns,
            "versions": [{"sealed_key": self._seal_material(material, _version_aad(record.name, i + 1))}
                         for i, material in enumerate(record.versions)],
        }, indent=2).encode()

    def _decode(self, name: str, raw: bytes) -> KeyRecord:
        doc = json.loads(raw)
        if doc.get("name") != name:
            raise errors.SealstoreError(f"key file for {name!r} names another key")
        if "versions" in doc:
            versions = tuple(self._open_material(name, v["sealed_key"], _version_aad(name, i + 1))
                             for i, v in enumerate(doc["versions"]))
        else:  # format 1: a single version
            versions = (self._open_material(name, doc["sealed_key"], _V1_AAD_PREFIX + name.encode()),)
        return KeyRecord(name=name, versions=versions, created_ns=int(doc["created_ns"]),
                         created_by=doc.get("created_by", ""), enabled=bool(doc.get("enabled", True)),
                         min_version=int(doc.get("min_version", 1)), deletion_ns=int(doc.get("deletion_ns", 0)),
                         algorithm=doc.get("algorithm", ALGORITHM))

    def _store_new(self, record: KeyRecord) -> KeyRecord:
        if any(len(m) != KEY_SIZE for m in record.versions):
            raise ValueError(f"key material must be {KEY_SIZE} bytes")
        with self._file_lock:
            if self._path(record.name).exists():
                raise errors.KMSKeyExists(f"key {record.name!r} already exists")
            write_file_atomic(self._path(record.name), self._encode(record), mode=0o600)
        return record

    def _load(self, name: str) -> KeyRecord:
        try:
            raw = self._path(name).read_bytes()
        except FileNotFoundError:
            raise errors.KMSNotFound(f"key {name!r} does not exist") from None
        return self._decode(name, raw)

    def _store_update(self, old: KeyRecord, new: KeyRecord) -> KeyRecord:
        # LocalKeyBackend serialises this process's changes and it is the only writer.
        with self._file_lock:
            if not self._path(old.name).exists():
                raise errors.KMSNotFound(f"key {old.name!r} does not exist")
            write_file_atomic(self._path(old.name), self._encode(new), mode=0o600)
        return replace(new, revision=old.revision + 1)

    def _remove(self, name: str) -> None:
        with self._file_lock:
            try:
                self._path(name).unlink()
            except FileNotFoundError:
                raise errors.KMSNotFound(f"key {name!r} does not exist") from None
            dir_fd = os.open(self.keys_dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def _names(self) -> list[str]:
        # Dot-files are write_file_atomic's temporaries; key names never start with a dot.
        return sorted(p.name[:-len(".json")] for p in self.keys_dir.glob("*.json") if not p.name.startswith("."))
