"""CopyObject and UploadPartCopy: the source is opened like a GET and its plaintext is piped into
the destination's PUT (or part) pipeline, inside the worker.

The destination is always sealed under fresh keys (its own GenerateKey, OEK, IV, or part key):
sealed key material is never copied from one object to another, so a copy onto itself is how an
object moves to another key or SSE mode. Source conditions are answered from the source's
metadata before any kms call. Memory is a few stripes either way, whatever the object size.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import AsyncIterator

from sealstore import errors
from sealstore.conditions import Conditions
from sealstore.erasure.client import ErasureSetClient, ErasureSets
from sealstore.v1 import types_pb2
from services.crypto import dare, multipart
from services.crypto.get_pipeline import ObjectReader, RangeRequest, open_object
from services.crypto.kms_client import KmsClient
from services.crypto.put_pipeline import BodyEnd, put_object
from services.crypto.sealing import PutHeader

MAX_COPY_SOURCE = 5 * 1024 * 1024 * 1024
"""AWS copies at most 5 GiB in one CopyObject or UploadPartCopy."""


@dataclass(frozen=True)
class CopyRequest:
    source_bucket: str
    source_key: str
    destination: PutHeader
    source_customer_key: bytes | None = dataclasses.field(default=None, repr=False)
    source_conditions: Conditions | None = None
    # UploadPartCopy's x-amz-copy-source-range; None: the whole source.
    source_range: RangeRequest | None = None
    replace_metadata: bool = False
    replace_tags: bool = False


async def copy_object(store: ErasureSetClient | ErasureSets, kms: KmsClient, request: CopyRequest, *,
                      cipher: int = dare.AES_256_GCM) -> types_pb2.ObjectMeta:
    """Copies the source (or its range, for a part) to the destination; returns the destination's
    committed metadata (for a part: as multipart.upload_part answers)."""
    dest = request.destination
    record = None
    if dest.part is not None:
        # The destination upload must exist before the source costs a kms call.
        multipart.check_part_request(dest)
        dest_set = store.set_for_upload(dest.bucket, dest.key)
        await dest_set.get_bucket(dest.bucket, for_write=True)
        record = await multipart.read_upload(dest_set, dest.bucket, dest.key, dest.part.upload_id)
    elif request.source_range is not None:
        raise errors.InvalidRequest("x-amz-copy-source-range applies to UploadPartCopy only")
    else:
        await store.get_bucket(dest.bucket, for_write=True)
    source = await open_object(store, kms, request.source_bucket, request.source_key, request.source_range,
                               request.source_conditions, customer_key=request.source_customer_key,
                               copy_source=True)
    try:
        length = source.range.length
        if length > MAX_COPY_SOURCE:
            raise errors.InvalidRequest("The specified copy source is larger than the maximum allowable size "
                                        f"for a copy source: {MAX_COPY_SOURCE}")
        header = _destination_header(request, source.meta, length, whole=not source.range.is_range)
        if record is not None:
            return await multipart.upload_part(store, kms, header, _plaintext(source), cipher=cipher,
                                               checked_record=record)
        return await put_object(store, kms, header, _plaintext(source), cipher=cipher)
    finally:
        source.close()


def _destination_header(request: CopyRequest, source: types_pb2.ObjectMeta, length: int, whole: bool) -> PutHeader:
    """x-amz-metadata-directive / x-amz-tagging-directive: COPY takes the source's content type,
    user metadata and tags; REPLACE the request's."""
    dest = request.destination
    changes: dict = {"content_length": length}
    if not request.replace_metadata:
        changes["content_type"] = source.content_type
        changes["user_metadata"] = dict(source.user_metadata)
    if not request.replace_tags:
        changes["tags"] = dict(source.tags)
    if whole and not source.parts and not dest.checksums:
        # The same bytes: the source's verified checksums hold for the copy too.
        changes["checksums"] = dict(source.checksums)
    return dataclasses.replace(dest, **changes)


async def _plaintext(source: ObjectReader) -> AsyncIterator[bytes | BodyEnd]:
    async for chunk in source.chunks():
        yield chunk
    yield BodyEnd(source.range.length)
