"""Sealing and unsealing an object's key (OEK), for every SSE mode, bound to bucket/object.

PUT: `seal_new_object` makes the OEK and the envelope stored with the object. GET: `unseal_object_key`
gets the OEK back from the envelope. SSE-KMS uses the named kms key, SSE-S3 the deployment's
SSE-S3 kms key, SSE-C the customer's key (never stored). Both take the bucket and object of the
request explicitly; the names in stored metadata are never trusted (docs/crypto.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from sealstore import errors
from sealstore.v1 import types_pb2
from services.crypto import dare, keys
from services.crypto.kms_client import KmsClient

ENVELOPE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class SseKms:
    key_name: str
    context: dict[str, str] = field(default_factory=dict)
    # The key id exactly as the client or the bucket configuration named it ("" = key_name).
    key_id: str = ""


@dataclass(frozen=True)
class PartTarget:
    """UploadPart: the PUT stream is part `part_number` of upload `upload_id`."""

    upload_id: str
    part_number: int


@dataclass(frozen=True)
class PutHeader:
    bucket: str
    key: str
    content_type: str = ""
    user_metadata: dict[str, str] = field(default_factory=dict)
    sse_kms: SseKms | None = None
    content_length: int = -1
    sse_s3: bool = False
    # SSE-C: the customer's 32-byte key. Never stored, never logged (repr hides it).
    customer_key: bytes | None = field(default=None, repr=False)
    part: PartTarget | None = None
    tags: dict[str, str] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)

    @property
    def encrypted(self) -> bool:
        return self.sse_kms is not None or self.sse_s3 or self.customer_key is not None


@dataclass
class Sealing:
    """What the envelope stores, and the OEK to encrypt with (zeroed by the caller when done)."""

    oek: bytearray
    envelope: types_pb2.EncryptionEnvelope


async def seal_new_object(kms: KmsClient, header: PutHeader, cipher: int) -> Sealing:
    sse = header.sse_kms
    if sse is None:
        raise errors.NotImplementedS3("only SSE-KMS objects can be sealed by this worker yet")
    if not sse.key_name:
        raise errors.KMSInvalidKeyName("SSE-KMS needs a key name")
    aad = keys.kms_context(header.bucket, header.key, sse.context)
    dek_plain, dek_ciphertext, key_version = await kms.generate_versioned_key(sse.key_name, aad)
    dek = bytearray(dek_plain)
    del dek_plain
    try:
        iv = keys.generate_iv()
        oek = keys.generate_oek(dek)
        ctx = keys.SealContext(header.bucket, header.key, iv)
        sealed = keys.seal_oek(dek, oek, ctx, cipher=cipher)
    finally:
        keys.zero(dek)
    envelope = types_pb2.EncryptionEnvelope(
        format_version=ENVELOPE_FORMAT_VERSION, seal_algorithm=keys.SEAL_ALGORITHM,
        cipher=dare.CIPHER_NAMES[cipher], kms_key_name=sse.key_name, encrypted_dek=dek_ciphertext,
        sealed_oek=sealed, iv=iv, context_json=keys.canonical_context_json(sse.context) if sse.context else "",
        domain=keys.DOMAIN_SSE_KMS, kms_key_version=key_version, kms_key_id=sse.key_id)
    return Sealing(oek, envelope)


async def unseal_object_key(kms: KmsClient, meta: types_pb2.ObjectMeta, bucket: str, key: str,
                            customer_key: bytes | None = None) -> bytearray:
    """kms Decrypt of the DEK, then the OEK from the sealed key, both bound to the requested
    `bucket`/`key`. A DEK of another object is refused by the kms (KMSInvalidCiphertext: the
    kms cannot tell it from a key deleted and created again, so its error stands)."""
    enc = meta.encryption
    if enc.seal_algorithm != keys.SEAL_ALGORITHM or enc.domain != keys.DOMAIN_SSE_KMS:
        raise errors.NotImplementedS3(f"{bucket}/{key} uses unsupported sealing "
                                      f"{enc.seal_algorithm!r}/{enc.domain!r}")
    try:
        dare.cipher_id(enc.cipher)
    except ValueError:
        raise errors.NotImplementedS3(f"{bucket}/{key} uses unsupported cipher {enc.cipher!r}") from None
    aad = keys.kms_context(bucket, key, keys.parse_context_json(enc.context_json))
    dek = bytearray(await kms.decrypt(enc.kms_key_name, enc.encrypted_dek, aad))
    try:
        ctx = keys.SealContext(bucket, key, bytes(enc.iv), domain=enc.domain, algorithm=enc.seal_algorithm)
        return keys.unseal_oek(dek, enc.sealed_oek, ctx)
    except ValueError:
        raise errors.ObjectTampered(f"{bucket}/{key}: malformed encryption envelope") from None
    finally:
        keys.zero(dek)
