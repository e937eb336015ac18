"""Multipart uploads in progress, as the quorum client sees them: their records, their parts,
and their removal (abort, expiry). Shared by the gateway (ListMultipartUploads, ListParts,
Complete, Abort), the heal scanner (stale uploads) and `sealstore admin uploads`.

Where things live is sealstore/multipart.py: `<bucket>/uploads/<id>` records and
`<bucket>/parts/<id>/<NNNNN>` part objects in the `.multipart` system bucket, on the erasure set
of the object the upload completes into (`store.set_for_upload(bucket, key)`, as the crypto
worker writes them). So the calls about one upload take that set's client (`one`), and the walks that
discover uploads (ListMultipartUploads, expiry, admin) visit every set of `store` (an
ErasureSetClient or ErasureSets).
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import AsyncIterator

import grpc

from sealstore import errors, multipart
from sealstore.v1 import storage_pb2, types_pb2

log = logging.getLogger(__name__)

PAGE = 1000
DELETE_CONCURRENCY = 8
"""Part objects one drive removes at once during an abort."""
_AFTER_ALL = "\U0010ffff"


@dataclass(frozen=True)
class UploadSummary:
    """One upload in progress: what `sealstore admin uploads` shows."""

    bucket: str
    key: str
    upload_id: str
    initiated_ns: int
    parts: int
    bytes: int
    newest_ns: int
    """The record's or the newest part's time: an upload still receiving parts is not stale."""


async def _page(one, prefix: str, start_after: str, max_keys: int) -> tuple[list[storage_pb2.ObjectEntry], bool]:
    try:
        return await one.list_objects(multipart.SYSTEM_BUCKET, prefix, start_after, max_keys)
    except errors.NoSuchBucket:  # no upload was ever started on this cluster
        return [], False


async def entries(one, prefix: str, start_after: str = "") -> AsyncIterator[storage_pb2.ObjectEntry]:
    """Every `.multipart` entry under `prefix` after `start_after`, in key order, page by page."""
    cursor = start_after
    while True:
        page, truncated = await _page(one, prefix, cursor, PAGE)
        for entry in page:
            yield entry
        if not truncated or not page:
            return
        cursor = page[-1].key


async def record(one, bucket: str, upload_id: str) -> types_pb2.ObjectMeta:
    """The upload's record; NoSuchUpload when there is none (never started, aborted, completed)."""
    multipart.validate_upload_id(upload_id)
    try:
        meta = await one.get_object_meta(multipart.SYSTEM_BUCKET, multipart.record_key(bucket, upload_id))
    except (errors.NoSuchKey, errors.NoSuchBucket):
        raise errors.NoSuchUpload() from None
    if meta.upload.bucket != bucket or meta.upload.upload_id != upload_id:
        raise errors.NoSuchUpload()
    return meta


async def upload_of(one, entry: storage_pb2.ObjectEntry) -> types_pb2.MultipartUpload | None:
    """What a record entry completes into (from the listing, else from its metadata)."""
    if entry.HasField("upload") and entry.upload.upload_id:
        return entry.upload
    try:
        meta = await one.get_object_meta(multipart.SYSTEM_BUCKET, entry.key)
    except (errors.NoSuchKey, errors.NoSuchBucket):
        return None
    return meta.upload if meta.HasField("upload") else None


def part_of(entry: storage_pb2.ObjectEntry) -> types_pb2.ObjectPart:
    """The part a part object holds (from the listing; its number from its key when the
    listing carries no part)."""
    if entry.HasField("part") and entry.part.number:
        return entry.part
    return types_pb2.ObjectPart(number=multipart.part_number_of(entry.key), data_id=entry.data_id,
                                size=entry.size, etag=entry.etag, mtime_ns=entry.mtime_ns)


async def parts(one, bucket: str, upload_id: str, after: int = 0) -> AsyncIterator[types_pb2.ObjectPart]:
    """The upload's parts in number order, after part number `after`."""
    prefix = multipart.parts_prefix(bucket, upload_id)
    start = multipart.part_key(bucket, upload_id, after) if after else ""
    async for entry in entries(one, prefix, start):
        yield part_of(entry)


async def records(one, bucket: str) -> AsyncIterator[tuple[storage_pb2.ObjectEntry, types_pb2.MultipartUpload]]:
    """Every upload record of `bucket` on one set (in upload id order)."""
    async for entry in entries(one, multipart.uploads_prefix(bucket)):
        upload = await upload_of(one, entry)
        if upload is not None:
            yield entry, upload


async def all_records(store, bucket: str) -> AsyncIterator[tuple[storage_pb2.ObjectEntry, types_pb2.MultipartUpload]]:
    """Every upload record of `bucket`, set after set."""
    for one in store.sets:
        async for found in records(one, bucket):
            yield found


async def buckets_with_uploads(one) -> list[str]:
    """Buckets that have anything in `.multipart` (records or parts), found by skipping from
    one bucket's prefix to the next: one short listing per bucket, whatever the part count."""
    names, cursor = [], ""
    while True:
        page, _ = await _page(one, "", cursor, 1)
        if not page:
            return names
        name = page[0].key.split("/", 1)[0]
        names.append(name)
        cursor = name + "/" + _AFTER_ALL


async def upload_ids_with_parts(one, bucket: str) -> list[str]:
    """Upload ids that have part objects in `bucket`, one short listing per upload."""
    prefix = f"{bucket}/parts/"
    ids, cursor = [], ""
    while True:
        page, _ = await _page(one, prefix, cursor, 1)
        if not page:
            return ids
        upload_id = page[0].key[len(prefix):].split("/", 1)[0]
        ids.append(upload_id)
        cursor = multipart.parts_prefix(bucket, upload_id) + _AFTER_ALL


async def summary(one, bucket: str, upload_id: str, upload: types_pb2.MultipartUpload | None,
                  record_mtime_ns: int = 0) -> UploadSummary:
    count = size = 0
    newest = record_mtime_ns
    async for part in parts(one, bucket, upload_id):
        count += 1
        size += part.size
        newest = max(newest, part.mtime_ns)
    return UploadSummary(bucket, upload.key if upload else "", upload_id,
                         upload.initiated_ns if upload else 0, count, size, newest)


async def summaries(store, bucket: str = "") -> list[tuple[object, UploadSummary]]:
    """Every upload in progress (of `bucket`, or of all buckets) with the set client holding
    it, and part objects left without a record (an abort that raced a part upload): those show
    with an empty key."""
    out = []
    for one in store.sets:
        for name in [bucket] if bucket else await buckets_with_uploads(one):
            seen = set()
            async for entry, upload in records(one, name):
                seen.add(upload.upload_id)
                out.append((one, await summary(one, name, upload.upload_id, upload, entry.mtime_ns)))
            for upload_id in await upload_ids_with_parts(one, name):
                if upload_id not in seen:
                    out.append((one, await summary(one, name, upload_id, None)))
    return out


async def remove(one, bucket: str, upload_id: str) -> int:
    """Removes the upload: its parts, then its record, then any part that landed meanwhile (a
    part upload racing the abort). Returns the number of part objects removed. A failure leaves
    the record in place while parts remain, so the removal can be retried."""
    removed = await _remove_parts(one, bucket, upload_id)
    # Upload ids are all 32 hex digits: the record's key is a prefix of no other key.
    await _sweep(one, multipart.record_key(bucket, upload_id), upload_id)
    return removed + await _remove_parts(one, bucket, upload_id)


async def _remove_parts(one, bucket: str, upload_id: str) -> int:
    return await _sweep(one, multipart.parts_prefix(bucket, upload_id), upload_id)


async def _sweep(one, prefix: str, upload_id: str) -> int:
    """Each member removes every `.multipart` object it holds under `prefix`, listed by itself:
    a quorum delete would be satisfied without a slow member, which would then keep its copies.
    SlowDown unless at least write_quorum members did."""
    outcomes = await asyncio.gather(*(_sweep_member(one, m, prefix) for m in one.members), return_exceptions=True)
    done = [o for o in outcomes if isinstance(o, int)]
    for m, o in zip(one.members, outcomes):
        if not isinstance(o, int):
            log.warning("removing the parts of upload %s from %s drive %d failed: %r", upload_id, m.address,
                        m.drive, o)
    if len(done) < one.write_quorum:
        raise errors.SlowDown(f"the parts of upload {upload_id} were removed from {len(done)} of "
                              f"{len(one.members)} drives; retry")
    return max(done, default=0)


async def _sweep_member(one, member, prefix: str) -> int:
    """Removes what one member lists under `prefix`, page by page; the member's error otherwise."""
    gate = asyncio.Semaphore(DELETE_CONCURRENCY)

    async def delete(entry: storage_pb2.ObjectEntry) -> int:
        async with gate:
            try:
                # Unconditional: a delete naming the data id would put back the version it replaced
                # (the undo of a failed commit), i.e. an earlier upload of the same part.
                await member.stub.DeleteObject(storage_pb2.ObjectRequest(
                    bucket=multipart.SYSTEM_BUCKET, key=entry.key, drive=member.drive), timeout=one.timeout)
                return 1
            except grpc.RpcError as exc:
                err = errors.from_rpc_error(exc)
                if isinstance(err, (errors.NoSuchKey, errors.NoSuchBucket)):
                    return 0
                raise err from None
    removed, cursor = 0, ""
    while True:
        try:
            page = await member.stub.ListObjects(storage_pb2.ListObjectsRequest(
                bucket=multipart.SYSTEM_BUCKET, prefix=prefix, start_after=cursor, max_keys=PAGE,
                drive=member.drive), timeout=one.timeout)
        except grpc.RpcError as exc:
            err = errors.from_rpc_error(exc)
            if isinstance(err, errors.NoSuchBucket):
                return removed
            raise err from None
        removed += sum(await asyncio.gather(*(delete(e) for e in page.entries)))
        if not page.truncated or not page.entries:
            return removed
        cursor = page.entries[-1].key


def stale(upload: UploadSummary, older_than_s: float, now_ns: int | None = None) -> bool:
    """Started (and last given a part) more than `older_than_s` ago."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    started = upload.initiated_ns or upload.newest_ns
    return now_ns - max(started, upload.newest_ns) > older_than_s * 1e9


async def expire(store, older_than_s: float, *, bucket: str = "", dry_run: bool = False,
                 now_ns: int | None = None) -> list[UploadSummary]:
    """Removes (unless `dry_run`) every upload older than `older_than_s`; returns them."""
    expired = []
    for one, upload in await summaries(store, bucket):
        if not stale(upload, older_than_s, now_ns):
            continue
        expired.append(upload)
        if not dry_run:
            await remove(one, upload.bucket, upload.upload_id)
            log.info("stale upload %s of %s/%s removed (%d parts, %d bytes)", upload.upload_id, upload.bucket,
                     upload.key or "?", upload.parts, upload.bytes)
    return expired


ENV_UPLOAD_EXPIRY = "SEALSTORE_UPLOAD_EXPIRY"
"""How long an upload may stay neither completed nor aborted before the heal scanner removes it:
a duration (`7d`, `12h`, `30m`, `90s`, or plain seconds); 0 keeps uploads forever. Default 7d."""
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """`7d`, `12h`, `30m`, `45s`, `1w` or plain seconds -> seconds; ValueError otherwise."""
    raw = text.strip().lower()
    unit = _UNITS.get(raw[-1:], None)
    number = raw[:-1] if unit else raw
    value = float(number)
    if not number or value < 0 or value != value or value == float("inf"):
        raise ValueError(f"not a duration: {text!r} (use e.g. 7d, 12h, 30m, 45s or seconds)")
    return value * (unit or 1)


def upload_expiry_from_env(env) -> float:
    raw = env.get(ENV_UPLOAD_EXPIRY)
    return parse_duration(raw) if raw else float(multipart.DEFAULT_UPLOAD_EXPIRY_S)
