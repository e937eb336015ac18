"""Moving shard blocks between a process (the crypto worker, heal) and the storage members of
an erasure set.

`ShardFanout` streams fragment i of every stripe to member i, all members concurrently,
with a small bounded queue per member: a slow member slows the PUT down instead of
growing memory, and a member that fails is dropped (the PUT goes on while at least
write_quorum members remain). `StripeReader` reads the blocks of a stripe range from k
members, replacing a member that fails mid-way with another one holding the same data.
"""
from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

import grpc

from sealstore import errors, frames
from sealstore.erasure import framing, quorum
from sealstore.erasure.client import ErasureSetClient, Member, StoredVersion
from sealstore.erasure.coder import StripeCoder
from sealstore.v1 import storage_pb2

log = logging.getLogger(__name__)

QUEUE_DEPTH = 2
"""Blocks buffered per member (each ~1/k MiB) before the PUT waits for that member. Two keep the
members busy as well as four did, with half the memory per PUT in flight."""

_END = None


class _MemberWriter:
    def __init__(self, store: ErasureSetClient, member: Member, upload_id: str, bucket: str):
        self.store = store
        self.member = member
        self.queue: asyncio.Queue = asyncio.Queue(QUEUE_DEPTH)
        self.error: errors.SealstoreError | None = None
        self.response: storage_pb2.WriteShardResponse | None = None
        self.cancelled = False
        # A PUT's upload id is the data id it commits: the node binds the block checksums to it.
        header = storage_pb2.WriteShardRequest(header=storage_pb2.WriteShardHeader(
            upload_id=upload_id, bucket=bucket, shard_index=member.index, drive=member.drive, data_id=upload_id))
        self.task = asyncio.ensure_future(self._run(header))
        self.task.add_done_callback(self._on_done)

    async def _requests(self, header):
        yield header
        while True:
            block = await self.queue.get()
            if block is _END:
                return
            yield frames.Payload(block)

    async def _run(self, header) -> None:
        try:
            self.response = await self.member.stub.WriteShard(self._requests(header))
        except grpc.RpcError as exc:
            self.error = errors.from_rpc_error(exc)
        except asyncio.CancelledError:
            self.error = errors.ServiceUnavailable("upload cancelled")
            self.cancelled = True
            raise
        except Exception as exc:
            self.error = errors.ServiceUnavailable(f"{type(exc).__name__}")

    def _on_done(self, _task) -> None:
        if isinstance(self.error, errors.ServiceUnavailable) and not self.cancelled:
            self.store.note_member_failure()
        if self.error is not None and not self.cancelled:
            log.warning("shard %d on %s dropped: %s", self.member.index, self.member.address, self.error.message)
        # Unblock a producer waiting on a full queue that nobody will read any more.
        while not self.queue.empty():
            self.queue.get_nowait()

    @property
    def alive(self) -> bool:
        return self.error is None and not (self.task.done() and self.response is None)


class ShardFanout:
    def __init__(self, store: ErasureSetClient, upload_id: str, bucket: str):
        self.store = store
        self.upload_id = upload_id
        self._writers = [_MemberWriter(store, m, upload_id, bucket) for m in store.members]

    def _check_quorum(self) -> list[_MemberWriter]:
        alive = [w for w in self._writers if w.alive]
        if len(alive) < self.store.write_quorum:
            # SlowDown, or the error write_quorum drives agree on (StorageFull when they are full).
            outcomes = [(w.error or errors.ServiceUnavailable("shard stream ended early")) if not w.alive else w
                        for w in self._writers]
            raise quorum.verdict(outcomes, self.store.write_quorum, "upload")
        return alive

    async def send(self, fragments: list[bytes]) -> None:
        """Queues fragment i for member i; waits while a live member's queue is full."""
        for writer in self._check_quorum():
            if writer.alive:
                await writer.queue.put(fragments[writer.member.index])

    async def finish(self) -> list[int]:
        """Ends every shard stream; the members whose shard was stored (>= write_quorum)."""
        for writer in self._check_quorum():
            await writer.queue.put(_END)
        await asyncio.gather(*(w.task for w in self._writers), return_exceptions=True)
        done = [w.member.index for w in self._writers if w.error is None and w.response is not None]
        if len(done) < self.store.write_quorum:
            self._check_quorum()
            raise errors.SlowDown(f"only {len(done)} drives stored their shard")
        return done

    async def abort(self) -> None:
        """Stops every shard stream and drops the temporary shards everywhere (best effort)."""
        for writer in self._writers:
            writer.task.cancel()
        await asyncio.gather(*(w.task for w in self._writers), return_exceptions=True)
        try:
            await self.store.abort_upload(self.upload_id)
        except Exception as exc:  # best effort: storage nodes also drop tmp shards of broken streams
            log.warning("abort of upload %s incomplete: %r", self.upload_id, exc)


class HeldStripe:
    """Stands in for ShardFanout for an object of one stripe at most: keeps the fragments of that
    stripe (or of none, when empty), which the commit then carries to each member, inside its
    metadata (inline) or as its shard file: one call per drive instead of a shard stream plus a
    commit."""

    def __init__(self, store: ErasureSetClient):
        self.store = store
        self.fragments: list[bytes] = []

    async def send(self, fragments: list[bytes]) -> None:
        if self.fragments:
            raise errors.InvalidRequest("a held object has one stripe at most")
        self.fragments = fragments

    async def finish(self) -> list[int]:
        return [m.index for m in self.store.members]

    async def abort(self) -> None:
        pass  # nothing was written anywhere before the commit


class StripeReader:
    """Stripes [first, first+count) of one stored object, decoded from k members' blocks."""

    def __init__(self, store: ErasureSetClient, coder: StripeCoder, version: StoredVersion, holders: list[int],
                 inline_shards: dict[int, bytes] | None = None):
        """`inline_shards`: member -> its framed inline shard of a small object, already fetched
        with the metadata (GetObjectMeta with_inline_shard); those members are read from it,
        with the same checks a drive makes, instead of by a ReadShard call."""
        self.store = store
        self.coder = coder
        self.version = version
        self.inline_shards = inline_shards or {}
        self.bucket, self.key = version.bucket, version.key
        # Lower indexes are data shards: decoding from them needs no arithmetic.
        self._candidates = sorted(holders)
        self.errors: list[errors.SealstoreError] = []
        # Members that answered with a problem of their copy (bad checksum, missing shard,
        # version gone): worth healing. Unreachable members are not listed: nothing to fix there.
        self.bad_members: set[int] = set()

    def _open(self, member: int, first: int, end: int) -> AsyncIterator[bytes]:
        if member in self.inline_shards:
            return _inline_blocks(self.inline_shards[member], self.version.data_id, first, end)
        return self.store.read_shard(member, self.version, first, end - first)

    def _give_up(self, stripe: int) -> errors.SealstoreError:
        tampered = [e for e in self.errors if isinstance(e, errors.ObjectTampered)]
        detail = "; ".join(sorted({f"{type(e).__name__}: {e.message}" for e in self.errors}))
        msg = f"{self.bucket}/{self.key}: stripe {stripe} readable from fewer than {self.coder.data_shards} drives ({detail})"
        return errors.ObjectTampered(msg) if tampered else errors.SlowDown(msg)

    async def stripes(self, first: int, count: int) -> AsyncIterator[bytes]:
        end = first + count
        unused = list(self._candidates)
        active: dict[int, AsyncIterator[bytes]] = {}
        try:
            for stripe in range(first, end):
                got: dict[int, bytes] = {}
                while len(got) < self.coder.data_shards:
                    while len(active) < self.coder.data_shards and unused:
                        member = unused.pop(0)
                        active[member] = self._open(member, stripe, end)
                    pending = [m for m in active if m not in got]
                    if len(active) < self.coder.data_shards:
                        raise self._give_up(stripe)
                    results = await asyncio.gather(*(active[m].__anext__() for m in pending),
                                                   return_exceptions=True)
                    for member, result in zip(pending, results):
                        if isinstance(result, (bytes, bytearray)):
                            got[member] = result
                            continue
                        if isinstance(result, StopAsyncIteration):
                            result = errors.ObjectTampered(f"shard {member} ended before stripe {stripe}")
                        elif not isinstance(result, errors.SealstoreError):
                            if isinstance(result, BaseException) and not isinstance(result, Exception):
                                raise result
                            result = errors.ServiceUnavailable(f"shard {member}: {type(result).__name__}")
                        log.warning("%s/%s: reading shard %d failed, trying another drive: %s",
                                    self.bucket, self.key, member, result.message)
                        self.errors.append(result)
                        if isinstance(result, (errors.ObjectTampered, errors.NoSuchKey)):
                            self.bad_members.add(member)
                        await _close(active.pop(member))
                yield self.coder.decode(list(got.values()))
        finally:
            for it in active.values():
                await _close(it)


async def _inline_blocks(framed: bytes, data_id: str, first: int, end: int) -> AsyncIterator[bytes]:
    """Blocks [first, end) of an inline shard, verified as a drive verifies them (ObjectTampered
    otherwise). An inline object has one stripe at most: a stated count beyond is tampering."""
    reader = framing.InlineShardReader(framed, end, f"{data_id} (inline)")
    try:
        for _, block in reader.read_blocks(first, end - first):
            yield block
    except errors.InvalidRange as err:
        raise errors.ObjectTampered(err.message) from None


async def _close(it) -> None:
    try:
        await it.aclose()
    except Exception:
        pass
