"""The SSE-KMS encryption context in its one canonical form, shared by the gateway (which
parses the client's header) and the crypto worker (which binds keys to it).

Canonical = keys sorted, compact, UTF-8 kept, and Go's HTML-safe escapes, as MinIO's
kms.Context.MarshalText, so the bytes match what MinIO would send to its KMS."""
from __future__ import annotations

import json
from typing import Mapping

from sealstore import errors

_GO_HTML_ESCAPES = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))


def validate_context(context: object) -> dict[str, str]:
    if not isinstance(context, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in context.items()):
        raise errors.InvalidArgument("The encryption context must be a JSON object of strings to strings.")
    return dict(context)


def canonical_context_json(context: Mapping[str, str]) -> str:
    text = json.dumps(validate_context(context), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # These characters only occur inside JSON strings, so plain replacement is exact.
    for char, escape in _GO_HTML_ESCAPES:
        text = text.replace(char, escape)
    return text


def parse_context_json(text: str) -> dict[str, str]:
    """The client context stored or sent as JSON ('' means none)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise errors.InvalidArgument("The encryption context is not valid JSON.") from None
    return validate_context(value)


def object_path(bucket: str, object_name: str) -> str:
    """The "bucket/object" bound into the kms AAD and the KEK: the request's names exactly as
    sent, joined by one '/'. No cleaning: storage keeps the raw key, so a cleaned binding would
    let `a/../c` and `c` (or `../b2/B` in b1 and `B` in b2) unseal each other's keys. Injective
    because a bucket name never contains '/' (refused here, not only by the bucket rules), so
    the first '/' always ends the bucket."""
    if not bucket or "/" in bucket:
        raise errors.InvalidBucketName(f"the bucket name {bucket!r} cannot be bound to an object",
                                       resource=bucket)
    return f"{bucket}/{object_name}"


def kms_context(bucket: str, object_name: str, client_context: Mapping[str, str]) -> bytes:
    """The AAD sent to the kms for an object's DEK (GenerateKey, Decrypt, ReWrap): the client
    context plus {bucket: object_path(bucket, object)} unless the client already used the bucket
    name as a key. Shared so that the crypto worker and the rewrap walker bind to the same bytes;
    both must pass the names of the request, never those read from stored metadata."""
    context = validate_context(client_context)
    if bucket not in context:
        context[bucket] = object_path(bucket, object_name)
    return canonical_context_json(context).encode()
