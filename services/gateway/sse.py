"""SSE request headers: what encryption a request asks for, and the headers a response carries.

MinIO semantics (minio-facts §2.2, §4.3): a request naming any SSE header wins entirely over
the bucket default; key ids lose an `arn:aws:kms:` prefix; the context is base64 of a JSON
object of strings and travels as canonical JSON.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Mapping

from sealstore import errors
from sealstore.sse_context import canonical_context_json
from sealstore.v1 import types_pb2

H_SSE = "x-amz-server-side-encryption"
H_KEY_ID = "x-amz-server-side-encryption-aws-kms-key-id"
H_CONTEXT = "x-amz-server-side-encryption-context"
H_BUCKET_KEY = "x-amz-server-side-encryption-bucket-key-enabled"
H_SSEC_ALGORITHM = "x-amz-server-side-encryption-customer-algorithm"
H_SSEC_KEY = "x-amz-server-side-encryption-customer-key"
H_SSEC_KEY_MD5 = "x-amz-server-side-encryption-customer-key-md5"
SSEC_HEADERS = (H_SSEC_ALGORITHM, H_SSEC_KEY, H_SSEC_KEY_MD5)

ARN_PREFIX = "arn:aws:kms:"
KMS = "aws:kms"
AES256 = "AES256"


@dataclass(frozen=True)
class SseKms:
    """SSE-KMS as the crypto worker wants it: a key name and the client's canonical context."""

    key_name: str
    context_json: str = ""


def normalize_key_id(raw: str) -> str:
    """`arn:aws:kms:<region>:<account>:key/<name>` or `arn:aws:kms:<name>` -> `<name>`."""
    if raw != raw.strip():
        raise errors.InvalidArgument("KMS KeyID contains unsupported characters (leading or trailing spaces)")
    if raw.startswith(ARN_PREFIX):
        raw = raw[len(ARN_PREFIX):]
        if "key/" in raw:
            raw = raw.rsplit("key/", 1)[1]
    return raw


def key_arn(name: str) -> str:
    """The key id as MinIO reports it in responses."""
    return name if name.startswith(ARN_PREFIX) else ARN_PREFIX + name


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


def reject_ssec(headers: Mapping[str, str]) -> None:
    if any(h in headers for h in SSEC_HEADERS):
        raise errors.NotImplementedS3("SSE-C (customer-provided keys) is not supported by this server; use SSE-KMS")


def requested_encryption(headers: Mapping[str, str]) -> SseKms | None:
    """The SSE a PUT request names itself, or None when it names none (the bucket default applies).

    `headers` is case-insensitive (aiohttp's CIMultiDict) or uses lower-case names.
    """
    reject_ssec(headers)
    algorithm = headers.get(H_SSE)
    key_id = headers.get(H_KEY_ID)
    context = headers.get(H_CONTEXT)
    if algorithm is None and key_id is None and context is None:
        return None
    if algorithm is None:
        raise errors.InvalidArgument(f"{H_KEY_ID} and {H_CONTEXT} require the header {H_SSE}: aws:kms")
    algorithm = algorithm.strip()
    if algorithm == AES256:
        raise errors.NotImplementedS3("SSE-S3 (AES256) is not supported yet; use x-amz-server-side-encryption: aws:kms")
    if algorithm == "aws:kms:dsse":
        raise errors.NotImplementedS3("DSSE-KMS is not supported; use aws:kms")
    if algorithm != KMS:
        raise errors.InvalidArgument(f"The encryption method {algorithm!r} is not supported; use aws:kms")
    if not key_id:
        # There is no default KMS key (yet): MinIO would use MINIO_KMS_KES_KEY_NAME here.
        raise errors.InvalidArgument(f"{H_KEY_ID} is required: this server has no default KMS key")
    name = normalize_key_id(key_id)
    if not name:
        raise errors.InvalidArgument(f"{H_KEY_ID} names no key")
    return SseKms(name, parse_context_header(context) if context is not None else "")


def resolve_put_encryption(headers: Mapping[str, str], bucket_default: types_pb2.BucketEncryption | None) -> SseKms | None:
    """What a PUT stores: the request's own SSE, else the bucket default, else no encryption."""
    requested = requested_encryption(headers)
    if requested is not None:
        return requested
    if bucket_default is None or not bucket_default.sse_algorithm:
        return None
    if bucket_default.sse_algorithm == KMS and bucket_default.kms_master_key_id:
        return SseKms(normalize_key_id(bucket_default.kms_master_key_id))
    raise errors.NotImplementedS3(f"bucket default encryption {bucket_default.sse_algorithm} is not supported")


def response_headers(envelope: types_pb2.EncryptionEnvelope | None) -> dict[str, str]:
    """SSE headers for PUT/GET/HEAD responses of an object with this envelope."""
    if envelope is None or not envelope.kms_key_name:
        return {}
    out = {H_SSE: KMS, H_KEY_ID: key_arn(envelope.kms_key_name)}
    if envelope.context_json:
        out[H_CONTEXT] = base64.b64encode(envelope.context_json.encode("utf-8")).decode("ascii")
    return out
