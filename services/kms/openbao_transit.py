"""The `openbao-transit` backend: the external key never leaves OpenBao.

| sealstore | OpenBao transit (mount SEALSTORE_OPENBAO_MOUNT, default "transit") |
|---|---|
| create | `transit/keys/<name>` with `derived=true`, type aes256-gcm96 (refused if it exists) |
| GenerateKey(name, context) | `transit/datakey/plaintext/<name>` with base64(context), 256 bits |
| Decrypt(name, ciphertext, context) | `transit/decrypt/<name>` |
| ReWrap | `transit/rewrap/<name>` (the data key never leaves OpenBao) |
| rotate | `transit/keys/<name>/rotate`; ciphertexts say their version (`vault:vN:`) |
| minimum version | `transit/keys/<name>/config` `min_decryption_version` |
| disable / enable | `DELETE transit/keys/<name>/soft-delete` / `POST .../soft-delete-restore` |
| delete | `config deletion_allowed=true`, then `DELETE transit/keys/<name>` |

`derived=true` means OpenBao derives a per-context key, so a data key ciphertext opens only
with the bucket/object context it was made with (as KES's AEAD associated data).

Transit has nowhere to keep who created a key or when a scheduled deletion happens, so those
two facts live in `<data>/kms/openbao-transit-state.json` beside the kms (a key pending
deletion is also soft-deleted in OpenBao, so it is unusable even without that file).

Cache: key metadata (describe) and decrypt results keyed by (name, ciphertext, context). A
decrypt result is served only while OpenBao is unreachable (offline window); otherwise every
Decrypt asks OpenBao. No key bytes are ever cached because the kms never has them; the
trade-off is that plaintext data keys of recently read objects stay in kms memory for up to
the unused expiry. GenerateKey needs OpenBao: new writes fail while it is unreachable.
"""
from __future__ import annotations

import base64
import json
import re
import threading
import time
from pathlib import Path
from typing import Callable

from sealstore import errors
from sealstore.config import write_file_atomic
from services.kms.backend import KEY_SIZE, DataKey, KeyBackend, KeyMeta, Opened, validate_key_name
from services.kms.cache import Availability, CacheSettings, ExpiringCache
from services.kms.openbao import OpenBaoConnection, OpenBaoSettings

KEY_TYPE = "aes256-gcm96"
STATE_FILE = "openbao-transit-state.json"
_VERSION_RE = re.compile(r"vault:v(\d+):")


class TransitState:
    """Per key: created_by and deletion_ns, in a small JSON file (see module doc)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._state: dict[str, dict] = json.loads(path.read_text()) if path.exists() else {}

    def get(self, name: str) -> dict:
        return dict(self._state.get(name, {}))

    def update(self, name: str, **fields) -> None:
        with self._lock:
            entry = {**self._state.get(name, {}), **fields}
            self._state[name] = {k: v for k, v in entry.items() if v}
            if not self._state[name]:
                del self._state[name]
            self._save()

    def forget(self, name: str) -> None:
        with self._lock:
            if self._state.pop(name, None) is not None:
                self._save()

    def _save(self) -> None:
        write_file_atomic(self.path, json.dumps(self._state, indent=2, sort_keys=True).encode(), mode=0o600)


def _version_of(ciphertext: str) -> int:
    match = _VERSION_RE.match(ciphertext)
    return int(match.group(1)) if match else 0


class OpenBaoTransitKeyStore(KeyBackend):
    kind = "openbao-transit"
    blocking = True

    def __init__(self, settings: OpenBaoSettings, state_dir: Path, cache_settings: CacheSettings | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.mount = settings.mount
        self.connection = OpenBaoConnection(settings)
        self.availability = Availability(cache_settings or CacheSettings(), clock)
        self.state = TransitState(state_dir / STATE_FILE)
        self._meta: ExpiringCache[str, KeyMeta] = ExpiringCache("openbao-transit-keys", self.availability)
        self._opened: ExpiringCache[tuple[str, bytes, bytes], Opened] = ExpiringCache(
            "openbao-transit-decrypt", self.availability)

    # ------------------------------------------------------------ plumbing

    def _call(self, fn, what: str):
        return self.availability.call(lambda: self.connection.call(fn, what), what)

    def _transit(self, client):
        return client.secrets.transit

    def _forget(self, name: str) -> None:
        self._meta.drop(name)
        self._opened.drop_where(lambda key: key[0] == name)

    def _meta_from(self, name: str, data: dict) -> KeyMeta:
        local = self.state.get(name)
        created = min((int(t) for t in (data.get("keys") or {}).values()), default=0)
        return KeyMeta(name=name, algorithm=data.get("type", KEY_TYPE), created_ns=created * 1_000_000_000,
                       created_by=local.get("created_by", ""), enabled=not data.get("soft_deleted", False),
                       version=int(data.get("latest_version", 1)),
                       min_version=max(1, int(data.get("min_decryption_version", 1))),
                       deletion_ns=int(local.get("deletion_ns", 0)))

    def _read(self, name: str) -> KeyMeta:
        reply = self._call(lambda c: self._transit(c).read_key(name, mount_point=self.mount), f"read key {name!r}")
        meta = self._meta_from(name, reply["data"])
        self._meta.put(name, meta)
        return meta

    def _refuse_pending(self, name: str) -> None:
        if self.state.get(name).get("deletion_ns"):
            raise errors.KMSPendingDeletion(f"key {name!r} is pending deletion")

    # ------------------------------------------------------------ lifecycle

    def create(self, name: str, caller: str) -> KeyMeta:
        validate_key_name(name)
        try:
            self._read(name)
        except errors.KMSNotFound:
            pass
        else:  # transit's create is a silent no-op on an existing key
            raise errors.KMSKeyExists(f"key {name!r} already exists")
        self._call(lambda c: self._transit(c).create_key(name, derived=True, key_type=KEY_TYPE, mount_point=self.mount),
                   f"create key {name!r}")
        self.state.forget(name)
        if caller:
            self.state.update(name, created_by=caller)
        return self._read(name)

    def import_key(self, name: str, material: bytes, caller: str) -> KeyMeta:
        validate_key_name(name)
        raise errors.NotImplementedS3(
            "the openbao-transit keystore never handles key bytes: import the key into OpenBao transit "
            "itself (transit/keys/<name>/import with its wrapping key)")

    def describe(self, name: str) -> KeyMeta:
        validate_key_name(name)
        return self._meta.read_through(name, lambda: self._read(name), what=f"read key {name!r}")

    def list(self) -> list[str]:
        try:
            reply = self._call(lambda c: self._transit(c).list_keys(mount_point=self.mount), "list keys")
        except errors.KMSNotFound:  # no keys at all lists as 404
            return []
        return sorted(reply["data"]["keys"])

    def delete(self, name: str) -> None:
        validate_key_name(name)
        try:
            self._call(lambda c: self._transit(c).update_key_configuration(
                name, deletion_allowed=True, mount_point=self.mount), f"delete key {name!r}")
            self._call(lambda c: self._transit(c).delete_key(name, mount_point=self.mount), f"delete key {name!r}")
        finally:
            self._forget(name)
        self.state.forget(name)

    def _soft_delete(self, name: str, deleted: bool) -> None:
        if deleted:
            self._call(lambda c: c.adapter.delete(f"/v1/{self.mount}/keys/{name}/soft-delete"), f"disable key {name!r}")
        else:
            self._call(lambda c: c.adapter.post(f"/v1/{self.mount}/keys/{name}/soft-delete-restore"),
                       f"enable key {name!r}")

    def set_enabled(self, name: str, enabled: bool) -> KeyMeta:
        validate_key_name(name)
        current = self._read(name)
        if enabled and current.pending_deletion:
            raise errors.KMSPendingDeletion(f"key {name!r} is pending deletion: cancel the deletion first")
        self._forget(name)
        if current.enabled != enabled:
            self._soft_delete(name, not enabled)
        return self._read(name)

    def schedule_deletion(self, name: str, deletion_ns: int) -> KeyMeta:
        validate_key_name(name)
        current = self._read(name)
        if current.pending_deletion:
            raise errors.KMSPendingDeletion(f"key {name!r} is already pending deletion")
        self._forget(name)
        if current.enabled:
            self._soft_delete(name, True)
        self.state.update(name, deletion_ns=deletion_ns)
        return self._read(name)

    def cancel_deletion(self, name: str) -> KeyMeta:
        validate_key_name(name)
        if not self._read(name).pending_deletion:
            raise errors.InvalidRequest(f"key {name!r} is not pending deletion")
        self.state.update(name, deletion_ns=0)
        self._forget(name)
        return self._read(name)  # still soft-deleted, i.e. disabled

    def rotate(self, name: str) -> KeyMeta:
        validate_key_name(name)
        self._refuse_pending(name)
        self._call(lambda c: self._transit(c).rotate_key(name, mount_point=self.mount), f"rotate key {name!r}")
        self._meta.drop(name)
        return self._read(name)

    def set_min_version(self, name: str, min_version: int) -> KeyMeta:
        current = self._read(name)
        if not 1 <= min_version <= current.version:
            raise errors.InvalidArgument(
                f"key {name!r} has versions 1..{current.version}; min version {min_version} is outside")
        self._call(lambda c: self._transit(c).update_key_configuration(
            name, min_decryption_version=min_version, mount_point=self.mount), f"set min version of key {name!r}")
        self._forget(name)
        return self._read(name)

    # ------------------------------------------------------------ data keys

    @staticmethod
    def _context(context: bytes) -> str:
        # Derived transit keys need a non-empty context; an empty one gets a fixed stand-in.
        return base64.b64encode(context or b"sealstore:no-context").decode()

    @staticmethod
    def _plaintext(reply: dict, name: str) -> bytes:
        plaintext = base64.b64decode(reply["data"]["plaintext"])
        if len(plaintext) != KEY_SIZE:
            raise errors.KMSInvalidCiphertext(f"ciphertext under key {name!r} does not hold a data key")
        return plaintext

    def generate_data_key(self, name: str, context: bytes) -> DataKey:
        validate_key_name(name)
        self._refuse_pending(name)
        reply = self._call(lambda c: self._transit(c).generate_data_key(
            name, key_type="plaintext", context=self._context(context), bits=KEY_SIZE * 8, mount_point=self.mount),
            f"generate a data key with key {name!r}")
        ciphertext = reply["data"]["ciphertext"]
        return DataKey(self._plaintext(reply, name), ciphertext.encode(), _version_of(ciphertext))

    @staticmethod
    def _text(ciphertext: bytes, name: str) -> str:
        try:
            text = ciphertext.decode("ascii")
        except UnicodeDecodeError:
            text = ""
        if not _version_of(text):
            raise errors.KMSInvalidCiphertext(f"ciphertext for key {name!r} is not an OpenBao transit ciphertext")
        return text

    def decrypt(self, name: str, ciphertext: bytes, context: bytes) -> Opened:
        validate_key_name(name)
        self._refuse_pending(name)
        text = self._text(ciphertext, name)

        def fetch() -> Opened:
            reply = self.connection.call(lambda c: self._transit(c).decrypt_data(
                name, text, context=self._context(context), mount_point=self.mount), f"decrypt with key {name!r}")
            return Opened(self._plaintext(reply, name), _version_of(text))

        # Disabling or deleting through this kms drops the key's cached results (_forget).
        return self._opened.read_through((name, bytes(ciphertext), bytes(context)), fetch,
                                         what=f"decrypt with key {name!r}", serve_fresh=False)

    def rewrap(self, name: str, ciphertext: bytes, context: bytes) -> DataKey:
        validate_key_name(name)
        self._refuse_pending(name)
        text = self._text(ciphertext, name)
        reply = self._call(lambda c: self._transit(c).rewrap_data(
            name, text, context=self._context(context), mount_point=self.mount), f"rewrap with key {name!r}")
        new = reply["data"]["ciphertext"]
        return DataKey(b"", new.encode(), _version_of(new))

    def ping(self) -> None:
        self.connection.ping()
