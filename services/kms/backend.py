"""The one narrow interface every key backend keeps, and the types it speaks.

The interface sits at the level of "make / open a data key", not "hand me the key bytes",
because OpenBao transit never releases key material: a backend either holds the material
(fs, OpenBao KV: local AEAD, `local_backend.py`) or asks the external KMS to do the
cryptography (OpenBao transit, `openbao_transit.py`).

Key states: *enabled*, *disabled* (refuses GenerateKey/Decrypt/ReWrap with KMSDisabled) and
*pending deletion* (refuses the same with KMSPendingDeletion until the deletion is cancelled
or carried out). Describe, list, rotate and delete work in every state except where a
method says otherwise.

Errors every method may raise besides those it names: KMSInvalidKeyName for a bad name,
KMSUnavailable when the backend cannot be reached (or refuses the kms's credentials) and no
cached answer may be served.
"""
from __future__ import annotations

import abc
import re
from dataclasses import dataclass, field

from sealstore import errors

KEY_SIZE = 32
"""Bytes of an external key's material and of every data key."""
_NAME_RE = re.compile(r"[0-9A-Za-z_-]{1,80}")


def validate_key_name(name: str) -> None:
    """KES key names: 1-80 of [0-9A-Za-z_-], no hyphen first or last, not just "_"."""
    if (not _NAME_RE.fullmatch(name) or name.startswith("-") or name.endswith("-") or name == "_"):
        raise errors.KMSInvalidKeyName(
            f"invalid key name {name!r}: use 1-80 characters of [0-9A-Za-z_-], no hyphen first or last")


@dataclass(frozen=True)
class KeyMeta:
    """What a backend tells about a key: everything but its material."""

    name: str
    algorithm: str
    created_ns: int
    created_by: str
    """Identity of the caller that created or imported the key ("" if the backend cannot tell)."""
    enabled: bool
    """The enable/disable switch; a key pending deletion is unusable whatever this says."""
    version: int = 1
    """The newest version; GenerateKey uses it."""
    min_version: int = 1
    """Decrypt refuses ciphertexts under older versions."""
    deletion_ns: int = 0
    """Unix ns at which a scheduled deletion happens; 0 if none is pending."""

    @property
    def pending_deletion(self) -> bool:
        return self.deletion_ns > 0

    @property
    def usable(self) -> bool:
        return self.enabled and not self.pending_deletion


@dataclass(frozen=True)
class DataKey:
    """A fresh data key (DEK): its plaintext, and its ciphertext under the external key."""

    plaintext: bytes = field(repr=False)
    ciphertext: bytes
    version: int = 0
    """The key version the ciphertext is under."""


@dataclass(frozen=True)
class Opened:
    """A decrypted data key and the key version its ciphertext was under."""

    plaintext: bytes = field(repr=False)
    version: int


def refuse_unusable(meta: KeyMeta) -> None:
    """Raises the typed error for a key that may not make or open data keys."""
    if meta.pending_deletion:
        raise errors.KMSPendingDeletion(f"key {meta.name!r} is pending deletion")
    if not meta.enabled:
        raise errors.KMSDisabled(f"key {meta.name!r} is disabled")


class KeyBackend(abc.ABC):
    """Where external keys live and how data keys are made and opened under them."""

    kind: str = ""
    """Short backend name reported by Status ("fs", "mem", "openbao-kv", "openbao-transit")."""
    blocking: bool = True
    """True if calls may wait on the network (the servicer then runs them in a thread)."""

    @abc.abstractmethod
    def create(self, name: str, caller: str) -> KeyMeta:
        """A new random 256-bit key at version 1. Raises KMSKeyExists if the name is taken."""

    @abc.abstractmethod
    def import_key(self, name: str, material: bytes, caller: str) -> KeyMeta:
        """A new key holding `material` (32 bytes) as version 1.

        Raises KMSKeyExists if the name is taken, InvalidArgument for material of another
        size, NotImplemented (S3 NotImplemented) for backends that never hold key bytes.
        """

    @abc.abstractmethod
    def describe(self, name: str) -> KeyMeta:
        """The key's metadata. Raises KMSNotFound if absent."""

    @abc.abstractmethod
    def list(self) -> list[str]:
        """Names of all keys, sorted. Raises only KMSUnavailable."""

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Removes the key and every version for good. Raises KMSNotFound if absent."""

    @abc.abstractmethod
    def set_enabled(self, name: str, enabled: bool) -> KeyMeta:
        """Enables or disables the key. Raises KMSNotFound if absent, KMSPendingDeletion if
        asked to enable a key pending deletion (cancel the deletion first)."""

    @abc.abstractmethod
    def schedule_deletion(self, name: str, deletion_ns: int) -> KeyMeta:
        """Marks the key pending deletion at `deletion_ns` (Unix ns). Raises KMSNotFound if absent,
        KMSPendingDeletion if a deletion is already pending."""

    @abc.abstractmethod
    def cancel_deletion(self, name: str) -> KeyMeta:
        """Ends a pending deletion; the key is left disabled. Raises KMSNotFound if absent,
        InvalidRequest if no deletion is pending."""

    @abc.abstractmethod
    def generate_data_key(self, name: str, context: bytes) -> DataKey:
        """A fresh 32-byte DEK and its ciphertext under the newest version, bound to `context`.

        Raises KMSNotFound if absent, KMSDisabled if disabled, KMSPendingDeletion if pending
        deletion.
        """

    @abc.abstractmethod
    def decrypt(self, name: str, ciphertext: bytes, context: bytes) -> Opened:
        """Opens a ciphertext made by generate_data_key/rewrap under any version >= min_version.

        Raises KMSNotFound if absent, KMSDisabled, KMSPendingDeletion, KMSInvalidCiphertext if
        the ciphertext is not authentic for this key and exactly this context, or its version is
        below the key's minimum version (or unknown).
        """

    @abc.abstractmethod
    def rewrap(self, name: str, ciphertext: bytes, context: bytes) -> DataKey:
        """The same DEK wrapped under the newest version; the returned DataKey's plaintext is
        empty (it never leaves the backend). Raises what decrypt raises."""

    @abc.abstractmethod
    def rotate(self, name: str) -> KeyMeta:
        """Adds a new version of the key and makes it the newest. Raises KMSNotFound if absent,
        KMSPendingDeletion if pending deletion, NotImplemented for an imported key on OpenBao."""

    @abc.abstractmethod
    def set_min_version(self, name: str, min_version: int) -> KeyMeta:
        """Decrypt refuses versions below `min_version`. Raises KMSNotFound if absent,
        InvalidArgument unless 1 <= min_version <= the newest version."""

    def ping(self) -> None:
        """Returns if the backend answers; raises KMSUnavailable otherwise. Local ones always answer."""

    def close(self) -> None:
        """Releases connections; the backend is not used afterwards."""
