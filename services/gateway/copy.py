"""CopyObject and UploadPartCopy: the copy source header, its conditions and SSE-C key; the
worker (CryptoService.CopyObject) reads, decrypts, re-encrypts under fresh keys and writes.

The gateway reads the source's metadata first: a missing source bucket or key, a failed
x-amz-copy-source-if-* condition, a wrong source customer key or a range beyond the source are
answered before the worker is asked, so a refused copy costs no kms call. The worker checks
the conditions again against the version it actually reads.
"""
from __future__ import annotations

import re
from typing import Mapping
from urllib.parse import parse_qsl, unquote

import grpc
from aiohttp import web

from sealstore import errors, multipart as mp_rules, ssec
from sealstore.conditions import Conditions
from sealstore.v1 import crypto_pb2, types_pb2

from . import bucket_config, multipart, s3xml, sse

H_COPY_SOURCE = "x-amz-copy-source"
H_COPY_RANGE = "x-amz-copy-source-range"
_COPY_RANGE = re.compile(r"bytes=([0-9]{1,19})-([0-9]{1,19})")
SELF_COPY_MESSAGE = ("This copy request is illegal because it is trying to copy an object to itself without changing "
                     "the object's metadata, storage class, website redirect location or encryption attributes.")
_CONDITION_HEADERS = {"x-amz-copy-source-if-match": "If-Match", "x-amz-copy-source-if-none-match": "If-None-Match",
                      "x-amz-copy-source-if-modified-since": "If-Modified-Since",
                      "x-amz-copy-source-if-unmodified-since": "If-Unmodified-Since"}


def parse_copy_source(raw: str) -> tuple[str, str]:
    """`x-amz-copy-source`: URL-encoded `/bucket/key` or `bucket/key`, optionally `?versionId=null`
    (the only version an unversioned bucket has)."""
    path, _, query = raw.strip().partition("?")
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "versionId" and value != "null":
            raise errors.InvalidArgument("Invalid version id specified")
    path = unquote(path)
    bucket, _, key = path.removeprefix("/").partition("/")
    if not bucket or not key:
        raise errors.InvalidArgument("Copy Source must mention the source bucket and key: sourcebucket/sourcekey")
    return bucket, key


def parse_directive(headers: Mapping[str, str], name: str) -> bool:
    """COPY (the default) -> False, REPLACE -> True."""
    value = headers.get(name)
    if value is None or value.strip() == "COPY":
        return False
    if value.strip() == "REPLACE":
        return True
    raise errors.InvalidArgument(f"Unknown {name} value {value.strip()!r}: COPY or REPLACE")


def source_conditions(headers: Mapping[str, str]) -> Conditions:
    return Conditions.from_headers({plain: headers[name] for name, plain in _CONDITION_HEADERS.items()
                                    if name in headers})


def check_source_conditions(conditions: Conditions, source: types_pb2.ObjectMeta, resource: str) -> None:
    """A copy answers every failed source condition with 412 (never 304)."""
    try:
        conditions.check(source, resource=resource)
    except errors.NotModified:
        raise errors.PreconditionFailed(resource=resource) from None


def parse_copy_range(raw: str | None) -> tuple[int, int] | None:
    """`x-amz-copy-source-range: bytes=first-last`, the only form UploadPartCopy takes."""
    if raw is None:
        return None
    m = _COPY_RANGE.fullmatch(raw.strip())
    if not m or int(m.group(2)) < int(m.group(1)):
        raise errors.InvalidArgument("The x-amz-copy-source-range value must be of the form bytes=first-last where "
                                     "first and last are the zero-based offsets of the first and last bytes to copy")
    return int(m.group(1)), int(m.group(2))


def check_range_fits(byte_range: tuple[int, int] | None, size: int) -> None:
    if byte_range is not None and byte_range[1] >= size:
        raise errors.InvalidArgument(f"Range specified is not valid for source object of size: {size}")


def _requests_sse(headers: Mapping[str, str]) -> bool:
    return any(name.lower().startswith("x-amz-server-side-encryption") for name in headers)


async def _source(api, bucket: str, key: str, request: web.Request) -> tuple[types_pb2.ObjectMeta, bytes | None, Conditions]:
    from .s3api import validate_key
    headers, resource = request.headers, request.path
    validate_key(key)
    customer = sse.copy_source_customer_key(headers, secure=sse.is_tls(request))
    key_bytes = customer.key if customer is not None else None
    conditions = source_conditions(headers)
    await api.backend.bucket(bucket)
    source = await api.backend.erasure.get_object_meta(bucket, key)
    check_source_conditions(conditions, source, resource)
    ssec.check_request_key(source.encryption if source.HasField("encryption") else None, key_bytes,
                           resource=resource)
    return source, key_bytes, conditions


async def _copy(api, request: crypto_pb2.CopyObjectRequest, checked_key: str | None) -> crypto_pb2.PutObjectResponse:
    try:
        return await api.backend.crypto().CopyObject(request)
    except grpc.RpcError as e:
        err = errors.from_rpc_error(e)
        if isinstance(err, errors.NotModified):
            raise errors.PreconditionFailed() from None
        if checked_key:
            api.backend.forget_key(checked_key)
        raise err from None


async def copy_object(api, request: web.Request, identity, t) -> web.StreamResponse:
    from .s3api import user_metadata
    headers = request.headers
    src_bucket, src_key = parse_copy_source(headers[H_COPY_SOURCE])
    replace_metadata = parse_directive(headers, "x-amz-metadata-directive")
    replace_tags = parse_directive(headers, "x-amz-tagging-directive")
    requested = sse.requested_encryption(headers, secure=sse.is_tls(request))
    tags = bucket_config.tags_from_headers(headers) if replace_tags else {}
    await api._small_body(request, identity, 0)  # a copy has no body
    info = await api.backend.bucket(t.bucket)
    source, src_key_bytes, conditions = await _source(api, src_bucket, src_key, request)
    if (src_bucket, src_key) == (t.bucket, t.key) and not replace_metadata and not _requests_sse(headers):
        raise errors.InvalidRequest(SELF_COPY_MESSAGE, resource=request.path)
    destination = crypto_pb2.PutObjectHeader(bucket=t.bucket, key=t.key, content_length=source.size)
    if replace_metadata:
        destination.content_type = headers.get("Content-Type", multipart.DEFAULT_CONTENT_TYPE)
        destination.user_metadata.update(user_metadata(request))
    destination.tags.update(tags)
    encryption = await api.write_encryption(headers, info, requested, destination)
    copy = crypto_pb2.CopyObjectRequest(source_bucket=src_bucket, source_key=src_key, destination=destination,
                                        replace_metadata=replace_metadata, replace_tags=replace_tags)
    if src_key_bytes is not None:
        copy.source_customer_key = src_key_bytes
    if conditions:
        copy.source_conditions.CopyFrom(conditions.to_proto())
    meta = (await _copy(api, copy, encryption.kms_key_to_check)).meta
    return multipart.xml_response(s3xml.copy_object_result(meta.etag, meta.mtime_ns),
                                  multipart.sse_headers(meta, encryption.customer))


async def upload_part_copy(api, request: web.Request, identity, t) -> web.StreamResponse:
    headers = request.headers
    upload_id = t.query.get("uploadId", "")
    mp_rules.validate_upload_id(upload_id)
    number = mp_rules.parse_part_number(t.query.get("partNumber"))
    src_bucket, src_key = parse_copy_source(headers[H_COPY_SOURCE])
    byte_range = parse_copy_range(headers.get(H_COPY_RANGE))
    customer = sse.customer_key(headers, secure=sse.is_tls(request))
    await api._small_body(request, identity, 0)
    await api.backend.bucket(t.bucket)
    record = await multipart.upload_record(api, t, upload_id)
    multipart.check_part_key(record, customer, request.path)
    source, src_key_bytes, conditions = await _source(api, src_bucket, src_key, request)
    check_range_fits(byte_range, source.size)
    if (byte_range[1] - byte_range[0] + 1 if byte_range else source.size) > mp_rules.MAX_PART_SIZE:
        raise errors.InvalidRequest("The specified copy source is larger than the maximum allowable size for a "
                                    "copy source: 5368709120")
    destination = crypto_pb2.PutObjectHeader(
        bucket=t.bucket, key=t.key, part=crypto_pb2.PartTarget(upload_id=upload_id, part_number=number))
    if customer is not None:
        destination.sse_customer_key = customer.key
    copy = crypto_pb2.CopyObjectRequest(source_bucket=src_bucket, source_key=src_key, destination=destination)
    if byte_range is not None:
        copy.source_range.CopyFrom(crypto_pb2.ByteRange(first=byte_range[0], last=byte_range[1]))
    if src_key_bytes is not None:
        copy.source_customer_key = src_key_bytes
    if conditions:
        copy.source_conditions.CopyFrom(conditions.to_proto())
    meta = (await _copy(api, copy, None)).meta
    etag = meta.parts[0].etag if meta.parts else meta.etag
    mtime = meta.parts[0].mtime_ns if meta.parts and meta.parts[0].mtime_ns else meta.mtime_ns
    return multipart.xml_response(s3xml.copy_object_result(etag, mtime, part=True),
                                  multipart.sse_headers(meta, customer) or multipart.sse_headers(record, customer))
