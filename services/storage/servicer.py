"""StorageService over gRPC: converts protobuf requests into calls on the node's drives.

File I/O runs on the event loop: drives are local, blocks are ~0.5 MiB, and keeping each
drive call free of awaits is what serialises meta.json updates (see drive.py). Only the
final fsync of an uploaded shard, which can take long for a big shard, runs in a thread.
"""
from __future__ import annotations

import asyncio
import errno
import functools
import inspect
import logging

from sealstore import errors
from sealstore.v1 import storage_pb2, storage_pb2_grpc, types_pb2

from services.storage.node import Node
from services.storage.shardfile import ShardWriter

log = logging.getLogger(__name__)

_FULL = (errno.ENOSPC, errno.EDQUOT)
# A drive that cannot take writes (remounted read-only after an I/O error, or failing) is, to
# the quorum, a drive that is not there: the others may still reach quorum.
_UNUSABLE = (errno.EROFS, errno.EIO)


def drive_error(exc: OSError, where: str) -> errors.SealstoreError | None:
    """The typed error for an OSError of a drive, None for one that is not about the drive."""
    if exc.errno in _FULL:
        return errors.StorageFull(f"{where}: drive full ({exc.strerror})")
    if exc.errno in _UNUSABLE:
        return errors.ServiceUnavailable(f"{where}: drive unusable ({exc.strerror})")
    return None


def _typed_os_errors(method):
    """Raises a drive's OSError as its typed error (an untyped one reaches callers as a 500)."""
    where = method.__name__

    def typed(exc: OSError) -> errors.SealstoreError | None:
        err = drive_error(exc, where)
        if err is not None:
            log.warning("%s failed: %s", where, exc)
        return err

    if inspect.isasyncgenfunction(method):
        @functools.wraps(method)
        async def stream(self, request, context):
            try:
                async for item in method(self, request, context):
                    yield item
            except OSError as exc:
                err = typed(exc)
                if err is None:
                    raise
                raise err from None
        return stream

    @functools.wraps(method)
    async def unary(self, request, context):
        try:
            return await method(self, request, context)
        except OSError as exc:
            err = typed(exc)
            if err is None:
                raise
            raise err from None
    return unary


def _with_typed_os_errors(cls):
    for name, member in list(vars(cls).items()):
        if name[:1].isupper() and (inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member)):
            setattr(cls, name, _typed_os_errors(member))
    return cls


@_with_typed_os_errors
class StorageServicer(storage_pb2_grpc.StorageServiceServicer):
    def __init__(self, node: Node):
        self.node = node

    # ---- buckets -------------------------------------------------------------------------

    async def MakeBucket(self, request, context):
        return self.node.make_bucket(request.bucket, request.created_ns)

    async def GetBucket(self, request, context):
        return self.node.get_bucket(request.bucket)

    async def ListBuckets(self, request, context):
        return storage_pb2.ListBucketsResponse(buckets=self.node.list_buckets())

    async def DeleteBucket(self, request, context):
        self.node.delete_bucket(request.bucket)
        return types_pb2.Empty()

    async def SetBucketEncryption(self, request, context):
        return self.node.set_bucket_encryption(request.bucket, request.encryption)

    # ---- uploads -------------------------------------------------------------------------

    async def WriteShard(self, request_iterator, context):
        writer: ShardWriter | None = None
        try:
            async for request in request_iterator:
                kind = request.WhichOneof("message")
                if kind == "header":
                    if writer is not None:
                        raise errors.InvalidRequest("WriteShard got a second header")
                    h = request.header
                    writer = self.node.drive(h.drive).open_upload(h.upload_id, h.bucket)
                elif kind == "block":
                    if writer is None:
                        raise errors.InvalidRequest("WriteShard must start with a header")
                    writer.write_block(request.block)
            if writer is None:
                raise errors.InvalidRequest("WriteShard got no header")
            blocks, nbytes = await asyncio.to_thread(writer.finish)
            return storage_pb2.WriteShardResponse(blocks=blocks, bytes=nbytes)
        except BaseException:
            # A broken stream (client gone, cancelled, bad block) must not leave a tmp shard.
            if writer is not None:
                writer.discard()
            raise

    async def CommitObject(self, request, context):
        self.node.drive(request.drive).commit_object(request.upload_id, request.meta,
                                                     conditional=request.conditional,
                                                     expect_data_id=request.expect_data_id,
                                                     inline_block=request.inline_block)
        return types_pb2.Empty()

    async def AbortUpload(self, request, context):
        self.node.drive(request.drive).abort_upload(request.upload_id)
        return types_pb2.Empty()

    # ---- objects -------------------------------------------------------------------------

    async def GetObjectMeta(self, request, context):
        return self.node.drive(request.drive).get_object_meta(request.bucket, request.key)

    async def ReadShard(self, request, context):
        reader = self.node.drive(request.drive).open_shard(request.bucket, request.key, request.data_id)
        try:
            # block_count 0 means "to the last block".
            count = request.block_count or max(0, reader.block_count - request.first_block)
            for index, block in reader.read_blocks(request.first_block, count):
                yield storage_pb2.ShardBlock(index=index, block=block)
        except errors.ObjectTampered as err:
            log.warning("drive %d: %s", request.drive, err.message)
            raise
        finally:
            reader.close()

    async def DeleteObject(self, request, context):
        self.node.drive(request.drive).delete_object(request.bucket, request.key, only_data_id=request.data_id)
        return types_pb2.Empty()

    async def ListObjects(self, request, context):
        entries, truncated = self.node.drive(request.drive).list_objects(
            request.bucket, request.prefix, request.start_after, request.max_keys)
        return storage_pb2.ListObjectsResponse(entries=entries, truncated=truncated)

    async def CheckShard(self, request, context):
        drive = self.node.drive(request.drive)
        # Metadata read and orphan removal run on the loop, never beside a commit (drive.py).
        result = drive.check_shard(request.bucket, request.key, deep=False)
        if request.deep and result.state == storage_pb2.CheckShardResponse.OK:
            # Reading every block of a big shard would stall the loop: verify in a thread.
            problem = await asyncio.to_thread(drive.verify_current_shard, result.meta)
            if problem:
                result.state, result.detail = storage_pb2.CheckShardResponse.SHARD_CORRUPT, problem
        return result

    async def UpdateObjectEncryption(self, request, context):
        self.node.drive(request.drive).update_encryption(request.bucket, request.key, request.expect_data_id,
                                                         request.encrypted_dek, request.kms_key_version)
        return types_pb2.Empty()

    async def NodeStatus(self, request, context):
        return storage_pb2.NodeStatusResponse(
            node_id=self.node.node_id, drives=[str(d.root) for d in self.node.all_drives],
            objects=self.node.count_objects(),
            drive_states=[storage_pb2.DriveState(
                path=str(d.root), state=d.state, detail=d.refusal,
                slot=d.identity.drive_index if d.identity else -1,
                deployment_id=d.identity.deployment_id if d.identity else "") for d in self.node.all_drives])
