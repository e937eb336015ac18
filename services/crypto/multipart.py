"""Multipart uploads in the worker: the upload's record (CreateMultipartUpload) and its parts
(UploadPart, UploadPartCopy through services/crypto/copy.py).

The object key (OEK) is made and sealed once, when the upload starts, exactly as for a PUT of the
final bucket/key; its envelope is stored in the upload's record (sealstore/multipart.py says where).
Every upload of a part unseals it again and derives that part's own key from it with 32 fresh
random bytes (keys.derive_part_key): a part uploaded twice never reuses key and nonce. The part is
stored as its own DARE stream (sequence numbers from 0) in its own part object, never inline, so
completing the upload only moves shard files. Completion, listing and abort need no keys: the
gateway does them with the quorum client.

Records and parts go to the erasure set of the final object (`store.set_for_upload(bucket, key)`), so
completing moves files within one set.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from typing import AsyncIterator

from sealstore import errors
from sealstore import multipart as naming
from sealstore.erasure.client import ErasureSetClient, ErasureSets, StoredVersion
from sealstore.erasure.coder import StripeCoder
from sealstore.v1 import types_pb2
from services.crypto import dare, keys
from services.crypto.kms_client import KmsClient
from services.crypto.put_pipeline import FORMAT_VERSION, BodyEnd, StreamTarget, erasure_layout, write_stream
from services.crypto.sealing import PutHeader, open_object_key, seal_new_object

log = logging.getLogger(__name__)


async def create_upload(store: ErasureSetClient | ErasureSets, kms: KmsClient, header: PutHeader, *,
                        cipher: int = dare.AES_256_GCM) -> tuple[str, types_pb2.ObjectMeta]:
    """Seals a new object key for header.bucket/header.key (one kms GenerateKey, as a PUT) and
    commits the upload's record; returns the upload id and the record."""
    store = store.set_for_upload(header.bucket, header.key)
    await store.ensure_writable(header.bucket)
    sealing = await seal_new_object(kms, header, cipher) if header.encrypted else None
    if sealing is not None:
        # Each part unseals the key again when it arrives; nothing keeps it in between.
        keys.zero(sealing.oek)
    upload_id = uuid.uuid4().hex
    now = time.time_ns()
    coder = StripeCoder(store.data_shards, store.parity_shards)
    record = types_pb2.ObjectMeta(
        format_version=FORMAT_VERSION, bucket=naming.SYSTEM_BUCKET, key=naming.record_key(header.bucket, upload_id),
        data_id=uuid.uuid4().hex, size=0, stored_size=0, etag=hashlib.md5().hexdigest(), mtime_ns=now,
        content_type=header.content_type, user_metadata=header.user_metadata, tags=header.tags,
        checksums=header.checksums, erasure=erasure_layout(coder, 0), inline=True,
        upload=types_pb2.MultipartUpload(bucket=header.bucket, key=header.key, upload_id=upload_id,
                                         initiated_ns=now))
    if sealing is not None:
        record.encryption.CopyFrom(sealing.envelope)
    await store.commit_object(record.data_id, record, [m.index for m in store.members], inline_blocks=[])
    return upload_id, record


async def read_upload(store: ErasureSetClient, bucket: str, key: str, upload_id: str) -> types_pb2.ObjectMeta:
    """The upload's record; NoSuchUpload when there is none for this bucket/key (an upload id
    of another object names no upload of this one)."""
    naming.validate_upload_id(upload_id)
    try:
        record = await store.get_object_meta(naming.SYSTEM_BUCKET, naming.record_key(bucket, upload_id))
    except errors.NoSuchKey:
        raise errors.NoSuchUpload(resource=key) from None
    upload = record.upload
    if upload.bucket != bucket or upload.key != key or upload.upload_id != upload_id:
        raise errors.NoSuchUpload(resource=key)
    return record


def check_part_request(header: PutHeader) -> None:
    part = header.part
    if part is None:
        raise errors.InvalidRequest("UploadPart needs a part target")
    if not 1 <= part.part_number <= naming.MAX_PART_NUMBER:
        raise errors.InvalidArgument("Part number must be an integer between 1 and 10000, inclusive")
    if header.content_length > naming.MAX_PART_SIZE:
        raise errors.EntityTooLarge(f"a part is at most {naming.MAX_PART_SIZE} bytes")


async def part_key_for(kms: KmsClient, record: types_pb2.ObjectMeta, bucket: str, key: str, part_number: int,
                       customer_key: bytes | None) -> tuple[bytearray | None, bytes]:
    """(part key, its nonce) for a new upload of the part; (None, b"") for an unencrypted upload.

    The SSE-C rules of a read apply (sealing.check_customer_key): an SSE-C upload needs its
    customer key on every part (another key: CustomerKeyMismatch), any other refuses one."""
    # Bound to the final object's names, as at CreateMultipartUpload: a record copied to another
    # upload or object does not unseal.
    oek = await open_object_key(kms, record, bucket, key, customer_key)
    if oek is None:
        return None, b""
    nonce = keys.generate_part_nonce()
    try:
        return keys.derive_part_key(oek, part_number, nonce), nonce
    finally:
        keys.zero(oek)


def part_etag_is_md5(record: types_pb2.ObjectMeta) -> bool:
    return not record.HasField("encryption") or record.encryption.domain == keys.DOMAIN_SSE_S3


async def upload_part(store: ErasureSetClient | ErasureSets, kms: KmsClient, header: PutHeader,
                      body: AsyncIterator[bytes | BodyEnd], *, cipher: int = dare.AES_256_GCM,
                      checked_record: types_pb2.ObjectMeta | None = None) -> types_pb2.ObjectMeta:
    """Stores the stream as part header.part.part_number of the upload, replacing an earlier
    upload of that part. Returns the part object's metadata, with the upload's `encryption`
    added (not stored with the part: the record holds it) so the caller can answer the SSE
    headers. `checked_record`: the record, already read by the caller (UploadPartCopy)."""
    check_part_request(header)
    bucket, key, target = header.bucket, header.key, header.part
    store = store.set_for_upload(bucket, key)
    if checked_record is None:
        await store.ensure_writable(bucket)
    record = checked_record or await read_upload(store, bucket, key, target.upload_id)
    part_key, nonce = await part_key_for(kms, record, bucket, key, target.part_number, header.customer_key)
    system_key = naming.part_key(bucket, target.upload_id, target.part_number)

    def meta_for(stored, data_id: str, coder: StripeCoder) -> types_pb2.ObjectMeta:
        now = time.time_ns()
        return types_pb2.ObjectMeta(
            format_version=FORMAT_VERSION, bucket=naming.SYSTEM_BUCKET, key=system_key, data_id=data_id,
            size=stored.plain_size, stored_size=stored.stored_size, etag=stored.etag, mtime_ns=now,
            erasure=erasure_layout(coder, stored.stripes),
            checksums=header.checksums,
            parts=[types_pb2.ObjectPart(number=target.part_number, data_id=data_id, size=stored.plain_size,
                                        stored_size=stored.stored_size, etag=stored.etag,
                                        stripe_count=stored.stripes, key_nonce=nonce, mtime_ns=now)])
    try:
        meta = await write_stream(
            store, StreamTarget(shard_bucket=naming.SYSTEM_BUCKET, content_length=header.content_length,
                                key=part_key, md5_etag=part_etag_is_md5(record), inline=False,
                                max_size=naming.MAX_PART_SIZE),
            body, cipher, meta_for)
    finally:
        keys.zero(part_key)
    await _drop_if_upload_ended(store, bucket, key, target.upload_id, meta)
    answer = types_pb2.ObjectMeta()
    answer.CopyFrom(meta)
    if record.HasField("encryption"):
        answer.encryption.CopyFrom(record.encryption)
    return answer


async def _drop_if_upload_ended(store: ErasureSetClient, bucket: str, key: str, upload_id: str,
                                part: types_pb2.ObjectMeta) -> None:
    """An upload completed or aborted while its part streamed would keep the part forever: it is
    removed again (only this version of it), and the client hears NoSuchUpload."""
    try:
        await read_upload(store, bucket, key, upload_id)
    except errors.NoSuchUpload:
        log.info("upload %s of %s/%s ended while part %s was stored; removing the part", upload_id, bucket, key,
                 part.parts[0].number)
        await asyncio.gather(*(store.delete_version(m.index, StoredVersion(part.bucket, part.key, part.data_id)) for m in store.members),
                             return_exceptions=True)
        raise

