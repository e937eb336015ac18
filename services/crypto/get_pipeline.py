"""GET: metadata -> range -> (kms Decrypt, unseal OEK) -> stripes from k members -> plaintext.

No gRPC types here. `open_object` does every step that can fail for a reason the client
must hear as a clean error (NoSuchKey, InvalidRange, KMSDisabled, KMSNotFound, a sealed
key that does not authenticate) before any byte is sent; `ObjectReader.chunks` then reads
only the stripes covering the range and decrypts from the right sequence number. Every
authentication failure is ObjectTampered: garbage is never returned.

Bucket and object name come from the request only: they locate the shards and are bound into
the kms context and the KEK. The names stored in the metadata are only compared with them
(a copy naming another object is a bad copy, see sealstore/erasure/quorum.py
`without_foreign_copies`), so metadata
moved or copied on the drives can never make one object's plaintext readable under another
name.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import AsyncIterator

from sealstore import errors, multipart
from sealstore.conditions import Conditions
from sealstore.erasure import coder as erasure
from sealstore.erasure.client import ErasureSetClient, ErasureSets, StoredVersion
from sealstore.erasure.heal import heal_object
from sealstore.erasure.streams import StripeReader
from sealstore.v1 import types_pb2
from services.crypto import dare, keys
from services.crypto.kms_client import KmsClient
from services.crypto.sealing import open_object_key

log = logging.getLogger(__name__)

MESSAGE_SIZE = 1 << 20
"""Largest plaintext chunk handed to the sender."""

MAX_BACKGROUND_HEALS = 4
"""Heals on read run in the background, at most this many at once; more are dropped (the
`sealstore admin heal` walk or a later read finds them again)."""
_healing: dict[tuple[str, str], asyncio.Task] = {}


def schedule_heal(store: ErasureSetClient, bucket: str, key: str, suspects: set[int]) -> None:
    """Heals an object whose read found bad copies, after the read, without delaying it."""
    if (bucket, key) in _healing or len(_healing) >= MAX_BACKGROUND_HEALS:
        return

    async def heal() -> None:
        try:
            report = await heal_object(store, bucket, key, deep=False, suspects=frozenset(suspects))
            log.info("heal on read of %s/%s: %d shards rebuilt, %d failed", bucket, key,
                     report.shards_rebuilt, report.shards_failed)
        except Exception as exc:  # a failed heal changes nothing; a later read or heal retries
            log.warning("heal on read of %s/%s failed: %r", bucket, key, exc)
        finally:
            _healing.pop((bucket, key), None)
    _healing[(bucket, key)] = asyncio.ensure_future(heal())


@dataclass(frozen=True)
class RangeRequest:
    """An HTTP byte range before it is resolved: bytes=first-last (last < 0: open) or bytes=-suffix."""

    first: int = 0
    last: int = -1
    suffix_length: int = 0
    is_suffix: bool = False


@dataclass(frozen=True)
class ResolvedRange:
    offset: int
    length: int
    is_range: bool


def resolve_range(size: int, requested: RangeRequest | None) -> ResolvedRange:
    """S3 semantics: an unsatisfiable range is InvalidRange; a last byte beyond the end clamps."""
    if requested is None:
        return ResolvedRange(0, size, False)
    if requested.is_suffix:
        if requested.suffix_length <= 0 or size == 0:
            raise errors.InvalidRange(f"bytes=-{requested.suffix_length} of an object of {size} bytes")
        length = min(requested.suffix_length, size)
        return ResolvedRange(size - length, length, True)
    first, last = requested.first, requested.last
    if first < 0:
        raise errors.InvalidRange(f"bytes={first}-{last}")
    if 0 <= last < first:
        # Syntactically invalid ranges are ignored by S3: the whole object is returned.
        return ResolvedRange(0, size, False)
    if first >= size:
        raise errors.InvalidRange(f"bytes={first}-{'' if last < 0 else last} of an object of {size} bytes")
    end = size - 1 if last < 0 else min(last, size - 1)
    return ResolvedRange(first, end - first + 1, True)


def resolve_copy_range(size: int, requested: RangeRequest) -> ResolvedRange:
    """x-amz-copy-source-range: bytes=first-last, both within the source (nothing is clamped)."""
    if requested.is_suffix or requested.first < 0 or requested.last < requested.first or requested.last >= size:
        raise errors.InvalidArgument(f"Range specified is not valid for source object of size: {size}")
    return ResolvedRange(requested.first, requested.last - requested.first + 1, True)


@dataclass(frozen=True)
class StoredStream:
    """One stream on the drives, read with its own stripes (and, encrypted, from DARE sequence 0):
    a whole object, or one part of a multipart object (its shard file is `<data_id>.shard`)."""

    data_id: str
    size: int
    stored_size: int


@dataclass
class ObjectReader:
    store: ErasureSetClient
    # The request's names: where the shards are read from (never meta.bucket / meta.key).
    bucket: str
    key: str
    meta: types_pb2.ObjectMeta
    range: ResolvedRange
    oek: bytearray | None
    holders: list[int]
    # Members whose copy is missing or stale (found when the metadata was read).
    suspects: set[int] = field(default_factory=set)
    # The request's conditions say the client's copy is current (304): nothing is read.
    not_modified: bool = False
    # A small object: each holder's framed shard, fetched with the metadata (StripeReader).
    inline_shards: dict[int, bytes] = field(default_factory=dict)

    def close(self) -> None:
        """Drops the object key; for a reader whose chunks are never read (chunks() does it too)."""
        keys.zero(self.oek)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The range's plaintext in chunks of at most MESSAGE_SIZE bytes."""
        try:
            if self.range.length == 0:
                return
            if self.meta.parts:
                source = self._plaintext_of_parts(self.range.offset, self.range.length)
            else:
                whole = StoredStream(self.meta.data_id, self.meta.size, self.meta.stored_size)
                source = self._plaintext(whole, self.range.offset, self.range.length, self.oek)
            # One buffer, filled in place and copied once per message: the pieces are views of
            # the decryptor's buffer, valid only until the next one (slicing and trimming a
            # growing bytearray cost two more copies of every byte, a tenth of a GET's CPU here).
            size = min(MESSAGE_SIZE, self.range.length)
            out = bytearray(size)
            filled = 0
            async for piece in source:
                piece = memoryview(piece)
                while piece:
                    take = min(size - filled, len(piece))
                    out[filled:filled + take] = piece[:take]
                    filled += take
                    piece = piece[take:]
                    if filled == size:
                        yield bytes(out)
                        filled = 0
            if filled:
                yield bytes(out[:filled])
            if self.suspects:
                schedule_heal(self.store, self.bucket, self.key, self.suspects)
        finally:
            self.close()

    def _plaintext(self, stream: StoredStream, offset: int, length: int,
                   key: bytearray | None) -> AsyncIterator[memoryview]:
        if key is None:
            if stream.stored_size != stream.size:
                raise errors.ObjectTampered(f"{self.bucket}/{self.key}: stored size does not match")
            return self._stored_bytes(stream, offset, length)
        return self._decrypted(stream, offset, length, key)

    async def _plaintext_of_parts(self, offset: int, length: int) -> AsyncIterator[memoryview]:
        """Plaintext [offset, offset+length) of a multipart object: only the parts (and in them
        only the stripes) the range touches, each part decrypted under its own part key."""
        parts = self.meta.parts
        self._check_parts(parts)
        end = offset + length
        start = 0
        for part in parts:
            part_end = start + part.size
            lo, hi = max(offset, start), min(end, part_end)
            if lo < hi:
                part_key = (keys.derive_part_key(self.oek, part.number, bytes(part.key_nonce))
                            if self.oek is not None else None)
                try:
                    stream = StoredStream(part.data_id, part.size, part.stored_size)
                    async for piece in self._plaintext(stream, lo - start, hi - lo, part_key):
                        yield piece
                finally:
                    keys.zero(part_key)
            start = part_end
            if start >= end:
                break

    def _check_parts(self, parts) -> None:
        """The part list must add up and be in strictly ascending order (as completion made it),
        and an encrypted part needs the object's key: anything else is edited metadata."""
        total, previous = 0, 0
        for part in parts:
            if part.number <= previous or (part.key_nonce and self.oek is None) or (
                    self.oek is not None and not part.key_nonce):
                raise errors.ObjectTampered(f"{self.bucket}/{self.key}: inconsistent part list")
            previous = part.number
            total += part.size
        if total != self.meta.size:
            raise errors.ObjectTampered(f"{self.bucket}/{self.key}: the parts do not add up to the object's size")

    async def _stored_bytes(self, stream: StoredStream, offset: int, length: int) -> AsyncIterator[memoryview]:
        """Bytes [offset, offset+length) of the stored stream, read stripe by stripe."""
        layout = self.meta.erasure
        stripe_size = layout.stripe_size
        if offset + length > stream.stored_size or stripe_size == 0:
            raise errors.ObjectTampered(f"{self.bucket}/{self.key}: metadata sizes are inconsistent")
        coder = erasure.StripeCoder(layout.data_shards, layout.parity_shards, layout.ec_type or erasure.EC_TYPE)
        first, count = erasure.stripe_span(offset, length, stripe_size)
        reader = StripeReader(self.store, coder, StoredVersion(self.bucket, self.key, stream.data_id),
                              self.holders, inline_shards=self.inline_shards)
        stripe_index = first
        async for stripe in self._noting_bad_members(reader, first, count):
            start = stripe_index * stripe_size
            expected = min(stripe_size, stream.stored_size - start)
            if len(stripe) != expected:
                raise errors.ObjectTampered(f"{self.bucket}/{self.key}: stripe {stripe_index} "
                                            f"has {len(stripe)} bytes, {expected} expected")
            lo = max(offset, start) - start
            hi = min(offset + length, start + len(stripe)) - start
            yield memoryview(stripe)[lo:hi]
            stripe_index += 1

    async def _noting_bad_members(self, reader: StripeReader, first: int, count: int) -> AsyncIterator[bytes]:
        try:
            async for stripe in reader.stripes(first, count):
                yield stripe
        finally:
            self.suspects |= reader.bad_members

    async def _decrypted(self, stream: StoredStream, offset: int, length: int,
                         key: bytearray) -> AsyncIterator[memoryview]:
        size = stream.size
        if dare.encrypted_size(size) != stream.stored_size:
            raise errors.ObjectTampered(f"{self.bucket}/{self.key}: stored size does not match")
        span = dare.package_range(offset, length, size)
        last_package = dare.package_count(size) - 1
        decryptor = dare.DareDecryptor(key, seq=span.first_package, last_seq=last_package,
                                       cipher=dare.cipher_id(self.meta.encryption.cipher))
        skip, remaining = span.skip, length
        async for ciphertext in self._stored_bytes(stream, span.ciphertext_offset, span.ciphertext_length):
            for plain in decryptor.update(ciphertext):
                if skip:
                    cut = min(skip, len(plain))
                    plain, skip = plain[cut:], skip - cut
                if remaining and len(plain):
                    piece = plain[:remaining]
                    remaining -= len(piece)
                    yield piece
        if span.last_package == last_package:
            decryptor.finish()
        else:
            decryptor.check_complete_prefix()
        if remaining:
            raise errors.ObjectTampered(f"{self.bucket}/{self.key}: {remaining} bytes missing")


async def open_object(store: ErasureSetClient | ErasureSets, kms: KmsClient, bucket: str, key: str,
                      requested: RangeRequest | None, conditions: Conditions | None = None, *,
                      customer_key: bytes | None = None, part_number: int = 0,
                      copy_source: bool = False) -> ObjectReader:
    """Everything a GET needs before its first byte; raises the client-visible errors.

    `conditions` are checked right after the metadata read and before the range and the kms
    (RFC 7232: preconditions come before Range), so a 412 or 304 costs no Decrypt.
    `part_number` (?partNumber=N, exclusive with a range): that part of a multipart object, the
    whole of another object for N = 1. `copy_source`: the object is the source of a copy, whose
    conditions never answer 304 (412 instead) and whose range must lie within the object."""
    if part_number and requested is not None:
        raise errors.InvalidRequest("Cannot specify both Range header and partNumber query parameter",
                                    resource=key)
    store = store.set_for(bucket, key)
    # A one-stripe object's shards come with its metadata: no ReadShard call (two fewer per
    # GET). Not when the answer may be 304, which sends no byte of the object.
    with_shards = not (conditions and (conditions.if_none_match is not None
                                       or conditions.if_modified_since is not None))
    outcomes = await store.meta_outcomes(bucket, key, with_inline_shard=with_shards)
    metas = [o if isinstance(o, types_pb2.ObjectMeta) else None for o in outcomes]
    meta = store.quorum_version(metas)
    if meta is None:
        # Let the quorum client decide between NoSuchKey and SlowDown.
        meta = await store.get_object_meta(bucket, key)
        outcomes = await store.meta_outcomes(bucket, key, with_inline_shard=with_shards)
        metas = [o if isinstance(o, types_pb2.ObjectMeta) else None for o in outcomes]
    holders = [i for i, m in enumerate(metas) if m is not None and m.data_id == meta.data_id]
    # A member whose answer has no shard (a parity member, a file it could not read, a larger
    # object) is read by ReadShard when needed.
    inline_shards = {i: metas[i].inline_shard for i in holders if metas[i].inline_shard}
    for m in metas:
        if m is not None:
            m.ClearField("inline_shard")  # the shard bytes go no further than the reader
    # A member that answered without this version (no copy, or an older one) is healed after
    # the read; one that did not answer is offline, and a heal could not reach it anyway.
    suspects = {i for i, o in enumerate(outcomes)
                if isinstance(o, (errors.NoSuchKey, errors.NoSuchBucket))
                or (isinstance(o, types_pb2.ObjectMeta) and o.data_id != meta.data_id and o.mtime_ns < meta.mtime_ns)}
    check_names(meta, bucket, key)
    if conditions:
        try:
            conditions.check(meta, resource=key)
        except errors.NotModified:
            if copy_source:
                raise errors.PreconditionFailed(resource=key) from None
            return ObjectReader(store, bucket, key, meta, ResolvedRange(0, 0, False), None, holders,
                                not_modified=True)
    if part_number:
        offset, length = multipart.part_span(meta, part_number)
        resolved = ResolvedRange(offset, length, length > 0)
    elif copy_source and requested is not None:
        resolved = resolve_copy_range(meta.size, requested)
    else:
        resolved = resolve_range(meta.size, requested)
    oek = await open_object_key(kms, meta, bucket, key, customer_key)  # SSE-C rules for plain objects too
    return ObjectReader(store, bucket, key, meta, resolved, oek, holders, suspects, inline_shards=inline_shards)


def check_names(meta: types_pb2.ObjectMeta, bucket: str, key: str) -> None:
    """ObjectTampered unless the metadata names the requested object. The quorum client already
    drops such copies; this keeps the worker safe with any store that does not."""
    if meta.bucket != bucket or meta.key != key:
        raise errors.ObjectTampered(f"{bucket}/{key}: the stored metadata names another object",
                                    resource=key)
