"""Sealing and unsealing an object's key (OEK), for every SSE mode, bound to bucket/object.

PUT: `seal_new_object` makes the OEK and the envelope stored with the object. GET: `unseal_object_key`
gets the OEK back from the envelope. SSE-KMS uses the named kms key, SSE-S3 the deployment's
SSE-S3 kms key, SSE-C the customer's key (never stored). Both take the bucket and object of the
request explicitly; the names in stored metadata are never trusted (docs/crypto.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from sealstore import config, errors, ssec
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
    """A fresh OEK sealed as the header's SSE mode asks; one kms GenerateKey for SSE-KMS and
    SSE-S3, none for SSE-C."""
    modes = (header.sse_kms is not None) + header.sse_s3 + (header.customer_key is not None)
    if modes != 1:
        raise errors.InvalidArgument("a request can ask for one server-side encryption mode only")
    if header.customer_key is not None:
        return _seal_under_customer_key(header, cipher)
    if header.sse_s3:
        # SSE-S3 has no client context and no key choice: the deployment's key, bucket entry only.
        return await _seal_under_kms_key(kms, header, cipher, config.sse_s3_key_name(), {}, keys.DOMAIN_SSE_S3, "")
    sse = header.sse_kms
    if not sse.key_name:
        raise errors.KMSInvalidKeyName("SSE-KMS needs a key name")
    return await _seal_under_kms_key(kms, header, cipher, sse.key_name, sse.context, keys.DOMAIN_SSE_KMS,
                                     sse.key_id)


async def _seal_under_kms_key(kms: KmsClient, header: PutHeader, cipher: int, key_name: str,
                              context: dict[str, str], domain: str, key_id: str) -> Sealing:
    aad = keys.kms_context(header.bucket, header.key, context)
    dek_plain, dek_ciphertext, key_version = await kms.generate_versioned_key(key_name, aad)
    dek = bytearray(dek_plain)
    del dek_plain
    try:
        iv = keys.generate_iv()
        oek = keys.generate_oek(dek)
        ctx = keys.SealContext(header.bucket, header.key, iv, domain=domain)
        sealed = keys.seal_oek(dek, oek, ctx, cipher=cipher)
    finally:
        keys.zero(dek)
    envelope = types_pb2.EncryptionEnvelope(
        format_version=ENVELOPE_FORMAT_VERSION, seal_algorithm=keys.SEAL_ALGORITHM,
        cipher=dare.CIPHER_NAMES[cipher], kms_key_name=key_name, encrypted_dek=dek_ciphertext,
        sealed_oek=sealed, iv=iv, context_json=keys.canonical_context_json(context) if context else "",
        domain=domain, kms_key_version=key_version, kms_key_id=key_id)
    return Sealing(oek, envelope)


def _seal_under_customer_key(header: PutHeader, cipher: int) -> Sealing:
    """SSE-C: the customer's key stands where the DEK is (MinIO's EK); only its check value is stored."""
    customer_key = header.customer_key
    if customer_key is None or len(customer_key) != keys.KEY_SIZE:
        raise errors.InvalidArgument("The secret key was invalid for the specified algorithm.")
    iv = keys.generate_iv()
    oek = keys.generate_oek(customer_key)
    ctx = keys.SealContext(header.bucket, header.key, iv, domain=keys.DOMAIN_SSE_C)
    sealed = keys.seal_oek(customer_key, oek, ctx, cipher=cipher)
    envelope = types_pb2.EncryptionEnvelope(
        format_version=ENVELOPE_FORMAT_VERSION, seal_algorithm=keys.SEAL_ALGORITHM,
        cipher=dare.CIPHER_NAMES[cipher], sealed_oek=sealed, iv=iv, domain=keys.DOMAIN_SSE_C,
        customer_key_check=keys.customer_key_check(customer_key, iv))
    return Sealing(oek, envelope)


def check_customer_key(meta: types_pb2.ObjectMeta, customer_key: bytes | None, bucket: str, key: str) -> None:
    """AWS's SSE-C rules for a read (GET, HEAD, copy source, UploadPart of an SSE-C upload)."""
    ssec.check_request_key(meta.encryption if meta.HasField("encryption") else None, customer_key,
                           resource=f"/{bucket}/{key}")


async def open_object_key(kms: KmsClient, meta: types_pb2.ObjectMeta, bucket: str, key: str,
                          customer_key: bytes | None = None) -> bytearray | None:
    """The OEK of an encrypted object, None for a plain one; the SSE-C rules are checked for both."""
    if not meta.HasField("encryption"):
        check_customer_key(meta, customer_key, bucket, key)
        return None
    return await unseal_object_key(kms, meta, bucket, key, customer_key)


async def unseal_object_key(kms: KmsClient, meta: types_pb2.ObjectMeta, bucket: str, key: str,
                            customer_key: bytes | None = None) -> bytearray:
    """The OEK from the sealed key, bound to the requested `bucket`/`key`: under the kms's DEK
    (kms Decrypt) for SSE-KMS and SSE-S3, under the customer's key for SSE-C (which must be given,
    and only then). A DEK of another object is refused by the kms (KMSInvalidCiphertext: the
    kms cannot tell it from a key deleted and created again, so its error stands)."""
    enc = meta.encryption
    if enc.seal_algorithm != keys.SEAL_ALGORITHM or enc.domain not in keys.DOMAINS:
        raise errors.NotImplementedS3(f"{bucket}/{key} uses unsupported sealing "
                                      f"{enc.seal_algorithm!r}/{enc.domain!r}")
    try:
        dare.cipher_id(enc.cipher)
    except ValueError:
        raise errors.NotImplementedS3(f"{bucket}/{key} uses unsupported cipher {enc.cipher!r}") from None
    check_customer_key(meta, customer_key, bucket, key)
    if enc.domain == keys.DOMAIN_SSE_C:
        assert customer_key is not None  # check_customer_key refused its absence
        wrapping_key = bytearray(customer_key)
    else:
        aad = keys.kms_context(bucket, key, keys.parse_context_json(enc.context_json))
        wrapping_key = bytearray(await kms.decrypt(enc.kms_key_name, enc.encrypted_dek, aad))
    try:
        ctx = keys.SealContext(bucket, key, bytes(enc.iv), domain=enc.domain, algorithm=enc.seal_algorithm)
        return keys.unseal_oek(wrapping_key, enc.sealed_oek, ctx)
    except ValueError:
        raise errors.ObjectTampered(f"{bucket}/{key}: malformed encryption envelope") from None
    finally:
        keys.zero(wrapping_key)
