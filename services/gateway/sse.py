"""SSE request headers: what encryption a request asks for, and the headers a response carries.

Three modes, as AWS: SSE-S3 (`x-amz-server-side-encryption: AES256`, the deployment's SSE-S3 kms
key), SSE-KMS (`aws:kms`, a named kms key, an optional context) and SSE-C (the customer's key in
`x-amz-server-side-encryption-customer-*`, only over TLS). A request naming any SSE header wins
entirely over the bucket default (MinIO's `BucketSSEConfig.Apply`); with neither, the object is
stored with SSE-S3 unless SEALSTORE_ENCRYPT_BY_DEFAULT=0 (AWS since 2023). Key ids lose an
`arn:aws:kms:` prefix to name the kms key, but responses give them back exactly as named.
The customer key is never logged: CustomerKey's repr hides it.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Mapping

from sealstore import config, errors, ssec
from sealstore.sse_context import canonical_context_json
from sealstore.v1 import crypto_pb2, types_pb2

H_SSE = "x-amz-server-side-encryption"
H_KEY_ID = "x-amz-server-side-encryption-aws-kms-key-id"
H_CONTEXT = "x-amz-server-side-encryption-context"
H_BUCKET_KEY = "x-amz-server-side-encryption-bucket-key-enabled"
H_SSEC_ALGORITHM = "x-amz-server-side-encryption-customer-algorithm"
H_SSEC_KEY = "x-amz-server-side-encryption-customer-key"
H_SSEC_KEY_MD5 = "x-amz-server-side-encryption-customer-key-md5"
SSEC_HEADERS = (H_SSEC_ALGORITHM, H_SSEC_KEY, H_SSEC_KEY_MD5)
COPY_SOURCE_PREFIX = "x-amz-copy-source-"
# x-amz-copy-source-server-side-encryption-customer-algorithm, ... (one "x-amz-", not two)
COPY_SOURCE_SSEC_HEADERS = tuple(COPY_SOURCE_PREFIX + h.removeprefix("x-amz-") for h in SSEC_HEADERS)

ARN_PREFIX = "arn:aws:kms:"
KMS = "aws:kms"
AES256 = "AES256"

SSE_S3, SSE_KMS, SSE_C = "SSE-S3", "SSE-KMS", "SSE-C"
"""Modes, named as the envelope's domain."""

INSECURE_SSEC = ("Requests specifying Server Side Encryption with Customer provided keys must be made over "
                 "a secure connection.")
INCOMPATIBLE_SSEC = ("Server Side Encryption with Customer provided key is incompatible with the encryption "
                     "method specified.")


@dataclass(frozen=True)
class CustomerKey:
    """An SSE-C key from a request: verified against its MD5, never stored or logged."""

    key: bytes = field(repr=False)
    key_md5: str = ""
    """base64 MD5 of the key, as the client sent it (echoed in responses)."""


@dataclass(frozen=True)
class WriteEncryption:
    """What a write (PUT, POST, CreateMultipartUpload, copy destination) stores. mode "" = plain."""

    mode: str = ""
    key_name: str = ""
    """SSE-KMS: the kms key name (a key id without its ARN prefix); "" until resolved."""
    key_id: str = ""
    """SSE-KMS: the key id exactly as the client or the bucket configuration named it."""
    context_json: str = ""
    """SSE-KMS: the client's context, canonical JSON."""
    customer: CustomerKey | None = None

    @property
    def encrypted(self) -> bool:
        return bool(self.mode)

    @property
    def kms_key_to_check(self) -> str | None:
        """The key the gateway checks with the kms before the body (SSE-KMS only: the SSE-S3 key
        is the deployment's own)."""
        return self.key_name if self.mode == SSE_KMS else None

    def apply_to(self, header: crypto_pb2.PutObjectHeader) -> None:
        """Sets the header's SSE fields (the worker's PutObject, CreateMultipartUpload, CopyObject)."""
        if self.mode == SSE_KMS:
            header.sse_kms.CopyFrom(crypto_pb2.SseKmsRequest(key_name=self.key_name, context_json=self.context_json,
                                                             key_id=self.key_id or self.key_name))
        elif self.mode == SSE_S3:
            header.sse_s3 = True
        elif self.mode == SSE_C:
            assert self.customer is not None
            header.sse_customer_key = self.customer.key


PLAIN = WriteEncryption()


def is_tls(request) -> bool:
    """Whether the request's connection is TLS, from the transport itself (never X-Forwarded-Proto,
    which a client can send): SSE-C keys may only travel over TLS, and policies test
    aws:SecureTransport with it."""
    transport = request.transport
    return transport is not None and transport.get_extra_info("ssl_object") is not None


def normalize_key_id(raw: str) -> str:
    """`arn:aws:kms:<region>:<account>:key/<name>` or `arn:aws:kms:<name>` -> `<name>`."""
    if raw != raw.strip():
        raise errors.InvalidArgument("KMS KeyID contains unsupported characters (leading or trailing spaces)")
    if raw.startswith(ARN_PREFIX):
        raw = raw[len(ARN_PREFIX):]
        if "key/" in raw:
            raw = raw.rsplit("key/", 1)[1]
    return raw


def parse_context_header(value: str) -> str:
    """Base64 JSON object of strings -> canonical JSON; InvalidArgument otherwise."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
        context = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise errors.InvalidArgument("The SSE-KMS context must be base64 of a JSON object") from None
    if not isinstance(context, dict) or not all(isinstance(v, str) for v in context.values()):
        raise errors.InvalidArgument("The SSE-KMS context must be a JSON object of string values")
    return canonical_context_json(context)  # the shared canonical form (sealstore.sse_context)


# -- SSE-C ------------------------------------------------------------------------------------

def _parse_customer_key(headers: Mapping[str, str], names: tuple[str, str, str], *, secure: bool) -> CustomerKey | None:
    algorithm_h, key_h, md5_h = names
    algorithm, key_b64, md5_b64 = (headers.get(h) for h in names)
    if algorithm is None and key_b64 is None and md5_b64 is None:
        return None
    # Refused before anything else, as AWS: the key has already crossed the network in clear.
    if not secure:
        raise errors.InvalidRequest(INSECURE_SSEC)
    if algorithm is None:
        raise errors.InvalidArgument("Requests specifying Server Side Encryption with Customer provided keys "
                                     "must provide a valid encryption algorithm.")
    if algorithm.strip() != AES256:
        raise errors.InvalidEncryptionAlgorithmError()
    if not key_b64:
        raise errors.InvalidArgument("Requests specifying Server Side Encryption with Customer provided keys "
                                     "must provide an appropriate secret key.")
    if not md5_b64:
        raise errors.InvalidArgument("Requests specifying Server Side Encryption with Customer provided keys "
                                     "must provide the client calculated MD5 of the secret key.")
    try:
        key = base64.b64decode(key_b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != ssec.CUSTOMER_KEY_SIZE:
        raise errors.InvalidArgument("The secret key was invalid for the specified algorithm.")
    try:
        md5 = base64.b64decode(md5_b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        md5 = b""
    if not hmac.compare_digest(md5, hashlib.md5(key).digest()):
        raise errors.InvalidArgument("The calculated MD5 hash of the key did not match the hash that was provided.")
    return CustomerKey(key, ssec.key_md5(key))


def customer_key(headers: Mapping[str, str], *, secure: bool) -> CustomerKey | None:
    """The SSE-C key of a GET, HEAD, UploadPart or write (None without SSE-C headers)."""
    return _parse_customer_key(headers, SSEC_HEADERS, secure=secure)


def copy_source_customer_key(headers: Mapping[str, str], *, secure: bool) -> CustomerKey | None:
    """CopyObject / UploadPartCopy: the SSE-C key of the source
    (x-amz-copy-source-server-side-encryption-customer-*), None without those headers."""
    return _parse_customer_key(headers, COPY_SOURCE_SSEC_HEADERS, secure=secure)


def check_customer_key(meta: types_pb2.ObjectMeta, customer: CustomerKey | None, resource: str = "") -> None:
    """HEAD (metadata only): AWS's answers to the SSE-C key against the object's stored check value."""
    ssec.check_request_key(meta.encryption if meta.HasField("encryption") else None,
                           customer.key if customer else None, resource=resource)


# -- writes -----------------------------------------------------------------------------------

def requested_encryption(headers: Mapping[str, str], *, secure: bool = False) -> WriteEncryption | None:
    """The SSE a write names itself, or None when it names none (the bucket default applies).
    Contradictions are refused with InvalidArgument before anything is written. An `aws:kms`
    without a key id comes back with key_name "" (resolve_write_encryption picks the key).

    `headers` is case-insensitive (aiohttp's CIMultiDict) or uses lower-case names.
    """
    algorithm = headers.get(H_SSE)
    key_id = headers.get(H_KEY_ID)
    context = headers.get(H_CONTEXT)
    customer = customer_key(headers, secure=secure)
    if customer is not None:
        if algorithm is not None or key_id is not None or context is not None:
            raise errors.InvalidArgument(INCOMPATIBLE_SSEC)
        return WriteEncryption(SSE_C, customer=customer)
    if algorithm is None and key_id is None and context is None:
        return None
    if algorithm is None:
        raise errors.InvalidArgument(f"{H_KEY_ID} and {H_CONTEXT} require the header {H_SSE}: aws:kms")
    algorithm = algorithm.strip()
    if algorithm == AES256:
        if key_id is not None or context is not None:
            raise errors.InvalidArgument(f"Server Side Encryption with AES256 takes no {H_KEY_ID} or {H_CONTEXT}; "
                                         f"they require {H_SSE}: aws:kms")
        return WriteEncryption(SSE_S3)
    if algorithm == "aws:kms:dsse":
        raise errors.NotImplementedS3("DSSE-KMS is not supported; use aws:kms")
    if algorithm != KMS:
        raise errors.InvalidArgument(f"The encryption method {algorithm!r} is not supported; use AES256 or aws:kms")
    context_json = parse_context_header(context) if context is not None else ""
    if key_id is None or key_id == "":
        return WriteEncryption(SSE_KMS, context_json=context_json)
    name = normalize_key_id(key_id)
    if not name:
        raise errors.InvalidArgument(f"{H_KEY_ID} names no key")
    return WriteEncryption(SSE_KMS, key_name=name, key_id=key_id, context_json=context_json)


def _bucket_kms_key(bucket_default: types_pb2.BucketEncryption | None) -> tuple[str, str] | None:
    """(name, id as configured) of the bucket default's KMS key, if it names one."""
    if bucket_default is not None and bucket_default.sse_algorithm == KMS and bucket_default.kms_master_key_id:
        return normalize_key_id(bucket_default.kms_master_key_id), bucket_default.kms_master_key_id
    return None


def deployment_kms_key_name() -> str:
    """The kms key of `aws:kms` with no key id anywhere (SEALSTORE_DEFAULT_KMS_KEY)."""
    return config.default_kms_key_name()


def _deployment_kms_key() -> tuple[str, str]:
    name = deployment_kms_key_name()
    return name, name


def resolve_write_encryption(headers: Mapping[str, str], bucket_default: types_pb2.BucketEncryption | None, *,
                             secure: bool = False, requested: WriteEncryption | None = None) -> WriteEncryption:
    """What a write stores: the request's own SSE, else the bucket default, else SSE-S3 when the
    deployment encrypts by default, else nothing. `requested`: requested_encryption's answer
    when the caller parsed the headers already (to refuse bad ones before the bucket lookup)."""
    if requested is None:
        requested = requested_encryption(headers, secure=secure)
    if bucket_default is not None and not bucket_default.sse_algorithm:
        bucket_default = None
    if requested is not None:
        if requested.mode == SSE_KMS and not requested.key_name:
            name, key_id = _bucket_kms_key(bucket_default) or _deployment_kms_key()
            return WriteEncryption(SSE_KMS, key_name=name, key_id=key_id, context_json=requested.context_json)
        return requested
    if bucket_default is not None:
        if bucket_default.sse_algorithm == AES256:
            return WriteEncryption(SSE_S3)
        if bucket_default.sse_algorithm == KMS:
            name, key_id = _bucket_kms_key(bucket_default) or _deployment_kms_key()
            return WriteEncryption(SSE_KMS, key_name=name, key_id=key_id)
        raise errors.NotImplementedS3(f"bucket default encryption {bucket_default.sse_algorithm} is not supported")
    return WriteEncryption(SSE_S3) if config.encrypt_by_default() else PLAIN


# -- responses --------------------------------------------------------------------------------

def response_headers(envelope: types_pb2.EncryptionEnvelope | None,
                     customer: CustomerKey | None = None) -> dict[str, str]:
    """SSE headers for responses about an object with this envelope: the mode, for SSE-KMS the
    key id as it was named (objects from before that was stored: the key name) and the context,
    for SSE-C the algorithm and the MD5 of the key the request brought (it matched)."""
    if envelope is None or not (envelope.domain or envelope.kms_key_name):
        return {}
    if envelope.domain == SSE_C:
        out = {H_SSEC_ALGORITHM: AES256}
        if customer is not None:
            out[H_SSEC_KEY_MD5] = customer.key_md5
        return out
    if envelope.domain == SSE_S3:
        return {H_SSE: AES256}
    out = {H_SSE: KMS, H_KEY_ID: envelope.kms_key_id or envelope.kms_key_name}
    if envelope.context_json:
        out[H_CONTEXT] = base64.b64encode(envelope.context_json.encode("utf-8")).decode("ascii")
    return out


def write_response_headers(encryption: WriteEncryption) -> dict[str, str]:
    """SSE headers for a write answered before an envelope exists (CreateMultipartUpload may use
    the record's envelope instead; this is for the request's own view)."""
    if encryption.mode == SSE_C:
        assert encryption.customer is not None
        return {H_SSEC_ALGORITHM: AES256, H_SSEC_KEY_MD5: encryption.customer.key_md5}
    if encryption.mode == SSE_S3:
        return {H_SSE: AES256}
    if encryption.mode == SSE_KMS:
        out = {H_SSE: KMS, H_KEY_ID: encryption.key_id or encryption.key_name}
        if encryption.context_json:
            out[H_CONTEXT] = base64.b64encode(encryption.context_json.encode("utf-8")).decode("ascii")
        return out
    return {}
