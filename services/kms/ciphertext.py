"""Sealing and opening data keys under an external key, in KES's binary ciphertext format.

For every ciphertext (minio-facts.md §3.5, KES internal/crypto "AES256" keys):

1. iv = 16 random bytes, nonce = 12 random bytes.
2. per-ciphertext key = HMAC-SHA256(key = external key, msg = iv).
3. sealed = AES-256-GCM(per-ciphertext key, nonce, plaintext, associated data = context).
4. ciphertext = sealed ‖ iv ‖ nonce  (a 32-byte data key gives 32 + 16 + 16 + 12 = 76 bytes).

The ciphertext names neither the key nor a version: the caller keeps the key name beside it.
Pure functions, no I/O; nothing here ever puts key bytes into an error message.
"""
from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sealstore import errors

KEY_SIZE = 32
IV_SIZE = 16
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = TAG_SIZE + IV_SIZE + NONCE_SIZE
"""Bytes a ciphertext adds to its plaintext (44)."""


def _check_key(key: bytes) -> None:
    # A wrong-sized key is a bug in our code, not a bad request: never say what it held.
    if len(key) != KEY_SIZE:
        raise ValueError(f"an external key must be {KEY_SIZE} bytes")


def _cipher_for(key: bytes, iv: bytes) -> AESGCM:
    return AESGCM(hmac.new(key, iv, hashlib.sha256).digest())


def seal(key: bytes, plaintext: bytes, context: bytes, *,
         iv: bytes | None = None, nonce: bytes | None = None) -> bytes:
    """Encrypts `plaintext` under `key`, bound to `context`.

    `iv` and `nonce` are random unless given; only known-answer tests give them.
    """
    _check_key(key)
    iv = os.urandom(IV_SIZE) if iv is None else iv
    nonce = os.urandom(NONCE_SIZE) if nonce is None else nonce
    if len(iv) != IV_SIZE or len(nonce) != NONCE_SIZE:
        raise ValueError(f"iv must be {IV_SIZE} bytes and nonce {NONCE_SIZE} bytes")
    sealed = _cipher_for(key, iv).encrypt(nonce, plaintext, context)
    return sealed + iv + nonce


def unseal(key: bytes, ciphertext: bytes, context: bytes, *, key_name: str = "") -> bytes:
    """Decrypts a `seal` ciphertext; raises KMSInvalidCiphertext unless it is authentic for
    this key and exactly this context. `key_name` only makes the error message clearer."""
    _check_key(key)
    if len(ciphertext) < OVERHEAD:
        raise errors.KMSInvalidCiphertext(
            f"ciphertext for key {key_name!r} is too short ({len(ciphertext)} bytes, need at least {OVERHEAD})")
    sealed = ciphertext[:-(IV_SIZE + NONCE_SIZE)]
    iv = ciphertext[-(IV_SIZE + NONCE_SIZE):-NONCE_SIZE]
    nonce = ciphertext[-NONCE_SIZE:]
    try:
        return _cipher_for(key, iv).decrypt(nonce, sealed, context)
    except InvalidTag:
        raise errors.KMSInvalidCiphertext(
            f"ciphertext is not authentic for key {key_name!r} and the given context") from None


# ---------------------------------------------------------------- key versions (fs and OpenBao KV keys)
#
# A key may have several versions (rotation). A ciphertext under version 1 is a plain KES
# ciphertext (76 bytes for a DEK: what KES, and sealstore before key versions, wrote), so keys
# that never rotate stay byte-compatible with KES. Under version n >= 2 it is
#
#     VERSION_MAGIC ("ssv1", 4 bytes) ‖ n (uint32 big-endian) ‖ KES ciphertext   (84 bytes for a DEK)
#
# A KES ciphertext starts with AEAD output, so it begins with the magic by chance with
# probability 2^-32; `split_version` then offers both readings and the caller keeps the one
# that authenticates.

VERSION_MAGIC = b"ssv1"
VERSION_HEADER_SIZE = len(VERSION_MAGIC) + 4
LEGACY_VERSION = 1


def add_version(version: int, kes_ciphertext: bytes) -> bytes:
    """The stored form of a KES ciphertext made under key version `version`."""
    if not 1 <= version < 2 ** 32:
        raise ValueError("a key version is 1..2^32-1")
    if version == LEGACY_VERSION:
        return kes_ciphertext
    return VERSION_MAGIC + version.to_bytes(4, "big") + kes_ciphertext


def split_version(data: bytes) -> list[tuple[int, bytes]]:
    """The readings of a stored ciphertext as (version, KES ciphertext), most likely first."""
    if data.startswith(VERSION_MAGIC) and len(data) >= VERSION_HEADER_SIZE + OVERHEAD:
        version = int.from_bytes(data[len(VERSION_MAGIC):VERSION_HEADER_SIZE], "big")
        readings = [(version, data[VERSION_HEADER_SIZE:])] if version > LEGACY_VERSION else []
        return readings + [(LEGACY_VERSION, data)]
    return [(LEGACY_VERSION, data)]
