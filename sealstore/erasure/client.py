"""The quorum client of one erasure set: fans calls out to its storage drives over gRPC and
lets the quorum rules (quorum.py) decide what the answers mean.

Member i of the set (a drive of a storage node) always stores shard i. Every call goes to
the members concurrently with a deadline; a member that fails or is unreachable counts as
a failure, never as "not found".

Bucket calls go once to each storage node (the node applies them to all its drives) and the
node's answer counts for each of its members. Construct the client inside the running event
loop: its grpc.aio channels belong to that loop.

Multipart objects and uploads (sealstore/multipart.py, sealstore/erasure/versions.py):
- an upload's record and part objects are ordinary objects of the system bucket `.multipart`,
  written with write_shard + commit_object like any object (a part object's meta has exactly
  one `parts` entry, itself: data_id, stripe_count = erasure.stripe_count; never inline).
  They must live in the erasure set of the object they complete into: take the set with
  `store.set_for_upload(bucket, key)` (bucket and key of the completed object) and make every
  `.multipart` call on that set's client. ErasureSets refuses `.multipart` object calls that
  would route by the system key (list_objects of `.multipart` merges every set and is fine);
- `list_objects(".multipart", prefix, ...)` entries carry `part` (part objects) and `upload`
  (records), read from the drives' listing index;
- `complete_multipart(meta)`: meta.data_id = upload id, meta.parts the parts in order (their
  data ids and stripe counts from the listed `entry.part`); write quorum, undone below it;
- reading a multipart object: one StoredVersion per part, `StoredVersion.of_part(bucket, key,
  part)`, whose data_id is the part's; its stripes are [0, part.stripe_count). With
  `versions.shard_files(meta)` the same loop reads any object (one entry for plain objects):
      for shard in shard_files(meta):
          reader = StripeReader(store, coder, StoredVersion(bucket, key, shard.data_id), holders)
          async for stripe in reader.stripes(0, shard.stripe_count): ...
  (`read_shard(member, StoredVersion(bucket, key, part.data_id), first, count)` for one member);
- `update_object_tags(bucket, key, data_id, tags)`, `update_bucket(bucket, policy_json=, tags=)`.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Iterable, TypeVar

import grpc

from sealstore import errors, frames
from sealstore.config import Topology, set_of
from sealstore.erasure import quorum
from sealstore.erasure.versions import ShardFile, shard_files  # noqa: F401 (part of this module's API)
from sealstore.multipart import SYSTEM_BUCKET
from sealstore.observability import traced_channel
from sealstore.erasure.quorum import failed as _failed
from sealstore.rpc import CHANNEL_OPTIONS, channel_credentials, channel_options
from sealstore.v1 import storage_pb2, storage_pb2_grpc, types_pb2

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0
"""Seconds allowed to one metadata call on one member."""

WRITABLE_CHECK_SECONDS = 1.0
"""How long a bucket that answered a write check with write quorum is taken as writable without
asking again (ensure_writable). Four GetBucket calls per PUT were a third of a small PUT's CPU.
The check only spares a doomed write its work: the drives refuse a missing bucket anyway, and a
commit that misses its quorum is undone (commit_object)."""

# gRPC's default reconnect backoff grows to 120 s: a storage node restarted after a few
# minutes would stay "unavailable" to this client for up to two more. Members are on a LAN;
# retrying the connection every few seconds costs nothing and brings them back at once.
_MEMBER_CHANNEL_OPTIONS = [*CHANNEL_OPTIONS, ("grpc.initial_reconnect_backoff_ms", 250),
                           ("grpc.min_reconnect_backoff_ms", 250), ("grpc.max_reconnect_backoff_ms", 2000)]


def _member_channel(certs: Path, role: str, address: str) -> grpc.aio.Channel:
    """`role`: the caller's instance (or role, for its first instance); the member must prove
    it is a storage node (sealstore.rpc.channel_options)."""
    return traced_channel(grpc.aio.secure_channel(address, channel_credentials(certs, role),
                                                  options=channel_options("storage", _MEMBER_CHANNEL_OPTIONS)))

@dataclass(frozen=True)
class Member:
    """One drive of the erasure set; member i always stores shard i."""

    index: int
    address: str
    drive: int
    stub: storage_pb2_grpc.StorageServiceStub


@dataclass(frozen=True)
class StoredVersion:
    """One stored version of an object: where its shards are (the request's names, never the
    names its metadata holds) and which shard files: `data_id` is the version's data id, or for
    a multipart object the data id of one of its parts (the storage node serves that part's
    shard; the version's own data id names no shard then)."""

    bucket: str
    key: str
    data_id: str

    @classmethod
    def of_part(cls, bucket: str, key: str, part: types_pb2.ObjectPart) -> "StoredVersion":
        """The shards of one part of the multipart object bucket/key (stripes: part.stripe_count)."""
        return cls(bucket, key, part.data_id)


@dataclass(frozen=True)
class EncryptionUpdate:
    """A key rewrap of one version: its new DEK ciphertext and kms key version, written on the
    members holding it (each only if the version is still current there)."""

    bucket: str
    key: str
    data_id: str
    encrypted_dek: bytes
    kms_key_version: int
    members: tuple[int, ...]


@dataclass(frozen=True)
class HealCommit:
    """Commits a healed shard (upload `upload_id`) on one member, only if the member's current
    version is still `expect_data_id` ("" = none, quorum.CORRUPT_COPY = an unreadable copy)."""

    member: int
    upload_id: str
    meta: types_pb2.ObjectMeta
    expect_data_id: str
    inline_block: bytes = b""
    part_uploads: tuple[tuple[str, str], ...] = ()
    """A multipart object: (part data_id, upload id of its rebuilt shard) of each part rebuilt;
    the member keeps its own shard of the others."""


class ErasureSetClient:
    """Quorum reads and writes of bucket and object metadata across one erasure set."""

    def __init__(self, topology: Topology, certs: Path, role: str, *, timeout: float = DEFAULT_TIMEOUT,
                 set_index: int = 0, channels: dict[str, grpc.aio.Channel] | None = None):
        """The client of erasure set `set_index` of the topology. `channels`: a cache shared by the
        clients of several sets (nodes holding drives of several sets), closed by its owner."""
        self.set_index = set_index
        self.data_shards = topology.data_shards
        self.parity_shards = topology.parity_shards
        self.read_quorum = topology.read_quorum
        self.write_quorum = topology.write_quorum
        self.timeout = timeout
        self._owns_channels = channels is None
        self._channels: dict[str, grpc.aio.Channel] = {} if channels is None else channels
        self._stubs: dict[str, storage_pb2_grpc.StorageServiceStub] = {}
        drives = topology.storage_sets[set_index]
        for m in drives:
            if m.address not in self._channels:
                self._channels[m.address] = _member_channel(certs, role, m.address)
            if m.address not in self._stubs:
                stub = storage_pb2_grpc.StorageServiceStub(self._channels[m.address])
                frames.framed_stub(stub, self._channels[m.address], "storage")
                self._stubs[m.address] = stub
        self.members = [Member(i, m.address, m.drive, self._stubs[m.address]) for i, m in enumerate(drives)]
        self._writable: dict[str, float] = {}  # bucket -> when it last passed a write check

    @property
    def sets(self) -> list["ErasureSetClient"]:
        return [self]

    def set_for(self, bucket: str, key: str) -> "ErasureSetClient":
        """The set holding bucket/key: this one (see ErasureSets for several)."""
        return self

    def set_for_upload(self, bucket: str, key: str) -> "ErasureSetClient":
        """The set holding the `.multipart` objects of an upload into bucket/key: this one."""
        return self

    async def close(self) -> None:
        if self._owns_channels:
            await asyncio.gather(*(ch.close() for ch in self._channels.values()), return_exceptions=True)

    # ---- fan-out -------------------------------------------------------------------------

    async def _guard(self, call: Awaitable[T], where: str) -> T | errors.SealstoreError:
        try:
            return await call
        except grpc.RpcError as exc:
            err = errors.from_rpc_error(exc)
        except errors.SealstoreError as exc:
            err = exc
        except asyncio.TimeoutError:
            err = errors.ServiceUnavailable(f"{where} did not answer in time")
        except Exception as exc:  # a broken member must not break the quorum decision
            log.warning("call to %s failed: %r", where, exc)
            err = errors.ServiceUnavailable(f"{where} failed: {type(exc).__name__}")
        if isinstance(err, errors.ServiceUnavailable):
            self.note_member_failure()
        return err

    def note_member_failure(self) -> None:
        """A member did not answer: the next ensure_writable asks every member again."""
        self._writable.clear()

    async def _each_member(self, fn: Callable[[Member], Awaitable[T]],
                           members: list[Member] | None = None) -> list:
        members = self.members if members is None else members
        return list(await asyncio.gather(*(self._guard(fn(m), m.address) for m in members)))

    async def _each_node(self, fn: Callable[[storage_pb2_grpc.StorageServiceStub], Awaitable[T]]) -> list:
        """Calls `fn` once per storage node; returns one outcome per member."""
        addresses = list(self._stubs)
        results = await asyncio.gather(*(self._guard(fn(self._stubs[a]), a) for a in addresses))
        by_address = dict(zip(addresses, results))
        return [by_address[m.address] for m in self.members]

    # ---- buckets -------------------------------------------------------------------------

    async def make_bucket(self, bucket: str) -> types_pb2.BucketInfo:
        request = storage_pb2.MakeBucketRequest(bucket=bucket, created_ns=time.time_ns())
        outcomes = await self._each_node(lambda s: s.MakeBucket(request, timeout=self.timeout))
        decided = quorum.make_bucket_verdict(outcomes, self.write_quorum)
        if isinstance(decided, errors.SealstoreError):
            raise decided
        if decided is not None:
            return decided
        if quorum.succeeded(outcomes):  # undo where we created it, so a failed create leaves no bucket on a minority
            undo = storage_pb2.BucketRequest(bucket=bucket)
            await asyncio.gather(*(self._guard(self._stubs[a].DeleteBucket(undo, timeout=self.timeout), a)
                                   for a in self._addresses_where_ok(outcomes)))
        raise quorum.verdict(outcomes, self.write_quorum, f"make bucket {bucket}")

    async def get_bucket(self, bucket: str, *, for_write: bool = False) -> types_pb2.BucketInfo:
        """The bucket's info (read quorum). `for_write`: also SlowDown unless write_quorum
        members answer, so a write that cannot reach quorum fails before it touches any drive
        (an inline object's commit would otherwise replace, then undo, the previous version on
        the few members it reached)."""
        request = storage_pb2.BucketRequest(bucket=bucket)
        outcomes = await self._each_node(lambda s: s.GetBucket(request, timeout=self.timeout))
        found = [o for o in outcomes if not _failed(o)]
        if len(found) >= self.read_quorum:
            if for_write and len(found) < self.write_quorum:
                raise quorum.verdict(outcomes, self.write_quorum, f"write to bucket {bucket}")
            return quorum.majority(found)
        raise quorum.verdict(outcomes, self.read_quorum, f"get bucket {bucket}")

    async def ensure_writable(self, bucket: str) -> None:
        """get_bucket(for_write=True), answered from a check less than WRITABLE_CHECK_SECONDS old
        when no member has failed to answer since (note_member_failure). A bucket deleted
        meanwhile still fails the write: every drive refuses NoSuchBucket."""
        now = time.monotonic()
        seen = self._writable.get(bucket)
        if seen is not None and now - seen < WRITABLE_CHECK_SECONDS:
            return
        self._writable.pop(bucket, None)
        await self.get_bucket(bucket, for_write=True)
        if len(self._writable) >= 1024:
            self._writable.clear()
        self._writable[bucket] = now

    def forget_writable(self, bucket: str) -> None:
        """The next ensure_writable of `bucket` asks the members again (a write to it failed)."""
        self._writable.pop(bucket, None)

    async def list_buckets(self, *, include_system: bool = False) -> list[types_pb2.BucketInfo]:
        """The S3 buckets; `include_system`: the system bucket `.multipart` too (healing)."""
        request = storage_pb2.ListBucketsRequest(include_system=include_system)
        outcomes = await self._each_node(lambda s: s.ListBuckets(request, timeout=self.timeout))
        answers = [o for o in outcomes if not _failed(o)]
        if len(answers) < self.read_quorum:
            raise quorum.verdict(outcomes, self.read_quorum, "list buckets")
        return quorum.merged_buckets(answers, self.read_quorum)

    async def delete_bucket(self, bucket: str) -> None:
        # Read the bucket first: if some node refuses (not empty) or the delete misses quorum,
        # the bucket is put back, with its creation time and encryption, where it was removed.
        info = await self.get_bucket(bucket)
        request = storage_pb2.BucketRequest(bucket=bucket)
        outcomes = await self._each_node(lambda s: s.DeleteBucket(request, timeout=self.timeout))
        if quorum.bucket_deleted(outcomes, self.write_quorum):
            return
        if quorum.succeeded(outcomes):
            await self._restore_bucket(info, self._addresses_where_ok(outcomes))
        if quorum.count(outcomes, errors.BucketNotEmpty):
            raise quorum.first_of(outcomes, errors.BucketNotEmpty)
        raise quorum.verdict(outcomes, self.write_quorum, f"delete bucket {bucket}")

    def _addresses_where_ok(self, outcomes: list) -> list[str]:
        return list(dict.fromkeys(m.address for m, o in zip(self.members, outcomes) if not _failed(o)))

    async def _restore_bucket(self, info: types_pb2.BucketInfo, addresses: list[str]) -> None:
        # With its whole configuration (encryption, policy, tags) in the one call.
        make = storage_pb2.MakeBucketRequest(bucket=info.name, created_ns=info.created_ns, info=info)
        await asyncio.gather(*(self._guard(self._stubs[a].MakeBucket(make, timeout=self.timeout), a)
                               for a in addresses))

    async def set_bucket_encryption(self, bucket: str,
                                    enc: types_pb2.BucketEncryption | None) -> types_pb2.BucketInfo:
        request = storage_pb2.SetBucketEncryptionRequest(
            bucket=bucket, encryption=enc or types_pb2.BucketEncryption())
        outcomes = await self._each_node(lambda s: s.SetBucketEncryption(request, timeout=self.timeout))
        done = [o for o in outcomes if not _failed(o)]
        if len(done) >= self.write_quorum:
            return done[0]
        raise quorum.verdict(outcomes, self.write_quorum, f"set encryption of bucket {bucket}")

    async def update_bucket(self, bucket: str, *, policy_json: str | None = None,
                            tags: dict[str, str] | None = None) -> types_pb2.BucketInfo:
        """Replaces the bucket policy (policy_json; "" deletes it) and/or the bucket tags ({}
        deletes them); None leaves that one unchanged. Write quorum of nodes."""
        request = storage_pb2.UpdateBucketRequest(bucket=bucket, set_policy=policy_json is not None,
                                                  policy_json=policy_json or "", set_tags=tags is not None,
                                                  tags=tags or {})
        outcomes = await self._each_node(lambda s: s.UpdateBucket(request, timeout=self.timeout))
        done = [o for o in outcomes if not _failed(o)]
        if len(done) >= self.write_quorum:
            return done[0]
        raise quorum.verdict(outcomes, self.write_quorum, f"update bucket {bucket}")

    # ---- object metadata -----------------------------------------------------------------

    async def _meta_outcomes(self, bucket: str, key: str, with_inline_shard: bool = False) -> list:
        def call(m: Member):
            # Shards only from the data members: a read decodes from them first, and each of the
            # others would send a one-stripe object's shard (up to 1/k of it) for nothing.
            return m.stub.GetObjectMeta(storage_pb2.ObjectRequest(
                bucket=bucket, key=key, drive=m.drive,
                with_inline_shard=with_inline_shard and m.index < self.data_shards), timeout=self.timeout)
        outcomes = await self._each_member(call)
        metas = [o if isinstance(o, types_pb2.ObjectMeta) else None for o in outcomes]
        outcomes = quorum.without_foreign_copies(outcomes, metas, bucket, key)
        missing = quorum.bucket_missing(outcomes, self.read_quorum)
        if missing is not None:
            raise missing
        return outcomes

    async def meta_outcomes(self, bucket: str, key: str, *, with_inline_shard: bool = False) -> list:
        """One entry per member: its ObjectMeta or its typed error (NoSuchKey: it answered, without
        a copy; ServiceUnavailable: it did not answer). `with_inline_shard`: the data members'
        answers carry their framed shard of a one-stripe object (`inline_shard`; inline or from
        its shard file), for a read that needs it."""
        return await self._meta_outcomes(bucket, key, with_inline_shard)

    async def get_object_metas(self, bucket: str, key: str) -> list[types_pb2.ObjectMeta | None]:
        """One entry per member: its copy of the metadata, or None (no copy, or unreachable)."""
        return [None if _failed(o) else o for o in await self._meta_outcomes(bucket, key)]

    async def get_object_meta(self, bucket: str, key: str) -> types_pb2.ObjectMeta:
        outcomes = await self._meta_outcomes(bucket, key)
        chosen = self.quorum_version([None if _failed(o) else o for o in outcomes])
        if chosen is not None:
            return chosen
        raise quorum.no_version_verdict(outcomes, self.read_quorum, f"read metadata of {bucket}/{key}")

    def quorum_version(self, metas: list[types_pb2.ObjectMeta | None]) -> types_pb2.ObjectMeta | None:
        """Of per-member copies, the version (data_id) at least read_quorum agree on; newest mtime wins."""
        return quorum.quorum_version(metas, self.read_quorum)

    async def delete_object(self, bucket: str, key: str) -> None:
        def call(m: Member):
            return m.stub.DeleteObject(storage_pb2.ObjectRequest(bucket=bucket, key=key, drive=m.drive),
                                       timeout=self.timeout)
        outcomes = await self._each_member(call)
        if quorum.reached(outcomes, self.write_quorum):
            return
        raise quorum.verdict(outcomes, self.write_quorum, f"delete {bucket}/{key}")

    async def list_objects(self, bucket: str, prefix: str, start_after: str,
                           max_keys: int) -> tuple[list[storage_pb2.ObjectEntry], bool]:
        """Entries that >= read_quorum members list with the same data_id, in key order.

        Each member lists at most max_keys + 1 keys (one more than the page, so that a listing
        on which the members agree is decided in one round, truncated or not), so when a
        member's page is truncated its view beyond its last key is unknown: only keys up to the
        smallest such "horizon" are decided, and the listing continues from there until max_keys
        entries are decided.
        """
        if max_keys <= 0:
            return [], False
        result: list[storage_pb2.ObjectEntry] = []
        cursor = start_after
        while True:
            def call(m: Member, cursor=cursor):
                return m.stub.ListObjects(storage_pb2.ListObjectsRequest(
                    bucket=bucket, prefix=prefix, start_after=cursor, max_keys=max_keys + 1, drive=m.drive),
                    timeout=self.timeout)
            outcomes = await self._each_member(call)
            pages = [o for o in outcomes if not _failed(o)]
            if len(pages) < self.read_quorum:
                raise quorum.verdict(outcomes, self.read_quorum, f"list {bucket}")
            entries, horizon = quorum.agreed_entries(pages, self.read_quorum)
            result.extend(entries)
            if len(result) > max_keys:
                return result[:max_keys], True
            if horizon is None:
                return result, False
            cursor = horizon

    # ---- uploads -------------------------------------------------------------------------

    async def write_shard(self, member: int, upload_id: str, bucket: str,
                          blocks: AsyncIterator[bytes] | Iterable[bytes],
                          timeout: float | None = None, data_id: str = "") -> storage_pb2.WriteShardResponse:
        """Streams `blocks` (one per stripe, in order) as shard `member` of an upload, to be
        committed as `data_id`, to which the node binds its block checksums (healing names the
        version or part it rebuilds; empty: not bound).

        Raises the member's typed error; a convenience for callers that do not drive the
        WriteShard stream themselves.
        """
        m = self.members[member]
        source_error: list[BaseException] = []

        async def requests():
            try:
                yield storage_pb2.WriteShardRequest(header=storage_pb2.WriteShardHeader(
                    upload_id=upload_id, bucket=bucket, shard_index=m.index, drive=m.drive,
                    data_id=data_id))
                if hasattr(blocks, "__aiter__"):
                    async for block in blocks:
                        yield frames.Payload(block)
                else:
                    for block in blocks:
                        yield frames.Payload(block)
            except Exception as exc:
                source_error.append(exc)
                raise
        try:
            return await m.stub.WriteShard(requests(), timeout=timeout)
        except grpc.RpcError as exc:
            raise errors.from_rpc_error(exc) from None
        except asyncio.CancelledError:
            # grpc.aio cancels the call when the request iterator fails; surface that failure
            # instead, unless this task itself is being cancelled.
            task = asyncio.current_task()
            if source_error and not (task and task.cancelling()):
                raise source_error[0]
            raise

    async def read_shard(self, member: int, version: StoredVersion, first_block: int, block_count: int,
                         timeout: float | None = None) -> AsyncIterator[bytes]:
        """Yields the verified blocks [first_block, first_block + block_count) of shard `member`
        of `version`; raises the member's typed error (ObjectTampered when a block fails its
        checksum)."""
        m = self.members[member]
        call = m.stub.ReadShard(storage_pb2.ReadShardRequest(
            bucket=version.bucket, key=version.key, data_id=version.data_id, first_block=first_block,
            block_count=block_count, drive=m.drive), timeout=timeout)
        try:
            async for block in call:
                yield block.block
        except grpc.RpcError as exc:
            raise errors.from_rpc_error(exc) from None
        finally:
            call.cancel()

    async def commit_object(self, upload_id: str, meta: types_pb2.ObjectMeta, members: list[int],
                            inline_blocks: list[bytes] | None = None,
                            shard_blocks: list[bytes] | None = None) -> None:
        """Commits the upload on `members` (each gets meta with shard_index = its index).

        With meta.inline, member i's shard is inline_blocks[i] (empty list: an empty object),
        written with the metadata in one go; nothing was uploaded before. `shard_blocks`: a
        one-stripe object's shards, member i's written as its shard file within the commit
        (nothing uploaded before either).

        Below write_quorum, undoes best effort: deletes the key on the members that committed,
        so the failed PUT never becomes visible, and drops the temporary shards elsewhere, then
        raises SlowDown. The undo names the failed version's data_id, so a newer PUT is never
        deleted. A previous version survives on the members that did not commit (still
        readable if they are >= read_quorum); its copies on the committed members are gone
        until healing rebuilds them.
        """
        targets = [self.members[i] for i in members]

        def call(m: Member):
            copy = types_pb2.ObjectMeta()
            copy.CopyFrom(meta)
            copy.shard_index = m.index
            request = storage_pb2.CommitObjectRequest(
                upload_id=upload_id, meta=copy, drive=m.drive,
                inline_block=inline_blocks[m.index] if inline_blocks else b"")
            if shard_blocks:
                request = frames.WithBlock(request, storage_pb2.CommitObjectRequest.SHARD_BLOCK_FIELD_NUMBER,
                                           shard_blocks[m.index])
            return m.stub.CommitObject(request, timeout=self.timeout)
        outcomes = await self._each_member(call, targets)
        committed = [m for m, o in zip(targets, outcomes) if not _failed(o)]
        if len(committed) >= self.write_quorum:
            return
        log.warning("commit of %s/%s (upload %s) reached %d of %d drives; undoing",
                    meta.bucket, meta.key, upload_id, len(committed), self.write_quorum)

        def undo(m: Member):
            return m.stub.DeleteObject(storage_pb2.ObjectRequest(bucket=meta.bucket, key=meta.key, drive=m.drive,
                                                                data_id=upload_id), timeout=self.timeout)
        await self._each_member(undo, committed)
        await self.abort_upload(upload_id)
        raise quorum.commit_failure(outcomes, len(committed), len(self.members), self.write_quorum,
                                    f"commit {meta.bucket}/{meta.key}")

    async def complete_multipart(self, meta: types_pb2.ObjectMeta, members: list[int] | None = None) -> None:
        """Completes an upload: `meta` is the object's metadata (data_id = the upload id, parts in
        order, each with the data id and stripe count of its part object as listed), sent to
        `members` (None: all; each gets shard_index = its index). Each member moves its part
        shards into the object, commits it (the replaced version kept for an undo) and removes
        the upload's record and part objects.

        InvalidPart when members hold another data id for a part (nothing moved there).
        Below write_quorum the completion is undone where it happened (conditional delete of
        meta.data_id, which puts the replaced version back; a newer PUT is never deleted) and
        the error raised (SlowDown, StorageFull, InvalidPart); the parts then survive only on
        the members that did not complete."""
        targets = self.members if members is None else [self.members[i] for i in members]
        # Moving thousands of part shards and removing their objects takes longer than a metadata call.
        timeout = self.timeout + 0.005 * len(meta.parts)

        def call(m: Member):
            copy = types_pb2.ObjectMeta()
            copy.CopyFrom(meta)
            copy.shard_index = m.index
            return m.stub.CompleteMultipart(storage_pb2.CompleteMultipartRequest(
                meta=copy, drive=m.drive, upload_id=meta.data_id), timeout=timeout)
        outcomes = await self._each_member(call, targets)
        committed = [m for m, o in zip(targets, outcomes) if not _failed(o)]
        if len(committed) >= self.write_quorum:
            return
        if committed:
            log.warning("completion of %s/%s (upload %s) reached %d of %d drives; undoing",
                        meta.bucket, meta.key, meta.data_id, len(committed), self.write_quorum)

            def undo(m: Member):
                return m.stub.DeleteObject(storage_pb2.ObjectRequest(
                    bucket=meta.bucket, key=meta.key, drive=m.drive, data_id=meta.data_id), timeout=self.timeout)
            await self._each_member(undo, committed)
        if quorum.count(outcomes, errors.InvalidPart):
            raise quorum.first_of(outcomes, errors.InvalidPart)
        if not committed:
            raise quorum.verdict(outcomes, self.write_quorum, f"complete {meta.bucket}/{meta.key}")
        raise quorum.commit_failure(outcomes, len(committed), len(targets), self.write_quorum,
                                    f"complete {meta.bucket}/{meta.key}")

    async def update_object_tags(self, bucket: str, key: str, data_id: str, tags: dict[str, str]) -> None:
        """Replaces the tags of version `data_id` on every member holding it as current. Below
        write_quorum: PreconditionFailed when the object changed meanwhile on enough members
        (NoSuchKey when it is gone), else SlowDown."""
        def call(m: Member):
            return m.stub.UpdateObjectTags(storage_pb2.UpdateObjectTagsRequest(
                bucket=bucket, key=key, drive=m.drive, expect_data_id=data_id, tags=tags), timeout=self.timeout)
        outcomes = await self._each_member(call)
        if quorum.reached(outcomes, self.write_quorum):
            return
        raise quorum.verdict(outcomes, self.write_quorum, f"tag {bucket}/{key}")

    async def heal_commit(self, commit: HealCommit) -> None:
        """Commits a healed shard on one member, only if its current version is still the one the
        heal saw: a concurrent PUT or DELETE wins over the heal (PreconditionFailed)."""
        m = self.members[commit.member]
        copy = types_pb2.ObjectMeta()
        copy.CopyFrom(commit.meta)
        copy.shard_index = m.index
        try:
            await m.stub.CommitObject(storage_pb2.CommitObjectRequest(
                upload_id=commit.upload_id, meta=copy, drive=m.drive, conditional=True,
                expect_data_id=commit.expect_data_id, inline_block=commit.inline_block,
                part_uploads=dict(commit.part_uploads)),
                timeout=self.timeout)
        except grpc.RpcError as exc:
            raise errors.from_rpc_error(exc) from None

    async def update_object_encryption(self, update: EncryptionUpdate) -> None:
        """Key rewrap: replaces the encrypted DEK of the version on the members holding it, each
        only if still current there. Below write_quorum: PreconditionFailed when the object
        changed meanwhile on enough members, else SlowDown. No undo is needed: old and new
        ciphertexts wrap the same DEK, so every copy stays readable either way."""
        def call(m: Member):
            return m.stub.UpdateObjectEncryption(storage_pb2.UpdateObjectEncryptionRequest(
                bucket=update.bucket, key=update.key, drive=m.drive, expect_data_id=update.data_id,
                encrypted_dek=update.encrypted_dek, kms_key_version=update.kms_key_version), timeout=self.timeout)
        outcomes = await self._each_member(call, [self.members[i] for i in update.members])
        if quorum.reached(outcomes, self.write_quorum):
            return
        raise quorum.verdict(outcomes, self.write_quorum, f"rewrap {update.bucket}/{update.key}")

    async def check_shards(self, bucket: str, key: str, deep: bool) -> list:
        """Each member's CheckShardResponse for the object, or its error (unreachable, refused,
        or ForeignCopy for a copy naming another object: healing neither trusts nor reads it,
        and replaces it)."""
        def call(m: Member):
            return m.stub.CheckShard(storage_pb2.CheckShardRequest(bucket=bucket, key=key, drive=m.drive, deep=deep),
                                     timeout=None if deep else self.timeout)
        outcomes = await self._each_member(call)
        # NO_META and META_CORRUPT answers carry no meta (an empty one would look foreign).
        metas = [o.meta if not _failed(o) and o.HasField("meta") else None for o in outcomes]
        return quorum.without_foreign_copies(outcomes, metas, bucket, key)

    async def member_keys(self, member: int, bucket: str) -> list[storage_pb2.ObjectEntry]:
        """Every object one member lists in the bucket (all pages); raises the member's error."""
        m = self.members[member]
        entries: list[storage_pb2.ObjectEntry] = []
        cursor = ""
        while True:
            try:
                page = await m.stub.ListObjects(storage_pb2.ListObjectsRequest(
                    bucket=bucket, start_after=cursor, max_keys=1000, drive=m.drive), timeout=self.timeout)
            except grpc.RpcError as exc:
                raise errors.from_rpc_error(exc) from None
            entries.extend(page.entries)
            if not page.truncated or not page.entries:
                return entries
            cursor = page.entries[-1].key

    async def make_bucket_on(self, address: str, info: types_pb2.BucketInfo) -> bool:
        """Heals a bucket on one node (its drives that lack it, with the quorum's configuration:
        encryption, policy, tags); True if any drive got it."""
        stub = self._stubs[address]
        made = await self._guard(stub.MakeBucket(storage_pb2.MakeBucketRequest(
            bucket=info.name, created_ns=info.created_ns, info=info), timeout=self.timeout), address)
        return not _failed(made)

    async def delete_version(self, member: int, version: StoredVersion) -> None:
        """Removes one member's copy of `version` (a dangling leftover), if still current there."""
        m = self.members[member]
        try:
            await m.stub.DeleteObject(storage_pb2.ObjectRequest(bucket=version.bucket, key=version.key, drive=m.drive,
                                                                data_id=version.data_id), timeout=self.timeout)
        except grpc.RpcError as exc:
            raise errors.from_rpc_error(exc) from None

    async def abort_upload(self, upload_id: str) -> None:
        def call(m: Member):
            return m.stub.AbortUpload(storage_pb2.AbortUploadRequest(upload_id=upload_id, drive=m.drive),
                                      timeout=self.timeout)
        await self._each_member(call)

    async def node_status(self) -> list[storage_pb2.NodeStatusResponse | errors.SealstoreError]:
        """Each storage node's status (or its error), in address order."""
        return await asyncio.gather(*(self._guard(s.NodeStatus(types_pb2.Empty(), timeout=self.timeout), a)
                                      for a, s in self._stubs.items()))


class ErasureSets:
    """Several erasure sets: each object lives in the one set `config.set_of` names; bucket
    metadata lives on every drive of every set.

    Object calls go to the object's set (its ErasureSetClient, quorum of that set). Bucket calls
    go to every set, each deciding by its own quorum; a bucket exists when every set has it.
    Listings merge the sets' listings in key order (each key is in one set only). A cluster of
    one set is served by a plain ErasureSetClient (`connect` picks).
    """

    def __init__(self, topology: Topology, certs: Path, role: str, *, timeout: float = DEFAULT_TIMEOUT,
                 channels: dict[str, grpc.aio.Channel] | None = None):
        """`channels`: address -> channel to use instead of dialling (in-process tests give theirs)."""
        self._channels: dict[str, grpc.aio.Channel] = {} if channels is None else channels
        self.sets = [ErasureSetClient(topology, certs, role, timeout=timeout, set_index=i, channels=self._channels)
                     for i in range(len(topology.storage_sets))]
        self.deployment_id = topology.deployment_id
        first = self.sets[0]
        self.data_shards, self.parity_shards = first.data_shards, first.parity_shards
        self.read_quorum, self.write_quorum = first.read_quorum, first.write_quorum

    def set_for(self, bucket: str, key: str) -> ErasureSetClient:
        if bucket == SYSTEM_BUCKET:
            # A system key does not name the completed object, whose set the upload must share.
            raise errors.InvalidArgument("objects of .multipart live in their upload's set: use set_for_upload")
        return self.sets[set_of(bucket, key, len(self.sets), self.deployment_id)]

    def set_for_upload(self, bucket: str, key: str) -> ErasureSetClient:
        """The set holding the `.multipart` objects (record, parts) of an upload into bucket/key:
        the set of that object, since CompleteMultipart moves the part shards into it."""
        return self.set_for(bucket, key)

    async def close(self) -> None:
        await asyncio.gather(*(ch.close() for ch in self._channels.values()), return_exceptions=True)

    async def _each_set(self, fn: Callable[[ErasureSetClient], Awaitable[T]]) -> list:
        async def guarded(s: ErasureSetClient):
            try:
                return await fn(s)
            except errors.SealstoreError as exc:
                return exc
        return list(await asyncio.gather(*(guarded(s) for s in self.sets)))

    # ---- buckets: every set --------------------------------------------------------------

    async def make_bucket(self, bucket: str) -> types_pb2.BucketInfo:
        outcomes = await self._each_set(lambda s: s.make_bucket(bucket))
        made = [o for o in outcomes if not _failed(o)]
        existing = quorum.count(outcomes, errors.BucketAlreadyOwnedByYou)
        if not made and existing == len(outcomes):
            raise outcomes[0]
        # A set that already had it (an earlier create that failed half way, or a node holding
        # drives of two sets, which answered the other set's call first) counts as done.
        if made and len(made) + existing == len(outcomes):
            return made[0]
        for s, o in zip(self.sets, outcomes):  # undo: a failed create leaves no bucket behind
            if not _failed(o):
                await self._guarded_delete_bucket(s, bucket)
        raise next(o for o in outcomes if _failed(o) and not isinstance(o, errors.BucketAlreadyOwnedByYou))

    async def _guarded_delete_bucket(self, s: ErasureSetClient, bucket: str) -> None:
        try:
            await s.delete_bucket(bucket)
        except errors.SealstoreError as exc:
            log.warning("undoing bucket %s on set %d failed: %s", bucket, s.set_index, exc.message)

    async def get_bucket(self, bucket: str, *, for_write: bool = False) -> types_pb2.BucketInfo:
        """The bucket's info when no set says it is missing and at least one set reaches its
        quorum: a set below quorum must not make the objects of the other sets unreachable (an
        object call to that set fails by its own quorum anyway)."""
        outcomes = await self._each_set(lambda s: s.get_bucket(bucket, for_write=for_write))
        missing = [o for o in outcomes if isinstance(o, errors.NoSuchBucket)]
        found = [o for o in outcomes if not _failed(o)]
        if missing or not found:
            raise (missing or outcomes)[0]
        return quorum.majority(found)

    async def list_buckets(self, *, include_system: bool = False) -> list[types_pb2.BucketInfo]:
        """The buckets every set that answered has (as get_bucket, a set below quorum is skipped)."""
        outcomes = await self._each_set(lambda s: s.list_buckets(include_system=include_system))
        answers = [o for o in outcomes if not _failed(o)]
        if not answers:
            raise outcomes[0]
        names = set.intersection(*({b.name for b in o} for o in answers))
        return [b for b in answers[0] if b.name in names]

    async def delete_bucket(self, bucket: str) -> None:
        info = await self.get_bucket(bucket)
        # Refuse before removing anything when any set still holds an object (a set's own
        # delete would only see its own objects, and the others would have to be restored).
        pages = await self._each_set(lambda s: s.list_objects(bucket, "", "", 1))
        for page in pages:
            if _failed(page):
                raise page
            if page[0]:
                raise errors.BucketNotEmpty(f"bucket {bucket} is not empty")
        outcomes = await self._each_set(lambda s: s.delete_bucket(bucket))
        deleted = [s for s, o in zip(self.sets, outcomes) if not _failed(o)]
        gone = quorum.count(outcomes, errors.NoSuchBucket)  # a node of two sets removed it for both
        if deleted and len(deleted) + gone == len(outcomes):
            return
        for s in deleted:  # put it back where it was removed
            await s._restore_bucket(info, list(s._stubs))
        raise next(o for o in outcomes if _failed(o) and not isinstance(o, errors.NoSuchBucket))

    async def set_bucket_encryption(self, bucket: str,
                                    enc: types_pb2.BucketEncryption | None) -> types_pb2.BucketInfo:
        outcomes = await self._each_set(lambda s: s.set_bucket_encryption(bucket, enc))
        for o in outcomes:
            if _failed(o):
                raise o
        return outcomes[0]

    async def update_bucket(self, bucket: str, *, policy_json: str | None = None,
                            tags: dict[str, str] | None = None) -> types_pb2.BucketInfo:
        outcomes = await self._each_set(lambda s: s.update_bucket(bucket, policy_json=policy_json, tags=tags))
        for o in outcomes:
            if _failed(o):
                raise o
        return outcomes[0]

    # ---- objects: the object's set -------------------------------------------------------

    async def get_object_meta(self, bucket: str, key: str) -> types_pb2.ObjectMeta:
        return await self.set_for(bucket, key).get_object_meta(bucket, key)

    async def delete_object(self, bucket: str, key: str) -> None:
        await self.set_for(bucket, key).delete_object(bucket, key)

    async def get_object_metas(self, bucket: str, key: str) -> list[types_pb2.ObjectMeta | None]:
        """One entry per member of the object's set (indexes are that set's members)."""
        return await self.set_for(bucket, key).get_object_metas(bucket, key)

    async def meta_outcomes(self, bucket: str, key: str, *, with_inline_shard: bool = False) -> list:
        return await self.set_for(bucket, key).meta_outcomes(bucket, key, with_inline_shard=with_inline_shard)

    def quorum_version(self, metas: list[types_pb2.ObjectMeta | None]) -> types_pb2.ObjectMeta | None:
        # Every set has the same size and quorum: any set decides alike.
        return self.sets[0].quorum_version(metas)

    async def list_objects(self, bucket: str, prefix: str, start_after: str,
                           max_keys: int) -> tuple[list[storage_pb2.ObjectEntry], bool]:
        """Each set's first max_keys entries after start_after, merged in key order: the first
        max_keys of the merge are exactly the cluster's (every key lives in one set)."""
        if max_keys <= 0:
            return [], False
        pages = await self._each_set(lambda s: s.list_objects(bucket, prefix, start_after, max_keys))
        for page in pages:
            if _failed(page):
                raise page
        return quorum.merged_set_pages(pages, max_keys)

    async def update_object_encryption(self, update: EncryptionUpdate) -> None:
        await self.set_for(update.bucket, update.key).update_object_encryption(update)

    async def complete_multipart(self, meta: types_pb2.ObjectMeta, members: list[int] | None = None) -> None:
        """In the completed object's set, which holds the upload (set_for_upload)."""
        await self.set_for(meta.bucket, meta.key).complete_multipart(meta, members)

    async def update_object_tags(self, bucket: str, key: str, data_id: str, tags: dict[str, str]) -> None:
        await self.set_for(bucket, key).update_object_tags(bucket, key, data_id, tags)

    async def node_status(self) -> list[storage_pb2.NodeStatusResponse | errors.SealstoreError]:
        """Each storage node's status (or its error), in address order over all sets."""
        stubs = {a: st for s in self.sets for a, st in s._stubs.items()}
        return await asyncio.gather(*(self.sets[0]._guard(st.NodeStatus(types_pb2.Empty(), timeout=self.sets[0].timeout), a)
                                      for a, st in stubs.items()))


def connect(topology: Topology, certs: Path, role: str, *,
            timeout: float = DEFAULT_TIMEOUT) -> "ErasureSetClient | ErasureSets":
    """The quorum client for the whole cluster: one set's client, or the router over several."""
    if len(topology.storage_sets) == 1:
        return ErasureSetClient(topology, certs, role, timeout=timeout)
    return ErasureSets(topology, certs, role, timeout=timeout)
