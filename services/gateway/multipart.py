"""Multipart upload operations: Create, UploadPart, Complete, Abort, ListParts, ListMultipartUploads.

Uploads in progress live in the `.multipart` system bucket (sealstore/multipart.py). Part bytes
go to a crypto worker (PutObject with a part target); the rest is metadata through the quorum
client (sealstore/erasure/uploads.py lists and removes uploads for the gateway, the heal scanner
and `sealstore admin uploads` alike).
"""
from __future__ import annotations

import time
from typing import Mapping

import grpc
from aiohttp import web

from sealstore import errors, multipart, ssec
from sealstore.erasure import uploads
from sealstore.v1 import crypto_pb2, types_pb2

from . import bucket_config, s3xml, sse
from .body import body_from_request, checksum_headers

DEFAULT_CONTENT_TYPE = "binary/octet-stream"


# ---------------------------------------------------------------------------------------------
# Helpers shared with copy.py


def xml_response(body: bytes, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=200, body=body, content_type="application/xml", headers=dict(headers or {}))


def sse_headers(meta: types_pb2.ObjectMeta, customer: sse.CustomerKey | None = None) -> dict[str, str]:
    return sse.response_headers(meta.encryption if meta.HasField("encryption") else None, customer)


def _upload_id(t) -> str:
    upload_id = t.query.get("uploadId", "")
    multipart.validate_upload_id(upload_id)
    return upload_id


def upload_set(api, t):
    """The erasure set holding this request's uploads: the final object's (sealstore/erasure/uploads.py)."""
    return api.backend.erasure.set_for_upload(t.bucket, t.key)


async def upload_record(api, t, upload_id: str) -> types_pb2.ObjectMeta:
    """The upload's record, which must complete into this request's bucket and key."""
    rec = await uploads.record(upload_set(api, t), t.bucket, upload_id)
    if rec.upload.key != t.key:
        raise errors.NoSuchUpload(resource=f"/{t.bucket}/{t.key}")
    return rec


def check_part_key(record: types_pb2.ObjectMeta, customer: sse.CustomerKey | None, resource: str) -> None:
    """Every part of an SSE-C upload brings the upload's customer key (AWS: InvalidRequest
    without it, AccessDenied with another one); other uploads take no customer key."""
    envelope = record.encryption if record.HasField("encryption") else None
    ssec.check_request_key(envelope, customer.key if customer else None, resource=resource)


def check_part_order(parts: list[s3xml.CompletedPart]) -> None:
    """Part numbers strictly ascending (AWS: InvalidPartOrder, duplicates included)."""
    for before, after in zip(parts, parts[1:]):
        if after.number <= before.number:
            raise errors.InvalidPartOrder()


def check_part_sizes(sizes: list[int]) -> None:
    """Every part but the last at least 5 MiB (AWS: EntityTooSmall)."""
    if any(size < multipart.MIN_PART_SIZE for size in sizes[:-1]):
        raise errors.EntityTooSmall()


def completed_meta(record: types_pb2.ObjectMeta, bucket: str, key: str, upload_id: str,
                   parts: list[types_pb2.ObjectPart], now_ns: int) -> types_pb2.ObjectMeta:
    """The completed object's metadata: the record's content type, metadata, tags, layout and
    envelope (bound to bucket/key when the upload was created), and the parts named."""
    meta = types_pb2.ObjectMeta()
    meta.CopyFrom(record)
    for name in ("upload", "parts", "inline", "inline_shard", "shard_index"):
        meta.ClearField(name)
    meta.bucket, meta.key, meta.data_id = bucket, key, upload_id
    meta.size = sum(p.size for p in parts)
    meta.stored_size = sum(p.stored_size for p in parts)
    meta.etag = multipart.multipart_etag([p.etag for p in parts])
    meta.mtime_ns = now_ns
    meta.parts.extend(parts)
    return meta


# ---------------------------------------------------------------------------------------------
# Operations


async def create_upload(api, request: web.Request, identity, t) -> web.StreamResponse:
    from .s3api import grant_continue, user_metadata
    headers = request.headers
    tags = bucket_config.tags_from_headers(headers)  # header errors first
    requested = sse.requested_encryption(headers, secure=sse.is_tls(request))
    info = await api.backend.bucket(t.bucket)
    header = crypto_pb2.PutObjectHeader(
        bucket=t.bucket, key=t.key, content_type=headers.get("Content-Type", DEFAULT_CONTENT_TYPE),
        user_metadata=user_metadata(request), content_length=-1, tags=tags)
    encryption = await api.write_encryption(headers, info, requested, header)
    await grant_continue(request)
    try:
        answer = await api.backend.crypto().CreateMultipartUpload(
            crypto_pb2.CreateMultipartUploadRequest(header=header), timeout=60)
    except grpc.RpcError as e:
        if encryption.kms_key_to_check:
            api.backend.forget_key(encryption.kms_key_to_check)
        raise errors.from_rpc_error(e) from None
    return xml_response(s3xml.initiate_multipart_upload(t.bucket, t.key, answer.upload_id),
                        sse_headers(answer.record, encryption.customer))


async def upload_part(api, request: web.Request, identity, t) -> web.StreamResponse:
    from .s3api import grant_continue
    headers = request.headers
    upload_id = _upload_id(t)
    number = multipart.parse_part_number(t.query.get("partNumber"))
    customer = sse.customer_key(headers, secure=sse.is_tls(request))
    body = body_from_request(request.content, headers, identity.payload_hash, identity.chain,
                             max_size=multipart.MAX_PART_SIZE, read_timeout=api.limits.body_timeout)
    await api.backend.bucket(t.bucket)
    record = await upload_record(api, t, upload_id)
    check_part_key(record, customer, request.path)
    header = crypto_pb2.PutObjectHeader(bucket=t.bucket, key=t.key, content_length=body.length,
                                        part=crypto_pb2.PartTarget(upload_id=upload_id, part_number=number))
    if customer is not None:
        header.sse_customer_key = customer.key
    header.checksums.update(body.checks.in_headers)  # as PUT: verified while streaming, stored with the part
    await grant_continue(request)
    response = await api._stream_to_worker(header, body)
    meta = response.meta
    etag = meta.parts[0].etag if meta.parts else meta.etag
    out = {"ETag": s3xml.quote_etag(etag)}
    out.update({name: value for name, value in checksum_headers(meta.checksums).items()
                if name != "x-amz-checksum-type"})  # a part's own checksum, not the object's type
    out.update(sse_headers(meta, customer) or sse_headers(record, customer))
    return web.Response(status=200, headers=out)


async def complete_upload(api, request: web.Request, identity, t) -> web.StreamResponse:
    upload_id = _upload_id(t)
    customer = sse.customer_key(request.headers, secure=sse.is_tls(request))  # only echoed (AWS needs none)
    requested = s3xml.parse_complete_multipart(await api._small_body(request, identity, s3xml.MAX_COMPLETE_XML))
    check_part_order(requested)
    await api.backend.bucket(t.bucket)
    try:
        record = await upload_record(api, t, upload_id)
    except errors.NoSuchUpload:
        # A retried Complete (its answer was lost) gets the same answer, as AWS gives it.
        return await _completed_already(api, request, t, upload_id, requested, customer)
    chosen: list[types_pb2.ObjectPart] = []
    stored = uploads.parts(upload_set(api, t), t.bucket, upload_id)
    try:
        current = await anext(stored, None)
        for want in requested:
            while current is not None and current.number < want.number:
                current = await anext(stored, None)
            if current is None or current.number != want.number or current.etag.strip('"') != want.etag:
                raise errors.InvalidPart(resource=request.path)
            chosen.append(current)
    finally:
        await stored.aclose()
    check_part_sizes([p.size for p in chosen])
    meta = completed_meta(record, t.bucket, t.key, upload_id, chosen, time.time_ns())
    await upload_set(api, t).complete_multipart(meta)
    return _complete_response(request, t, meta, customer)


def _complete_response(request: web.Request, t, meta: types_pb2.ObjectMeta,
                       customer: sse.CustomerKey | None) -> web.Response:
    from .s3api import _url_encode
    location = f"{request.scheme}://{request.host}/{t.bucket}/{_url_encode(t.key)}"
    return xml_response(s3xml.complete_multipart_result(location, t.bucket, t.key, meta.etag),
                        sse_headers(meta, customer))


async def _completed_already(api, request, t, upload_id: str, requested: list[s3xml.CompletedPart],
                             customer: sse.CustomerKey | None) -> web.Response:
    try:
        meta = await api.backend.erasure.get_object_meta(t.bucket, t.key)
    except errors.NoSuchKey:
        raise errors.NoSuchUpload(resource=request.path) from None
    same_parts = [(p.number, p.etag.strip('"')) for p in meta.parts] == [(p.number, p.etag) for p in requested]
    if meta.data_id != upload_id or not same_parts:
        raise errors.NoSuchUpload(resource=request.path)
    return _complete_response(request, t, meta, customer)


async def abort_upload(api, request: web.Request, identity, t) -> web.StreamResponse:
    upload_id = _upload_id(t)
    await api.backend.bucket(t.bucket)
    await upload_record(api, t, upload_id)
    await uploads.remove(upload_set(api, t), t.bucket, upload_id)
    return web.Response(status=204)


async def list_parts(api, request: web.Request, identity, t) -> web.StreamResponse:
    q = t.query
    upload_id = _upload_id(t)
    max_parts = s3xml.parse_max(q, "max-parts")
    raw_marker = (q.get("part-number-marker") or "0").strip()
    if not raw_marker.isascii() or not raw_marker.isdigit() or len(raw_marker) > 10:
        raise errors.InvalidArgument("Provided part-number-marker not an integer or within integer range")
    marker = min(int(raw_marker), multipart.MAX_PART_NUMBER)
    await api.backend.bucket(t.bucket)
    await upload_record(api, t, upload_id)
    listed: list[s3xml.ListedPart] = []
    truncated = False
    stored = uploads.parts(upload_set(api, t), t.bucket, upload_id, after=marker)
    try:
        async for part in stored:
            if len(listed) == max_parts:
                truncated = True
                break
            listed.append(s3xml.ListedPart(part.number, part.etag, part.size, part.mtime_ns))
    finally:
        await stored.aclose()
    next_marker = listed[-1].number if listed else 0
    return xml_response(s3xml.list_parts(bucket=t.bucket, key=t.key, upload_id=upload_id,
                                         part_number_marker=marker, next_marker=next_marker, max_parts=max_parts,
                                         is_truncated=truncated, parts=listed))


def page_of_uploads(found: list[s3xml.ListedUpload], *, prefix: str, delimiter: str, key_marker: str,
                    upload_id_marker: str, max_uploads: int) -> s3xml.UploadListing:
    """One ListMultipartUploads page from every upload of the bucket: by key, then by initiation
    time; after (key-marker, upload-id-marker); keys folded at the delimiter."""
    ordered = sorted((u for u in found if u.key.startswith(prefix)), key=lambda u: (u.key, u.initiated_ns, u.upload_id))
    if key_marker:
        if upload_id_marker:
            same = [u.upload_id for u in ordered if u.key == key_marker]
            position = same.index(upload_id_marker) if upload_id_marker in same else None

            def after(u: s3xml.ListedUpload) -> bool:
                if u.key != key_marker:
                    return u.key > key_marker
                if position is None:
                    return u.upload_id > upload_id_marker
                return same.index(u.upload_id) > position
            ordered = [u for u in ordered if after(u)]
        else:
            ordered = [u for u in ordered if u.key > key_marker]
    listed: list[s3xml.ListedUpload] = []
    prefixes: list[str] = []
    if max_uploads == 0:
        return s3xml.UploadListing([], [], bool(ordered), "", "")
    for u in ordered:
        cp = ""
        if delimiter:
            cut = u.key.find(delimiter, len(prefix))
            if cut >= 0:
                cp = u.key[: cut + len(delimiter)]
        if cp and (cp == key_marker or (prefixes and prefixes[-1] == cp)):
            continue  # a common prefix counts once, and a marker naming one skips all under it
        if len(listed) + len(prefixes) == max_uploads:
            last_key = max([x.key for x in listed[-1:]] + prefixes[-1:])
            last_id = listed[-1].upload_id if listed and listed[-1].key == last_key else ""
            return s3xml.UploadListing(listed, prefixes, True, last_key, last_id)
        if cp:
            prefixes.append(cp)
        else:
            listed.append(u)
    return s3xml.UploadListing(listed, prefixes, False, "", "")


async def list_uploads(api, request: web.Request, identity, t) -> web.StreamResponse:
    from .s3api import _url_encode
    q = t.query
    max_uploads = s3xml.parse_max(q, "max-uploads")
    encoding = q.get("encoding-type")
    if encoding not in (None, "url"):
        raise errors.InvalidArgument("Invalid Encoding Method specified in Request")
    prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
    key_marker, upload_id_marker = q.get("key-marker", ""), q.get("upload-id-marker", "")
    await api.backend.bucket(t.bucket)
    found = [s3xml.ListedUpload(upload.key, upload.upload_id, upload.initiated_ns)
             async for _entry, upload in uploads.all_records(api.backend.erasure, t.bucket)]
    listing = page_of_uploads(found, prefix=prefix, delimiter=delimiter, key_marker=key_marker,
                              upload_id_marker=upload_id_marker, max_uploads=max_uploads)
    encode = _url_encode if encoding == "url" else s3xml.NO_ENCODING
    return xml_response(s3xml.list_multipart_uploads(
        listing, bucket=t.bucket, prefix=prefix, delimiter=delimiter, key_marker=key_marker,
        upload_id_marker=upload_id_marker if key_marker else "", max_uploads=max_uploads, encode=encode))


# ---------------------------------------------------------------------------------------------
# GET and HEAD ?partNumber=N


def part_number_query(q: Mapping[str, str], headers: Mapping[str, str]) -> int | None:
    """`partNumber` of a GET or HEAD (None: absent); exclusive with Range, as AWS."""
    if "partNumber" not in q:
        return None
    number = multipart.parse_part_number(q["partNumber"])
    if headers.get("Range"):
        raise errors.InvalidRequest("Cannot specify both Range header and partNumber query parameter")
    return number


def part_view(meta: types_pb2.ObjectMeta, number: int) -> tuple[int, dict[str, str], int]:
    """(status, extra headers, content length) of part `number` of the object: 206 with its
    Content-Range and x-amz-mp-parts-count for a multipart object; part 1 of any other object
    is the whole object (200). InvalidPartNumber beyond the last part."""
    offset, size = multipart.part_span(meta, number)
    if not meta.parts:
        return 200, {}, size
    extra = {"x-amz-mp-parts-count": str(len(meta.parts))}
    if size:
        extra["Content-Range"] = f"bytes {offset}-{offset + size - 1}/{meta.size}"
    return 206, extra, size
