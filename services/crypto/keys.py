"""MinIO's SSE-KMS key hierarchy (internal/crypto/key.go): pure functions, explicit context.

    DEK  = data key from the kms (GenerateKey(name, AAD) / Decrypt(name, ciphertext, AAD))
    OEK  = HMAC-SHA256(DEK, "object-encryption-key generation" || 32 random bytes)
    IV   = 32 random bytes, stored
    KEK  = HMAC-SHA256(DEK, IV || domain || "DAREv2-HMAC-SHA256" || bucket || "/" || object)
    sealed OEK = one final DARE 2.0 package of the OEK under the KEK (64 bytes), stored

    part key = HMAC-SHA256(OEK, "sealstore multipart part key" || LE32(part number) || 32-byte
               nonce), multipart objects only: each part is its own DARE stream under its own key

SSE-S3 is the same under the deployment's SSE-S3 kms key, domain "SSE-S3", no client context.
SSE-C takes the customer's 32-byte key where the DEK is (no kms), domain "SSE-C"; the key is
never stored, only its check value (sealstore/ssec.py).

docs/crypto.md states every step; nothing here does I/O or logs key bytes.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from sealstore import errors
# The canonical form and the AAD live in the shared library: the gateway parses the same context and
# the rewrap walker (sealctl/rewrap.py) must bind to the same AAD.
from sealstore.sse_context import (canonical_context_json, kms_context, object_path,  # noqa: F401
                                   parse_context_json, validate_context)
# SSE-C's check value is computed by the gateway too (HEAD reads only metadata).
from sealstore.ssec import customer_key_check, customer_key_matches  # noqa: F401
from services.crypto import dare

SEAL_ALGORITHM = "DAREv2-HMAC-SHA256"
DOMAIN_SSE_KMS = "SSE-KMS"
DOMAIN_SSE_S3 = "SSE-S3"
DOMAIN_SSE_C = "SSE-C"
"""The domain in the KEK derivation is also the object's SSE mode (MinIO's Type.String())."""
DOMAINS = (DOMAIN_SSE_KMS, DOMAIN_SSE_S3, DOMAIN_SSE_C)
OEK_GENERATION_LABEL = b"object-encryption-key generation"
IV_SIZE = 32
KEY_SIZE = 32
SEALED_KEY_SIZE = dare.HEADER_SIZE + KEY_SIZE + dare.TAG_SIZE


# --- key derivation ---------------------------------------------------------------------

@dataclass(frozen=True)
class SealContext:
    """What a sealed object key is bound to: on unseal, the bucket and object of the request."""

    bucket: str
    object_name: str
    iv: bytes
    domain: str = DOMAIN_SSE_KMS
    algorithm: str = SEAL_ALGORITHM

    def __post_init__(self):
        if len(self.iv) != IV_SIZE:
            raise ValueError("the key-derivation IV is 32 bytes")
        if self.algorithm != SEAL_ALGORITHM:
            raise errors.InvalidArgument(f"unsupported seal algorithm {self.algorithm!r}")


def generate_iv() -> bytes:
    return os.urandom(IV_SIZE)


def generate_oek(dek: bytes | bytearray, random: bytes | None = None) -> bytearray:
    """OEK = HMAC-SHA256(DEK, "object-encryption-key generation" || 32 random bytes)."""
    _check_key(dek, "DEK")
    random = os.urandom(32) if random is None else random
    if len(random) != 32:
        raise ValueError("OEK generation takes 32 random bytes")
    return bytearray(hmac.new(bytes(dek), OEK_GENERATION_LABEL + random, hashlib.sha256).digest())


def derive_kek(dek: bytes | bytearray, ctx: SealContext) -> bytearray:
    """KEK = HMAC-SHA256(DEK, IV || domain || algorithm || bucket || "/" || object), names as sent."""
    _check_key(dek, "DEK")
    message = (ctx.iv + ctx.domain.encode() + ctx.algorithm.encode()
               + object_path(ctx.bucket, ctx.object_name).encode())
    return bytearray(hmac.new(bytes(dek), message, hashlib.sha256).digest())


def seal_oek(dek: bytes | bytearray, oek: bytes | bytearray, ctx: SealContext, *,
             cipher: int = dare.AES_256_GCM, random_value: bytes | None = None) -> bytes:
    """The OEK as one final DARE 2.0 package under the KEK: 64 bytes."""
    _check_key(oek, "OEK")
    kek = derive_kek(dek, ctx)
    try:
        return dare.seal_package(kek, bytes(oek), cipher=cipher, random_value=random_value, seq=0, final=True)
    finally:
        zero(kek)


def unseal_oek(dek: bytes | bytearray, sealed: bytes, ctx: SealContext) -> bytearray:
    """The OEK, or ObjectTampered when the sealed key does not belong to this DEK/IV/bucket/object."""
    if len(sealed) != SEALED_KEY_SIZE:
        raise errors.ObjectTampered(
            f"the sealed object key of {object_path(ctx.bucket, ctx.object_name)} has the wrong size")
    kek = derive_kek(dek, ctx)
    try:
        oek, final = dare.open_package(kek, sealed, seq=0)
    except errors.SealstoreError:
        raise errors.ObjectTampered(
            f"the sealed object key of {object_path(ctx.bucket, ctx.object_name)} failed authentication") from None
    finally:
        zero(kek)
    if not final or len(oek) != KEY_SIZE:
        raise errors.ObjectTampered(
            f"the sealed object key of {object_path(ctx.bucket, ctx.object_name)} is malformed")
    return bytearray(oek)


# --- multipart part keys -----------------------------------------------------------------

PART_KEY_LABEL = b"sealstore multipart part key"
PART_KEY_NONCE_SIZE = 32


def generate_part_nonce() -> bytes:
    """Drawn for every upload of a part, so a part uploaded again never reuses a key (MinIO derives
    the nonce from upload id and part number, and reuses it)."""
    return os.urandom(PART_KEY_NONCE_SIZE)


def derive_part_key(oek: bytes | bytearray, part_number: int, nonce: bytes) -> bytearray:
    """part key = HMAC-SHA256(OEK, label || LE32(part_number) || nonce). The part number is bound
    in too, so a part's stored bytes cannot be moved to another position of the object."""
    _check_key(oek, "OEK")
    if len(nonce) != PART_KEY_NONCE_SIZE:
        raise errors.ObjectTampered("a part key nonce is 32 bytes")
    if not 1 <= part_number <= 0xFFFFFFFF:
        raise ValueError("part numbers are positive 32-bit integers")
    message = PART_KEY_LABEL + part_number.to_bytes(4, "little") + bytes(nonce)
    return bytearray(hmac.new(bytes(oek), message, hashlib.sha256).digest())


def _check_key(key: bytes | bytearray, what: str) -> None:
    if len(key) != KEY_SIZE:
        raise ValueError(f"the {what} must be 32 bytes")


def zero(buf: bytearray | None) -> None:
    """Overwrites a key held in a bytearray (best effort: copies made by libraries remain)."""
    if isinstance(buf, bytearray):
        buf[:] = bytes(len(buf))
