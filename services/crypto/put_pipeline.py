"""PUT: plaintext stream in -> (DARE 2.0) -> stripes -> erasure fragments -> storage members.

No gRPC types here. Order of events (docs/crypto.md, "PUT"):
1. the bucket must exist; 2. with SSE-KMS, one kms GenerateKey(name, AAD) - its errors
(KMSNotFound, KMSDisabled, ...) surface before anything is written; 3. OEK, IV, KEK,
sealed OEK; 4. the body is encrypted, cut into stripes, coded and streamed to all members
at once; 5. only when the body's end marker arrives with the right size is the metadata
committed. Anything else (broken stream, cancellation, lost quorum) aborts the upload on
every member, so nothing becomes visible.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

import xxhash

from sealstore import errors
from sealstore.erasure import framing
from sealstore.erasure.client import ErasureSetClient, ErasureSets
from sealstore.erasure.coder import StripeCoder
from sealstore.erasure.streams import HeldStripe, ShardFanout
from sealstore.v1 import types_pb2
from services.crypto import dare, keys
from services.crypto.kms_client import KmsClient

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
PACKAGES_PER_STRIPE = 16
STRIPE_SIZE = PACKAGES_PER_STRIPE * dare.MAX_PACKAGE  # 1,049,088
"""Stored bytes per stripe: whole DARE packages, so a range read decodes whole packages."""
INLINE_SHARD_LIMIT = 128 * 1024
"""Objects whose shard per drive is at most this (MinIO's 128 KiB) are stored inline: inside
each drive's metadata, one write per drive."""


def stored_inline(header: "PutHeader", data_shards: int) -> bool:
    """Whether the object (of announced size) goes inline; unknown sizes are streamed."""
    if header.content_length < 0:
        return False
    stored = dare.encrypted_size(header.content_length) if header.encrypted else header.content_length
    return stored <= STRIPE_SIZE and -(-stored // data_shards) <= INLINE_SHARD_LIMIT


from services.crypto.sealing import PartTarget, PutHeader, Sealing, SseKms, seal_new_object  # noqa: F401


@dataclass(frozen=True)
class BodyEnd:
    """The sender's end marker: the total plaintext bytes it sent."""

    size: int
    # Checksums the sender verified against the whole body (trailers arrive only at the end).
    checksums: dict[str, str] = field(default_factory=dict)


class StripeBuffer:
    """Collects the stored stream into fixed-size stripes, reusing one buffer."""

    def __init__(self, stripe_size: int = STRIPE_SIZE, expected: int = -1):
        """`expected`: the stored bytes announced, when known: a small object's buffer is its
        size, not a whole stripe (a slice assignment past the end still grows it)."""
        self._buf = bytearray(stripe_size if expected < 0 else min(stripe_size, expected))
        self._len = 0
        self.size = stripe_size

    def add(self, data) -> list[bytes]:
        """Appends `data`; returns the stripes it completed."""
        out = []
        view = memoryview(data).cast("B")
        pos = 0
        while pos < len(view):
            take = min(self.size - self._len, len(view) - pos)
            self._buf[self._len:self._len + take] = view[pos:pos + take]
            self._len += take
            pos += take
            if self._len == self.size:
                out.append(bytes(self._buf))
                self._len = 0
        return out

    def flush(self) -> bytes | None:
        if not self._len:
            return None
        stripe = bytes(self._buf[:self._len])
        self._len = 0
        return stripe


def etag_is_md5(sealing: Sealing | None) -> bool:
    """AWS's ETag rule: the MD5 of the plaintext for unencrypted and SSE-S3 objects (clients check
    it), none for SSE-KMS and SSE-C, where ours is an xxh3-128 of the ciphertext (cheap, and it
    tells nothing about the plaintext)."""
    return sealing is None or sealing.envelope.domain == keys.DOMAIN_SSE_S3


async def put_object(store: ErasureSetClient | ErasureSets, kms: KmsClient, header: PutHeader,
                     body: AsyncIterator[bytes | BodyEnd], *,
                     cipher: int = dare.AES_256_GCM) -> types_pb2.ObjectMeta:
    """Stores the object in its erasure set; returns its committed metadata."""
    if header.part is not None:
        raise errors.InvalidRequest("a part goes through services.crypto.multipart.upload_part")
    store = store.set_for(header.bucket, header.key)
    await store.ensure_writable(header.bucket)
    sealing = await seal_new_object(kms, header, cipher) if header.encrypted else None
    try:
        return await write_stream(
            store, StreamTarget(shard_bucket=header.bucket, content_length=header.content_length,
                                key=sealing.oek if sealing else None, md5_etag=etag_is_md5(sealing),
                                inline=stored_inline(header, store.data_shards)),
            body, cipher, lambda stored, data_id, coder: _object_meta(header, data_id, stored, coder, sealing))
    finally:
        if sealing is not None:
            keys.zero(sealing.oek)


@dataclass
class StreamTarget:
    """How one plaintext stream is stored: the bucket its shards are uploaded to, the DARE key
    (the OEK, a part key, or None: stored as it comes), which ETag, inline or shard files."""

    shard_bucket: str
    content_length: int
    key: bytearray | None
    md5_etag: bool
    inline: bool = False
    # Plaintext bytes allowed (EntityTooLarge beyond); -1: no limit here.
    max_size: int = -1


async def write_stream(store: ErasureSetClient, target: StreamTarget, body: AsyncIterator[bytes | BodyEnd],
                       cipher: int,
                       meta_for: Callable[["_Stored", str, StripeCoder], types_pb2.ObjectMeta]) -> types_pb2.ObjectMeta:
    """Encrypts (with target.key), codes and uploads the stream, then commits the metadata
    `meta_for(stored, data_id, coder)` builds. Any failure aborts the upload on every member.

    An object announced at one stripe or less is held and sent with the commit (inline, or as
    its shard files), one call per drive; a larger or unannounced one streams to the members."""
    coder = StripeCoder(store.data_shards, store.parity_shards)
    data_id = uuid.uuid4().hex
    held = target.inline or 0 <= _announced_stored_size(target) <= STRIPE_SIZE
    fanout = HeldStripe(store) if held else ShardFanout(store, data_id, target.shard_bucket)
    try:
        stored = await _stream_body(body, target, fanout, coder, cipher)
        members = await fanout.finish()
        meta = meta_for(stored, data_id, coder)
        meta.checksums.update(stored.checksums)
        meta.inline = target.inline
        await store.commit_object(data_id, meta, members,
                                  inline_blocks=fanout.fragments if target.inline else None,
                                  shard_blocks=fanout.fragments if held and not target.inline else None)
        return meta
    except BaseException as exc:
        log.info("upload %s to %s aborted: %s", data_id, target.shard_bucket,
                 getattr(exc, "message", None) or type(exc).__name__)
        store.forget_writable(target.shard_bucket)
        # Shielded: a cancelled PUT must still clean up after itself.
        await asyncio.shield(asyncio.ensure_future(fanout.abort()))
        raise


@dataclass
class _Stored:
    plain_size: int
    stored_size: int
    stripes: int
    etag: str
    checksums: dict[str, str] = field(default_factory=dict)


def _announced_stored_size(target: StreamTarget) -> int:
    """The bytes the announced plaintext becomes when stored (DARE adds its overhead); -1 when
    the size is not announced."""
    if target.content_length < 0:
        return -1
    return dare.encrypted_size(target.content_length) if target.key is not None else target.content_length


async def _stream_body(body: AsyncIterator[bytes | BodyEnd], target: StreamTarget, fanout: ShardFanout | HeldStripe,
                       coder: StripeCoder, cipher: int) -> _Stored:
    stripes = StripeBuffer(expected=_announced_stored_size(target))
    encryptor = dare.DareEncryptor(target.key, cipher=cipher) if target.key is not None else None
    plain_digest = hashlib.md5() if target.md5_etag else None
    stored_digest = None if target.md5_etag else xxhash.xxh3_128()
    limit = target.content_length if target.content_length >= 0 else target.max_size
    received = stored = count = 0
    end: BodyEnd | None = None

    async def emit(completed: list[bytes]) -> None:
        nonlocal stored, count
        for stripe in completed:
            if stored_digest is not None:
                stored_digest.update(stripe)
            stored += len(stripe)
            count += 1
            await fanout.send(coder.encode(stripe))

    if 0 <= target.max_size < target.content_length:
        raise errors.EntityTooLarge(f"{target.content_length} bytes announced, at most {target.max_size} allowed")
    async for item in body:
        if isinstance(item, BodyEnd):
            end = item
            break
        if not item:
            continue
        received += len(item)
        if 0 <= limit < received:
            if target.content_length >= 0:
                raise errors.IncompleteBody(f"more than the announced {target.content_length} bytes arrived")
            raise errors.EntityTooLarge(f"more than {target.max_size} bytes arrived")
        if plain_digest is not None:
            plain_digest.update(item)
        if encryptor is None:
            await emit(stripes.add(item))
        else:
            for package in encryptor.update(item):
                await emit(stripes.add(package))
    if end is None:
        raise errors.IncompleteBody("the upload stream ended without its end marker")
    if end.size != received or (target.content_length >= 0 and target.content_length != received):
        raise errors.IncompleteBody(f"received {received} bytes, the sender announced {end.size}")
    if encryptor is not None:
        for package in encryptor.finish():
            await emit(stripes.add(package))
    last = stripes.flush()
    if last is not None:
        await emit([last])
    return _Stored(received, stored, count, (plain_digest or stored_digest).hexdigest(), dict(end.checksums))


def erasure_layout(coder: StripeCoder, stripe_count: int) -> types_pb2.ErasureLayout:
    return types_pb2.ErasureLayout(
        data_shards=coder.data_shards, parity_shards=coder.parity_shards, stripe_size=STRIPE_SIZE,
        ec_type=coder.ec_type, block_checksum=framing.CHECKSUM_NAME, stripe_count=stripe_count)


def _object_meta(header: PutHeader, upload_id: str, stored: _Stored, coder: StripeCoder,
                 sealing: Sealing | None) -> types_pb2.ObjectMeta:
    meta = types_pb2.ObjectMeta(
        format_version=FORMAT_VERSION, bucket=header.bucket, key=header.key, data_id=upload_id,
        size=stored.plain_size, stored_size=stored.stored_size, etag=stored.etag, mtime_ns=time.time_ns(),
        content_type=header.content_type, user_metadata=header.user_metadata, tags=header.tags,
        checksums=header.checksums, erasure=erasure_layout(coder, stored.stripes))
    if sealing is not None:
        meta.encryption.CopyFrom(sealing.envelope)
    return meta
