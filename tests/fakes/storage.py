"""An in-memory StorageService: N storage nodes with their drives, in this process, with switches
for the faults the quorum client, the pipelines and healing must survive.

It implements the contract of protos/sealstore/v1/storage.proto (the method names, messages and
typed errors the real nodes answer, see services/storage/drive.py) and is reached through the
real generated stubs over tests.fakes.grpc_inprocess.InProcessChannel, so the erasure client
runs unchanged. Faults:

- node.offline = True: every call fails UNAVAILABLE (a node that is down);
- node.delay = s: every call waits s seconds first (slow node; a client timeout trips);
- node.fail(method, error): that method raises `error` until node.heal(method);
- node.on(method, hook): hook() runs before each call of that method (a racing writer);
- drive.full = True: writes answer StorageFull (XMinioStorageFull);
- drive.corrupt_meta(bucket, key): the copy's metadata is unreadable (META_CORRUPT, ObjectTampered);
- drive.lose_shard(bucket, key): the shard file is gone (SHARD_MISSING);
- drive.rot_block(bucket, key, i): block i fails its checksum (deep check, read);
- drive.replace_meta(bucket, key, meta): a copy moved or hand-edited (e.g. naming another object);
- drive.wipe(): a replaced, empty drive.

`FakeStorage.client()` is an ErasureSetClient (or ErasureSets) over the fake nodes; build it
inside the running event loop, as the real one.
"""
from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field

import grpc
from grpc.aio import AioRpcError, Metadata

from sealstore import errors
from sealstore.config import SetMember, Topology
from sealstore.erasure import framing
from sealstore.erasure.versions import is_composite
from sealstore.v1 import storage_pb2, storage_pb2_grpc, types_pb2
from services.storage.drive import validate_bucket_name

from tests.fakes.grpc_inprocess import InProcessChannel, QuorumClientOverChannels

State = storage_pb2.CheckShardResponse
CORRUPT_COPY = ":corrupt"  # the storage contract's name for "an unreadable copy" (storage.proto)
DEFAULT_MAX_KEYS = 1000


@dataclass
class Copy:
    """One drive's copy of one object: its metadata and its shard blocks."""

    meta: types_pb2.ObjectMeta
    blocks: list[bytes]
    meta_corrupt: bool = False
    shard_missing: bool = False
    rotten: set[int] = field(default_factory=set)


class FakeDrive:
    def __init__(self, name: str):
        self.name = name
        self.buckets: dict[str, types_pb2.BucketInfo] = {}
        self.objects: dict[tuple[str, str], Copy] = {}
        self.previous: dict[tuple[str, str], Copy] = {}  # kept for the undo of an overwrite
        self.uploads: dict[str, list[bytes]] = {}
        self.full = False

    # ---- fault switches ------------------------------------------------------------------

    def copy_of(self, bucket: str, key: str) -> Copy:
        return self.objects[(bucket, key)]

    def corrupt_meta(self, bucket: str, key: str) -> None:
        self.copy_of(bucket, key).meta_corrupt = True

    def lose_shard(self, bucket: str, key: str) -> None:
        self.copy_of(bucket, key).shard_missing = True

    def rot_block(self, bucket: str, key: str, index: int = 0) -> None:
        self.copy_of(bucket, key).rotten.add(index)

    def replace_meta(self, bucket: str, key: str, meta: types_pb2.ObjectMeta) -> None:
        self.copy_of(bucket, key).meta = meta

    def wipe(self) -> None:
        self.buckets.clear()
        self.objects.clear()
        self.previous.clear()
        self.uploads.clear()

    # ---- helpers of the contract ---------------------------------------------------------

    def bucket(self, bucket: str) -> types_pb2.BucketInfo:
        if bucket not in self.buckets:
            raise errors.NoSuchBucket(resource=bucket)
        return self.buckets[bucket]

    def readable(self, bucket: str, key: str) -> Copy | None:
        """The copy, None without one; an unreadable copy raises as the real drive does."""
        self.bucket(bucket)
        copy = self.objects.get((bucket, key))
        if copy is not None and copy.meta_corrupt:
            raise errors.ObjectTampered(f"unreadable metadata of {key!r} on {self.name}", resource=key)
        return copy

    def check_writable(self) -> None:
        if self.full:
            raise errors.StorageFull(f"{self.name}: drive full")


class FakeStorageNode(storage_pb2_grpc.StorageServiceServicer):
    """One storage node: its drives and the StorageService methods over them."""

    def __init__(self, node_id: str, drives: int = 1):
        self.node_id = node_id
        self.drives = [FakeDrive(f"{node_id}/drive{d}") for d in range(drives)]
        self.offline = False
        self.delay = 0.0
        self.failures: dict[str, errors.SealstoreError] = {}
        self.hooks: dict[str, object] = {}
        self.calls: collections.Counter = collections.Counter()

    def fail(self, method: str, error: errors.SealstoreError) -> None:
        self.failures[method] = error

    def on(self, method: str, hook) -> None:
        """Runs `hook()` before each call of `method` (e.g. a concurrent write landing mid-heal)."""
        self.hooks[method] = hook

    def heal(self, method: str | None = None) -> None:
        if method is None:
            self.failures.clear()
        else:
            self.failures.pop(method, None)

    async def before_call(self, method: str) -> None:
        self.calls[method] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.offline:
            raise AioRpcError(grpc.StatusCode.UNAVAILABLE, Metadata(), Metadata(),
                              f"failed to connect to all addresses ({self.node_id} is offline)")
        if method in self.hooks:
            self.hooks[method]()
        if method in self.failures:
            raise self.failures[method]

    def drive(self, index: int) -> FakeDrive:
        if not 0 <= index < len(self.drives):
            raise errors.InvalidArgument(f"node {self.node_id} has no drive {index}")
        return self.drives[index]

    # ---- buckets (every drive of the node) -----------------------------------------------

    async def MakeBucket(self, request, context):
        validate_bucket_name(request.bucket)
        lacking = [d for d in self.drives if request.bucket not in d.buckets]
        if not lacking:
            raise errors.BucketAlreadyOwnedByYou(resource=request.bucket)
        for d in lacking:
            d.check_writable()
        for d in lacking:
            d.buckets[request.bucket] = types_pb2.BucketInfo(name=request.bucket, created_ns=request.created_ns)
        return lacking[0].buckets[request.bucket]

    async def GetBucket(self, request, context):
        for d in self.drives:
            if request.bucket in d.buckets:
                return d.buckets[request.bucket]
        raise errors.NoSuchBucket(resource=request.bucket)

    async def ListBuckets(self, request, context):
        by_name: dict[str, types_pb2.BucketInfo] = {}
        for d in self.drives:
            for name, info in d.buckets.items():
                by_name.setdefault(name, info)
        return storage_pb2.ListBucketsResponse(buckets=[by_name[n] for n in sorted(by_name)])

    async def DeleteBucket(self, request, context):
        holders = [d for d in self.drives if request.bucket in d.buckets]
        if not holders:
            raise errors.NoSuchBucket(resource=request.bucket)
        if any(b == request.bucket for d in holders for (b, _) in d.objects):
            raise errors.BucketNotEmpty(resource=request.bucket)
        for d in holders:
            del d.buckets[request.bucket]
        return types_pb2.Empty()

    async def SetBucketEncryption(self, request, context):
        holders = [d for d in self.drives if request.bucket in d.buckets]
        if not holders:
            raise errors.NoSuchBucket(resource=request.bucket)
        for d in holders:
            info = d.buckets[request.bucket]
            info.ClearField("encryption")
            if request.encryption.sse_algorithm:
                info.encryption.CopyFrom(request.encryption)
        return holders[0].buckets[request.bucket]

    # ---- uploads -------------------------------------------------------------------------

    async def WriteShard(self, request_iterator, context):
        drive: FakeDrive | None = None
        upload_id = ""
        blocks: list[bytes] = []
        try:
            async for request in request_iterator:
                kind = request.WhichOneof("message")
                if kind == "header":
                    if drive is not None:
                        raise errors.InvalidRequest("WriteShard got a second header")
                    h = request.header
                    drive = self.drive(h.drive)
                    drive.bucket(h.bucket)
                    drive.check_writable()
                    if h.upload_id in drive.uploads:
                        raise errors.InvalidRequest(f"upload {h.upload_id} already has a shard on this drive")
                    upload_id = h.upload_id
                    drive.uploads[upload_id] = blocks
                elif kind == "block":
                    if drive is None:
                        raise errors.InvalidRequest("WriteShard must start with a header")
                    drive.check_writable()
                    blocks.append(bytes(request.block))
            if drive is None:
                raise errors.InvalidRequest("WriteShard got no header")
            return storage_pb2.WriteShardResponse(blocks=len(blocks), bytes=sum(map(len, blocks)))
        except BaseException:
            if drive is not None:  # a broken stream leaves no temporary shard
                drive.uploads.pop(upload_id, None)
            raise

    async def CommitObject(self, request, context):
        drive = self.drive(request.drive)
        meta, upload_id = request.meta, request.upload_id
        if meta.data_id != upload_id and not request.conditional:
            raise errors.InvalidArgument(f"meta.data_id {meta.data_id!r} differs from upload id {upload_id!r}")
        drive.bucket(meta.bucket)
        if meta.inline:
            blocks = [request.inline_block] if request.inline_block else []
            if meta.erasure.stripe_count != len(blocks):
                raise errors.InvalidArgument(f"an inline object has {meta.erasure.stripe_count} stripes, "
                                             f"and {len(blocks)} block(s) were sent")
        elif request.shard_block:
            if request.conditional or is_composite(meta) or meta.erasure.stripe_count != 1:
                raise errors.InvalidArgument("a shard block is sent only with the commit of a one-stripe object "
                                             "stored in a shard file")
            drive.check_writable()
            if upload_id in drive.uploads:
                raise errors.InvalidRequest(f"upload {upload_id} already has a shard on this drive")
            blocks = [bytes(request.shard_block)]
        else:
            if upload_id not in drive.uploads:
                raise errors.InvalidRequest(f"upload {upload_id} has no shard on this drive")
            blocks = drive.uploads[upload_id]
        where = (meta.bucket, meta.key)
        previous = drive.objects.get(where)
        held = "" if previous is None else CORRUPT_COPY if previous.meta_corrupt else previous.meta.data_id
        if request.conditional and held != request.expect_data_id:
            drive.uploads.pop(upload_id, None)
            raise errors.PreconditionFailed(f"{meta.bucket}/{meta.key} changed on this drive while it was healed "
                                            f"(now {held or 'absent'}, expected {request.expect_data_id or 'absent'})")
        drive.check_writable()
        drive.uploads.pop(upload_id, None)
        stored = types_pb2.ObjectMeta()
        stored.CopyFrom(meta)
        stored.ClearField("inline_shard")
        if (not request.conditional and previous is not None and not previous.meta_corrupt
                and previous.meta.data_id != meta.data_id):
            drive.previous[where] = previous
        else:
            drive.previous.pop(where, None)
        drive.objects[where] = Copy(stored, list(blocks))
        return types_pb2.Empty()

    async def AbortUpload(self, request, context):
        self.drive(request.drive).uploads.pop(request.upload_id, None)
        return types_pb2.Empty()

    # ---- objects -------------------------------------------------------------------------

    async def GetObjectMeta(self, request, context):
        copy = self.drive(request.drive).readable(request.bucket, request.key)
        if copy is None:
            raise errors.NoSuchKey(resource=request.key)
        if not request.with_inline_shard:
            return copy.meta
        answer = types_pb2.ObjectMeta()
        answer.CopyFrom(copy.meta)
        if not copy.meta.inline:
            # A one-stripe shard file's block, verified by the node: left out when it is not sound.
            one_stripe = not is_composite(copy.meta) and copy.meta.erasure.stripe_count == 1
            if one_stripe and not copy.shard_missing and 0 not in copy.rotten:
                answer.inline_shard = framing.frame_blocks(copy.blocks[:1])
            return answer
        # As a drive keeps it: framed blocks; a rotten one fails its checksum.
        frames = []
        for index, block in enumerate(copy.blocks):
            frame = bytearray(framing.frame_blocks([block]))
            if index in copy.rotten and block:
                frame[-1] ^= 0xFF
            frames.append(bytes(frame))
        answer.inline_shard = b"".join(frames)
        return answer

    async def ReadShard(self, request, context):
        copy = self.drive(request.drive).readable(request.bucket, request.key)
        if copy is None:
            raise errors.NoSuchKey(resource=request.key)
        if request.data_id and copy.meta.data_id != request.data_id:
            raise errors.NoSuchKey(f"version {request.data_id} of {request.key!r} is no longer stored here",
                                   resource=request.key)
        if copy.shard_missing and not copy.meta.inline:
            raise errors.ObjectTampered(f"the shard file of {request.bucket}/{request.key} is missing",
                                        resource=request.key)
        count = request.block_count or max(0, len(copy.blocks) - request.first_block)
        for index in range(request.first_block, request.first_block + count):
            if index >= len(copy.blocks):
                raise errors.ObjectTampered(f"shard of {request.key!r} ends before block {index}")
            if index in copy.rotten:
                raise errors.ObjectTampered(f"block {index} of {request.key!r} fails its checksum")
            yield storage_pb2.ShardBlock(index=index, block=copy.blocks[index])

    async def DeleteObject(self, request, context):
        drive = self.drive(request.drive)
        drive.bucket(request.bucket)
        where = (request.bucket, request.key)
        current = drive.objects.get(where)
        if current is None:
            return types_pb2.Empty()
        if request.data_id:
            if current.meta_corrupt or current.meta.data_id != request.data_id:
                return types_pb2.Empty()
            kept = drive.previous.pop(where, None)
            if kept is not None and kept.meta.data_id != request.data_id and not kept.shard_missing:
                drive.objects[where] = kept  # the undo of an overwrite restores what it replaced
                return types_pb2.Empty()
        drive.objects.pop(where, None)
        drive.previous.pop(where, None)
        return types_pb2.Empty()

    async def ListObjects(self, request, context):
        drive = self.drive(request.drive)
        drive.bucket(request.bucket)
        entries = []
        for (bucket, key), copy in drive.objects.items():
            if bucket != request.bucket or copy.meta_corrupt:
                continue
            meta = copy.meta
            if meta.bucket != bucket or meta.key != key:
                continue  # a copy naming another object is never listed under its name
            if key.startswith(request.prefix) and key > request.start_after:
                entries.append(storage_pb2.ObjectEntry(key=key, size=meta.size, etag=meta.etag,
                                                       mtime_ns=meta.mtime_ns, data_id=meta.data_id))
        entries.sort(key=lambda e: e.key)
        limit = request.max_keys or DEFAULT_MAX_KEYS
        return storage_pb2.ListObjectsResponse(entries=entries[:limit], truncated=len(entries) > limit)

    async def NodeStatus(self, request, context):
        return storage_pb2.NodeStatusResponse(
            node_id=self.node_id, drives=[d.name for d in self.drives],
            objects=sum(len(d.objects) for d in self.drives),
            drive_states=[storage_pb2.DriveState(path=d.name, state="online", slot=-1) for d in self.drives])

    async def CheckShard(self, request, context):
        drive = self.drive(request.drive)
        if request.bucket not in drive.buckets:
            return State(state=State.NO_META, detail=f"bucket {request.bucket} missing")
        copy = drive.objects.get((request.bucket, request.key))
        if copy is None:
            return State(state=State.NO_META, detail="no metadata")
        if copy.meta_corrupt:
            return State(state=State.META_CORRUPT, detail="unreadable metadata")
        if copy.shard_missing and not copy.meta.inline:
            return State(state=State.SHARD_MISSING, meta=copy.meta, detail="shard file missing")
        if copy.rotten and (request.deep or copy.meta.inline):
            return State(state=State.SHARD_CORRUPT, meta=copy.meta, detail=f"blocks {sorted(copy.rotten)} rotten")
        return State(state=State.OK, meta=copy.meta)

    async def UpdateObjectEncryption(self, request, context):
        drive = self.drive(request.drive)
        copy = drive.readable(request.bucket, request.key)
        if copy is None or copy.meta.data_id != request.expect_data_id:
            raise errors.PreconditionFailed(f"{request.bucket}/{request.key} changed on this drive")
        if not copy.meta.HasField("encryption"):
            raise errors.InvalidRequest(f"{request.bucket}/{request.key} is not encrypted with SSE-KMS")
        copy.meta.encryption.encrypted_dek = request.encrypted_dek
        copy.meta.encryption.kms_key_version = request.kms_key_version
        return types_pb2.Empty()


class FakeStorage(QuorumClientOverChannels):
    """`nodes` fake storage nodes with `drives` drives each, grouped into `sets` erasure sets of
    equal size (drives in node-major order, as the launcher assigns them)."""

    def __init__(self, nodes: int = 4, drives: int = 1, parity: int = 2, sets: int = 1,
                 deployment_id: str = "fake-deployment"):
        self.nodes = [FakeStorageNode(f"node{i}", drives) for i in range(nodes)]
        self.channels = {self.address(i): InProcessChannel(n, before_call=n.before_call)
                         for i, n in enumerate(self.nodes)}
        every = [SetMember(self.address(i), d) for i in range(nodes) for d in range(drives)]
        if len(every) % sets:
            raise ValueError(f"{len(every)} drives do not split into {sets} sets")
        size = len(every) // sets
        self.topology = Topology(kms="fake-kms:0", crypto=(), parity_shards=parity,
                                 storage_sets=tuple(tuple(every[s * size:(s + 1) * size]) for s in range(sets)),
                                 deployment_id=deployment_id)

    @staticmethod
    def address(i: int) -> str:
        return f"fake-node-{i}:9000"

    def member_drive(self, member: int, set_index: int = 0) -> FakeDrive:
        """The drive of member `member` of set `set_index`."""
        m = self.topology.storage_sets[set_index][member]
        return self.node_of(m.address).drives[m.drive]

    def node_of(self, address: str) -> FakeStorageNode:
        return self.nodes[int(address.split("-")[-1].split(":")[0])]
