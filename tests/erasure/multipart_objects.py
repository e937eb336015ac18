"""Multipart objects built and read at the erasure layer, without the crypto worker: parts as
`.multipart` part objects (coded, fanned out, committed), an upload record, completion with the
quorum client, and a reader that decodes any object part by part (versions.shard_files)."""
from __future__ import annotations

import time
import uuid

from sealstore import multipart
from sealstore.erasure.coder import EC_TYPE, StripeCoder, stripe_count
from sealstore.erasure.framing import CHECKSUM_NAME
from sealstore.erasure.quorum import version_holders
from sealstore.erasure.streams import ShardFanout, StripeReader
from sealstore.erasure.client import StoredVersion
from sealstore.erasure.versions import shard_files
from sealstore.multipart import SYSTEM_BUCKET
from sealstore.v1 import types_pb2

STRIPE = 64 * 1024


def layout(store, stripes: int = 0) -> types_pb2.ErasureLayout:
    return types_pb2.ErasureLayout(data_shards=store.data_shards, parity_shards=store.parity_shards,
                                   stripe_size=STRIPE, ec_type=EC_TYPE, block_checksum=CHECKSUM_NAME,
                                   stripe_count=stripes)


def new_id() -> str:
    return uuid.uuid4().hex


async def put_part(store, bucket: str, key: str, upload_id: str, number: int, data: bytes) -> types_pb2.ObjectPart:
    """Stores `data` as part `number` of the upload (a part object of `.multipart`, in the set of bucket/key)."""
    one = store.set_for_upload(bucket, key)
    coder = StripeCoder(one.data_shards, one.parity_shards)
    data_id = new_id()
    fanout = ShardFanout(one, data_id, SYSTEM_BUCKET)
    for off in range(0, len(data), STRIPE):
        await fanout.send(coder.encode(data[off:off + STRIPE]))
    members = await fanout.finish()
    stripes = stripe_count(len(data), STRIPE)
    part = types_pb2.ObjectPart(number=number, data_id=data_id, size=len(data), stored_size=len(data),
                                etag=f"etag-{number}", stripe_count=stripes, mtime_ns=time.time_ns())
    meta = types_pb2.ObjectMeta(format_version=1, bucket=SYSTEM_BUCKET, key=multipart.part_key(bucket, upload_id, number),
                                data_id=data_id, size=len(data), stored_size=len(data), etag=part.etag,
                                mtime_ns=part.mtime_ns, erasure=layout(one, stripes), parts=[part])
    await one.commit_object(data_id, meta, members)
    return part


async def put_record(store, bucket: str, key: str, upload_id: str) -> None:
    one = store.set_for_upload(bucket, key)
    data_id = new_id()
    meta = types_pb2.ObjectMeta(format_version=1, bucket=SYSTEM_BUCKET, key=multipart.record_key(bucket, upload_id),
                                data_id=data_id, mtime_ns=time.time_ns(), erasure=layout(one), inline=True,
                                upload=types_pb2.MultipartUpload(bucket=bucket, key=key, upload_id=upload_id,
                                                                 initiated_ns=time.time_ns()))
    await one.commit_object(data_id, meta, [m.index for m in one.members], inline_blocks=[])


def completed_meta(store, bucket: str, key: str, upload_id: str, parts: list[types_pb2.ObjectPart]) -> types_pb2.ObjectMeta:
    size = sum(p.size for p in parts)
    return types_pb2.ObjectMeta(format_version=1, bucket=bucket, key=key, data_id=upload_id, size=size,
                                stored_size=size, etag=multipart.multipart_etag([p.etag for p in parts]),
                                mtime_ns=time.time_ns(), erasure=layout(store), parts=parts)


async def upload(store, bucket: str, key: str, datas: list[bytes]) -> tuple[str, list[types_pb2.ObjectPart]]:
    """A whole upload, record and parts, not completed; returns (upload id, parts)."""
    upload_id = new_id()
    await put_record(store, bucket, key, upload_id)
    parts = [await put_part(store, bucket, key, upload_id, n, d) for n, d in enumerate(datas, 1)]
    return upload_id, parts


async def put_multipart(store, bucket: str, key: str, datas: list[bytes]) -> types_pb2.ObjectMeta:
    upload_id, parts = await upload(store, bucket, key, datas)
    meta = completed_meta(store, bucket, key, upload_id, parts)
    await store.complete_multipart(meta)
    return meta


async def read_object(store, bucket: str, key: str) -> bytes:
    """Every byte of bucket/key, decoded shard file by shard file (one for a plain object)."""
    one = store.set_for(bucket, key)
    metas = await one.get_object_metas(bucket, key)
    meta = one.quorum_version(metas)
    coder = StripeCoder(meta.erasure.data_shards, meta.erasure.parity_shards)
    holders = version_holders(metas, meta.data_id)
    out = bytearray()
    for shard in shard_files(meta):
        reader = StripeReader(one, coder, StoredVersion(bucket, key, shard.data_id), holders)
        async for stripe in reader.stripes(0, shard.stripe_count):
            out += stripe
    return bytes(out)
