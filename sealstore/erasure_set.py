"""The quorum client of one erasure set: fans calls out to its storage drives and decides.

Member i of the set (a drive of a storage node) always stores shard i. Every call goes to
the members concurrently with a deadline; a member that fails or is unreachable counts as
a failure, never as "not found". Rules, as MinIO's:

- read_quorum = data shards: a read is answered when that many members agree;
- write_quorum = data shards (+1 when data == parity, so two halves can never both win);
- an outcome that reaches neither success nor a definite error at quorum is `SlowDown` (503).

Bucket calls go once to each storage node (the node applies them to all its drives) and the
node's answer counts for each of its members. Construct the client inside the running event
loop: its grpc.aio channels belong to that loop.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Iterable, TypeVar

import grpc

from sealstore import errors
from sealstore.config import Topology, set_of
from sealstore.rpc import CHANNEL_OPTIONS, channel_credentials, channel_options
from sealstore.v1 import storage_pb2, storage_pb2_grpc, types_pb2

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0
"""Seconds allowed to one metadata call on one member."""

# gRPC's default reconnect backoff grows to 120 s: a storage node restarted after a few
# minutes would stay "unavailable" to this client for up to two more. Members are on a LAN;
# retrying the connection every few seconds costs nothing and brings them back at once.
_MEMBER_CHANNEL_OPTIONS = [*CHANNEL_OPTIONS, ("grpc.initial_reconnect_backoff_ms", 250),
                           ("grpc.min_reconnect_backoff_ms", 250), ("grpc.max_reconnect_backoff_ms", 2000)]


def _member_channel(certs: Path, role: str, address: str) -> grpc.aio.Channel:
    """`role`: the caller's instance (or role, for its first instance); the member must prove
    it is a storage node (sealstore.rpc.channel_options)."""
    return grpc.aio.secure_channel(address, channel_credentials(certs, role),
                                   options=channel_options("storage", _MEMBER_CHANNEL_OPTIONS))

# Errors that say "this member could not answer" rather than anything about the data.
_AVAILABILITY_ERRORS = (errors.ServiceUnavailable, errors.SlowDown)


@dataclass(frozen=True)
class Member:
    """One drive of the erasure set; member i always stores shard i."""

    index: int
    address: str
    drive: int
    stub: storage_pb2_grpc.StorageServiceStub


def _failed(outcome) -> bool:
    return isinstance(outcome, BaseException)


def _count(outcomes: Iterable, cls: type) -> int:
    return sum(1 for o in outcomes if isinstance(o, cls))


def _verdict(outcomes: list, quorum: int, what: str) -> errors.SealstoreError:
    """The error to raise when fewer than `quorum` members succeeded.

    A definite error (e.g. NoSuchBucket) wins if `quorum` members gave it; a rejected argument
    (InvalidBucketName, ...) wins when no member succeeded, since every member would reject it;
    else SlowDown.
    """
    if not any(not _failed(o) for o in outcomes):
        invalid = [o for o in outcomes if _failed(o) and o.grpc_status == grpc.StatusCode.INVALID_ARGUMENT]
        if invalid:
            return invalid[0]
    by_type: collections.Counter = collections.Counter(
        type(o) for o in outcomes if _failed(o) and not isinstance(o, _AVAILABILITY_ERRORS))
    for cls, n in by_type.most_common():
        if n >= quorum and cls is not errors.SealstoreError:
            return next(o for o in outcomes if type(o) is cls)
    ok = sum(1 for o in outcomes if not _failed(o))
    reasons = "; ".join(sorted({f"{type(o).__name__}: {o.message}" for o in outcomes if _failed(o)}))
    return errors.SlowDown(f"{what}: {ok} of {len(outcomes)} drives succeeded, {quorum} needed ({reasons})")


def _majority(messages: list) -> object:
    """The most common of equal-typed protobuf messages (ties: the first seen)."""
    counts = collections.Counter(m.SerializeToString(deterministic=True) for m in messages)
    best = counts.most_common(1)[0][0]
    return next(m for m in messages if m.SerializeToString(deterministic=True) == best)


CORRUPT_COPY = ":corrupt"
"""CommitObject expect_data_id of a heal replacing an unreadable metadata copy (CheckShard
META_CORRUPT). Outside the data id alphabet, so it never matches a readable copy: a PUT that
replaced the copy after the heal checked it still wins."""


class ForeignCopy(errors.ObjectTampered):
    """A member's copy names another object (metadata moved or copied on a drive). Carries the
    data id it names, so healing can replace exactly that copy (and nothing a PUT wrote since)."""

    def __init__(self, message: str, *, resource: str = "", held_data_id: str = ""):
        super().__init__(message, resource=resource)
        self.held_data_id = held_data_id


def _names_other_object(meta: types_pb2.ObjectMeta, bucket: str, key: str) -> bool:
    return meta.bucket != bucket or meta.key != key


def _without_foreign_copies(outcomes: list, metas: list, bucket: str, key: str) -> list:
    """`outcomes` with ForeignCopy (an ObjectTampered) in place of each copy whose metadata
    (`metas[i]`) names another object than the one requested: metadata moved or copied on a
    drive. Such a copy is a bad copy for the quorum: read around while enough good copies
    remain, never chosen; healing replaces it."""
    foreign = [i for i, meta in enumerate(metas) if meta is not None and _names_other_object(meta, bucket, key)]
    if not foreign:
        return outcomes
    # The stored names only through repr: they are attacker-controlled bytes.
    log.warning("%s/%s: members %s hold metadata naming another object (%r/%r); not used", bucket, key,
                foreign, metas[foreign[0]].bucket, metas[foreign[0]].key)
    return [ForeignCopy(f"{bucket}/{key}: a drive's metadata names another object", resource=key,
                        held_data_id=metas[i].data_id) if i in foreign else o
            for i, o in enumerate(outcomes)]


def comparable_meta(meta: types_pb2.ObjectMeta) -> bytes:
    """A version's metadata as every member should hold it (shard_index differs by member)."""
    copy = types_pb2.ObjectMeta()
    copy.CopyFrom(meta)
    copy.shard_index = 0
    copy.ClearField("inline_shard")
    return copy.SerializeToString(deterministic=True)


def majority_meta(copies: list[types_pb2.ObjectMeta]) -> types_pb2.ObjectMeta:
    """The content most copies of one version share (ties: the first seen)."""
    counts = collections.Counter(comparable_meta(m) for m in copies)
    best = counts.most_common(1)[0][0]
    return next(m for m in copies if comparable_meta(m) == best)


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
                self._stubs[m.address] = storage_pb2_grpc.StorageServiceStub(self._channels[m.address])
        self.members = [Member(i, m.address, m.drive, self._stubs[m.address]) for i, m in enumerate(drives)]

    @property
    def sets(self) -> list["ErasureSetClient"]:
        return [self]

    def set_for(self, bucket: str, key: str) -> "ErasureSetClient":
        """The set holding bucket/key: this one (see ErasureSets for several)."""
        return self

    async def close(self) -> None:
        if self._owns_channels:
            await asyncio.gather(*(ch.close() for ch in self._channels.values()), return_exceptions=True)

    # ---- fan-out -------------------------------------------------------------------------

    async def _guard(self, call: Awaitable[T], where: str) -> T | errors.SealstoreError:
        try:
            return await call
        except grpc.RpcError as exc:
            return errors.from_rpc_error(exc)
        except errors.SealstoreError as exc:
            return exc
        except asyncio.TimeoutError:
            return errors.ServiceUnavailable(f"{where} did not answer in time")
        except Exception as exc:  # a broken member must not break the quorum decision
            log.warning("call to %s failed: %r", where, exc)
            return errors.ServiceUnavailable(f"{where} failed: {type(exc).__name__}")

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
        made = [o for o in outcomes if not _failed(o)]
        existing = _count(outcomes, errors.BucketAlreadyOwnedByYou)
        if existing >= self.write_quorum:
            raise next(o for o in outcomes if isinstance(o, errors.BucketAlreadyOwnedByYou))
        if made and len(made) + existing >= self.write_quorum:
            return made[0]
        if made:  # undo where we created it, so a failed create leaves no bucket on a minority
            undo = storage_pb2.BucketRequest(bucket=bucket)
            await asyncio.gather(*(self._guard(self._stubs[a].DeleteBucket(undo, timeout=self.timeout), a)
                                   for a in self._addresses_where_ok(outcomes)))
        raise _verdict(outcomes, self.write_quorum, f"make bucket {bucket}")

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
                raise _verdict(outcomes, self.write_quorum, f"write to bucket {bucket}")
            return _majority(found)
        raise _verdict(outcomes, self.read_quorum, f"get bucket {bucket}")

    async def list_buckets(self) -> list[types_pb2.BucketInfo]:
        request = storage_pb2.ListBucketsRequest()
        outcomes = await self._each_node(lambda s: s.ListBuckets(request, timeout=self.timeout))
        answers = [o for o in outcomes if not _failed(o)]
        if len(answers) < self.read_quorum:
            raise _verdict(outcomes, self.read_quorum, "list buckets")
        copies: dict[str, list] = collections.defaultdict(list)
        for answer in answers:
            for info in answer.buckets:
                copies[info.name].append(info)
        return [_majority(copies[name]) for name in sorted(copies) if len(copies[name]) >= self.read_quorum]

    async def delete_bucket(self, bucket: str) -> None:
        # Read the bucket first: if some node refuses (not empty) or the delete misses quorum,
        # the bucket is put back, with its creation time and encryption, where it was removed.
        info = await self.get_bucket(bucket)
        request = storage_pb2.BucketRequest(bucket=bucket)
        outcomes = await self._each_node(lambda s: s.DeleteBucket(request, timeout=self.timeout))
        deleted = sum(1 for o in outcomes if not _failed(o))
        not_empty = _count(outcomes, errors.BucketNotEmpty)
        if not not_empty and deleted and deleted + _count(outcomes, errors.NoSuchBucket) >= self.write_quorum:
            return
        if deleted:
            await self._restore_bucket(info, self._addresses_where_ok(outcomes))
        if not_empty:
            raise next(o for o in outcomes if isinstance(o, errors.BucketNotEmpty))
        raise _verdict(outcomes, self.write_quorum, f"delete bucket {bucket}")

    def _addresses_where_ok(self, outcomes: list) -> list[str]:
        return list(dict.fromkeys(m.address for m, o in zip(self.members, outcomes) if not _failed(o)))

    async def _restore_bucket(self, info: types_pb2.BucketInfo, addresses: list[str]) -> None:
        make = storage_pb2.MakeBucketRequest(bucket=info.name, created_ns=info.created_ns)
        await asyncio.gather(*(self._guard(self._stubs[a].MakeBucket(make, timeout=self.timeout), a)
                               for a in addresses))
        if info.encryption.sse_algorithm:
            enc = storage_pb2.SetBucketEncryptionRequest(bucket=info.name, encryption=info.encryption)
            await asyncio.gather(*(self._guard(self._stubs[a].SetBucketEncryption(enc, timeout=self.timeout), a)
                                   for a in addresses))

    async def set_bucket_encryption(self, bucket: str,
                                    enc: types_pb2.BucketEncryption | None) -> types_pb2.BucketInfo:
        request = storage_pb2.SetBucketEncryptionRequest(
            bucket=bucket, encryption=enc or types_pb2.BucketEncryption())
        outcomes = await self._each_node(lambda s: s.SetBucketEncryption(request, timeout=self.timeout))
        done = [o for o in outcomes if not _failed(o)]
        if len(done) >= self.write_quorum:
            return done[0]
        raise _verdict(outcomes, self.write_quorum, f"set encryption of bucket {bucket}")

    # ---- object metadata -----------------------------------------------------------------

    async def _meta_outcomes(self, bucket: str, key: str) -> list:
        def call(m: Member):
            return m.stub.GetObjectMeta(storage_pb2.ObjectRequest(bucket=bucket, key=key, drive=m.drive),
                                        timeout=self.timeout)
        outcomes = await self._each_member(call)
        metas = [o if isinstance(o, types_pb2.ObjectMeta) else None for o in outcomes]
        outcomes = _without_foreign_copies(outcomes, metas, bucket, key)
        # NoSuchBucket only when too few members could have the bucket for any read to succeed:
        # members that lost it with their drive (wiped, replaced) must not hide it from the others.
        if _count(outcomes, errors.NoSuchBucket) > len(self.members) - self.read_quorum:
            raise next(o for o in outcomes if isinstance(o, errors.NoSuchBucket))
        return outcomes

    async def meta_outcomes(self, bucket: str, key: str) -> list:
        """One entry per member: its ObjectMeta or its typed error (NoSuchKey: it answered, without
        a copy; ServiceUnavailable: it did not answer)."""
        return await self._meta_outcomes(bucket, key)

    async def get_object_metas(self, bucket: str, key: str) -> list[types_pb2.ObjectMeta | None]:
        """One entry per member: its copy of the metadata, or None (no copy, or unreachable)."""
        return [None if _failed(o) else o for o in await self._meta_outcomes(bucket, key)]

    async def get_object_meta(self, bucket: str, key: str) -> types_pb2.ObjectMeta:
        outcomes = await self._meta_outcomes(bucket, key)
        chosen = self.quorum_version([None if _failed(o) else o for o in outcomes])
        if chosen is not None:
            return chosen
        # "No such key" only when the members without a copy are so many that the object could
        # not be read even if every other member had it; else the silent members might: 503.
        absent = _count(outcomes, errors.NoSuchKey)
        if absent > len(self.members) - self.read_quorum:
            raise next(o for o in outcomes if isinstance(o, errors.NoSuchKey))
        raise _verdict([o for o in outcomes if not isinstance(o, errors.NoSuchKey)] +
                       [errors.ServiceUnavailable("no copy here")] * absent,
                       self.read_quorum, f"read metadata of {bucket}/{key}")

    def quorum_version(self, metas: list[types_pb2.ObjectMeta | None]) -> types_pb2.ObjectMeta | None:
        """Of per-member copies, the version (data_id) at least read_quorum agree on; newest mtime wins."""
        by_version: dict[str, list[types_pb2.ObjectMeta]] = collections.defaultdict(list)
        for meta in metas:
            if meta is not None:
                by_version[meta.data_id].append(meta)
        agreed = [copies for copies in by_version.values() if len(copies) >= self.read_quorum]
        if not agreed:
            return None
        copies = max(agreed, key=lambda copies: copies[0].mtime_ns)
        # Copies of one version normally agree byte for byte (but for shard_index); if one drive's
        # copy differs (damaged, or hand-edited), the majority's content wins and healing
        # rewrites the minority (sealstore/erasure_heal.py).
        return majority_meta(copies)

    async def delete_object(self, bucket: str, key: str) -> None:
        def call(m: Member):
            return m.stub.DeleteObject(storage_pb2.ObjectRequest(bucket=bucket, key=key, drive=m.drive),
                                       timeout=self.timeout)
        outcomes = await self._each_member(call)
        if sum(1 for o in outcomes if not _failed(o)) >= self.write_quorum:
            return
        raise _verdict(outcomes, self.write_quorum, f"delete {bucket}/{key}")

    async def list_objects(self, bucket: str, prefix: str, start_after: str,
                           max_keys: int) -> tuple[list[storage_pb2.ObjectEntry], bool]:
        """Entries that >= read_quorum members list with the same data_id, in key order.

        Each member lists at most max_keys keys, so when a member's page is truncated its view
        beyond its last key is unknown: only keys up to the smallest such "horizon" are decided,
        and the listing continues from there until max_keys entries are decided.
        """
        if max_keys <= 0:
            return [], False
        result: list[storage_pb2.ObjectEntry] = []
        cursor = start_after
        while True:
            def call(m: Member, cursor=cursor):
                return m.stub.ListObjects(storage_pb2.ListObjectsRequest(
                    bucket=bucket, prefix=prefix, start_after=cursor, max_keys=max_keys, drive=m.drive),
                    timeout=self.timeout)
            outcomes = await self._each_member(call)
            pages = [o for o in outcomes if not _failed(o)]
            if len(pages) < self.read_quorum:
                raise _verdict(outcomes, self.read_quorum, f"list {bucket}")
            truncated_ends = [p.entries[-1].key for p in pages if p.truncated and p.entries]
            horizon = min(truncated_ends) if truncated_ends else None
            copies: dict[str, dict[str, list]] = collections.defaultdict(lambda: collections.defaultdict(list))
            for page in pages:
                for entry in page.entries:
                    if horizon is None or entry.key <= horizon:
                        copies[entry.key][entry.data_id].append(entry)
            for key in sorted(copies):
                agreed = [v for v in copies[key].values() if len(v) >= self.read_quorum]
                if agreed:
                    result.append(max(agreed, key=lambda v: v[0].mtime_ns)[0])
            if len(result) > max_keys:
                return result[:max_keys], True
            if horizon is None:
                return result, False
            cursor = horizon

    # ---- uploads -------------------------------------------------------------------------

    async def write_shard(self, member: int, upload_id: str, bucket: str,
                          blocks: AsyncIterator[bytes] | Iterable[bytes],
                          timeout: float | None = None) -> storage_pb2.WriteShardResponse:
        """Streams `blocks` (one per stripe, in order) as shard `member` of an upload.

        Raises the member's typed error; a convenience for callers that do not drive the
        WriteShard stream themselves.
        """
        m = self.members[member]
        source_error: list[BaseException] = []

        async def requests():
            try:
                yield storage_pb2.WriteShardRequest(header=storage_pb2.WriteShardHeader(
                    upload_id=upload_id, bucket=bucket, shard_index=m.index, drive=m.drive))
                if hasattr(blocks, "__aiter__"):
                    async for block in blocks:
                        yield storage_pb2.WriteShardRequest(block=block)
                else:
                    for block in blocks:
                        yield storage_pb2.WriteShardRequest(block=block)
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

    async def read_shard(self, member: int, bucket: str, key: str, data_id: str,
                         first_block: int, block_count: int,
                         timeout: float | None = None) -> AsyncIterator[bytes]:
        """Yields the verified blocks of shard `member`; raises the member's typed error
        (ObjectTampered when a block fails its checksum)."""
        m = self.members[member]
        call = m.stub.ReadShard(storage_pb2.ReadShardRequest(
            bucket=bucket, key=key, data_id=data_id, first_block=first_block,
            block_count=block_count, drive=m.drive), timeout=timeout)
        try:
            async for block in call:
                yield block.block
        except grpc.RpcError as exc:
            raise errors.from_rpc_error(exc) from None
        finally:
            call.cancel()

    async def commit_object(self, upload_id: str, meta: types_pb2.ObjectMeta, members: list[int],
                            inline_blocks: list[bytes] | None = None) -> None:
        """Commits the upload on `members` (each gets meta with shard_index = its index).

        With meta.inline, member i's shard is inline_blocks[i] (empty list: an empty object),
        written with the metadata in one go; nothing was uploaded before.

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
            block = inline_blocks[m.index] if inline_blocks else b""
            return m.stub.CommitObject(storage_pb2.CommitObjectRequest(
                upload_id=upload_id, meta=copy, drive=m.drive, inline_block=block), timeout=self.timeout)
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
        if _count(outcomes, errors.NoSuchBucket) >= self.write_quorum:  # deleted meanwhile
            raise next(o for o in outcomes if isinstance(o, errors.NoSuchBucket))
        full = [o for o in outcomes if isinstance(o, errors.StorageFull)]
        if len(full) >= self.write_quorum:  # the client learns why, as MinIO's XMinioStorageFull
            raise full[0]
        reasons = "; ".join(sorted({f"{type(o).__name__}: {o.message}" for o in outcomes if _failed(o)}))
        raise errors.SlowDown(f"commit {meta.bucket}/{meta.key}: {len(committed)} of {len(self.members)} "
                              f"drives committed, {self.write_quorum} needed ({reasons})")

    async def heal_commit(self, member: int, upload_id: str, meta: types_pb2.ObjectMeta,
                          expect_data_id: str, inline_block: bytes = b"") -> None:
        """Commits a healed shard on one member, only if its current version is `expect_data_id`
        ("" = none, CORRUPT_COPY = an unreadable copy): a concurrent PUT or DELETE wins over the
        heal (PreconditionFailed)."""
        m = self.members[member]
        copy = types_pb2.ObjectMeta()
        copy.CopyFrom(meta)
        copy.shard_index = m.index
        try:
            await m.stub.CommitObject(storage_pb2.CommitObjectRequest(
                upload_id=upload_id, meta=copy, drive=m.drive, conditional=True, expect_data_id=expect_data_id,
                inline_block=inline_block),
                timeout=self.timeout)
        except grpc.RpcError as exc:
            raise errors.from_rpc_error(exc) from None

    async def update_object_encryption(self, bucket: str, key: str, data_id: str, encrypted_dek: bytes,
                                       kms_key_version: int, members: list[int]) -> None:
        """Key rewrap: replaces the encrypted DEK of version `data_id` on `members` (those holding
        it), each only if still current there. Below write_quorum: PreconditionFailed when the
        object changed meanwhile on enough members, else SlowDown. No undo is needed: old and new
        ciphertexts wrap the same DEK, so every copy stays readable either way."""
        def call(m: Member):
            return m.stub.UpdateObjectEncryption(storage_pb2.UpdateObjectEncryptionRequest(
                bucket=bucket, key=key, drive=m.drive, expect_data_id=data_id, encrypted_dek=encrypted_dek,
                kms_key_version=kms_key_version), timeout=self.timeout)
        outcomes = await self._each_member(call, [self.members[i] for i in members])
        if sum(1 for o in outcomes if not _failed(o)) >= self.write_quorum:
            return
        raise _verdict(outcomes, self.write_quorum, f"rewrap {bucket}/{key}")

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
        return _without_foreign_copies(outcomes, metas, bucket, key)

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
        """Heals a bucket on one node (its drives that lack it); True if any drive got it."""
        stub = self._stubs[address]
        made = await self._guard(stub.MakeBucket(storage_pb2.MakeBucketRequest(
            bucket=info.name, created_ns=info.created_ns), timeout=self.timeout), address)
        if _failed(made):
            return False
        if info.encryption.sse_algorithm:
            await self._guard(stub.SetBucketEncryption(storage_pb2.SetBucketEncryptionRequest(
                bucket=info.name, encryption=info.encryption), timeout=self.timeout), address)
        return True

    async def delete_version(self, member: int, bucket: str, key: str, data_id: str) -> None:
        """Removes one member's copy of version `data_id` (a dangling leftover), if still current."""
        m = self.members[member]
        try:
            await m.stub.DeleteObject(storage_pb2.ObjectRequest(bucket=bucket, key=key, drive=m.drive,
                                                                data_id=data_id), timeout=self.timeout)
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

    def __init__(self, topology: Topology, certs: Path, role: str, *, timeout: float = DEFAULT_TIMEOUT):
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.sets = [ErasureSetClient(topology, certs, role, timeout=timeout, set_index=i, channels=self._channels)
                     for i in range(len(topology.storage_sets))]
        self.deployment_id = topology.deployment_id
        first = self.sets[0]
        self.data_shards, self.parity_shards = first.data_shards, first.parity_shards
        self.read_quorum, self.write_quorum = first.read_quorum, first.write_quorum

    def set_for(self, bucket: str, key: str) -> ErasureSetClient:
        return self.sets[set_of(bucket, key, len(self.sets), self.deployment_id)]

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
        existing = _count(outcomes, errors.BucketAlreadyOwnedByYou)
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
        return _majority(found)

    async def list_buckets(self) -> list[types_pb2.BucketInfo]:
        """The buckets every set that answered has (as get_bucket, a set below quorum is skipped)."""
        outcomes = await self._each_set(lambda s: s.list_buckets())
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
        gone = _count(outcomes, errors.NoSuchBucket)  # a node of two sets removed it for both
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

    # ---- objects: the object's set -------------------------------------------------------

    async def get_object_meta(self, bucket: str, key: str) -> types_pb2.ObjectMeta:
        return await self.set_for(bucket, key).get_object_meta(bucket, key)

    async def delete_object(self, bucket: str, key: str) -> None:
        await self.set_for(bucket, key).delete_object(bucket, key)

    async def get_object_metas(self, bucket: str, key: str) -> list[types_pb2.ObjectMeta | None]:
        """One entry per member of the object's set (indexes are that set's members)."""
        return await self.set_for(bucket, key).get_object_metas(bucket, key)

    async def meta_outcomes(self, bucket: str, key: str) -> list:
        return await self.set_for(bucket, key).meta_outcomes(bucket, key)

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
        merged = sorted((e for entries, _ in pages for e in entries), key=lambda e: e.key)
        truncated = len(merged) > max_keys or any(more for _, more in pages)
        return merged[:max_keys], truncated

    async def update_object_encryption(self, bucket: str, key: str, *args, **kwargs) -> None:
        await self.set_for(bucket, key).update_object_encryption(bucket, key, *args, **kwargs)

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
