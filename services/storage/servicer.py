"""StorageService over gRPC: converts protobuf requests into calls on the node's drives.

Every drive call (file I/O: listings, metadata reads, commits and their fsyncs, shard block
reads and writes) runs in the loop's thread pool (server.py sizes it), never on the event loop:
one slow drive call must not stall the node's other requests. Drive and Node are thread-safe
(drive.py: per-object locks).
"""
from __future__ import annotations

import asyncio
import contextvars
import errno
import functools
import inspect
import logging

from sealstore import errors, frames
from sealstore.v1 import storage_pb2, storage_pb2_grpc, types_pb2

from services.storage import metrics
from services.storage.node import Node
from services.storage.shardfile import ShardWriter

log = logging.getLogger(__name__)

_in_thread = asyncio.to_thread
_DONE = object()

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

    def typed(exc: OSError, servicer, request) -> errors.SealstoreError | None:
        metrics.ERRORS.labels(metrics.drive_label(servicer.node, getattr(request, "drive", None)), where).inc()
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
                err = typed(exc, self, request)
                if err is None:
                    raise
                raise err from None
        return stream

    @functools.wraps(method)
    async def unary(self, request, context):
        try:
            return await method(self, request, context)
        except OSError as exc:
            err = typed(exc, self, request)
            if err is None:
                raise
            raise err from None
    return unary


def _with_typed_os_errors(cls):
    for name, member in list(vars(cls).items()):
        if name[:1].isupper() and (inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member)):
            setattr(cls, name, _typed_os_errors(member))
    return cls


def _open_and_read_first(drive, request):
    """Opens the shard a ReadShard names and reads its first block, in one call: a small
    object's shard (one block) costs one trip to the thread pool instead of three.
    Returns (reader, the block iterator, how many blocks it yields, its first item or _DONE)."""
    reader = drive.open_shard(request.bucket, request.key, request.data_id)
    try:
        # block_count 0 means "to the last block".
        count = request.block_count or max(0, reader.block_count - request.first_block)
        blocks = reader.read_blocks(request.first_block, count)
        try:
            return reader, blocks, count, next(blocks, _DONE)
        except errors.ObjectTampered as err:
            log.warning("drive %d: %s", request.drive, err.message)
            raise
    except BaseException:
        reader.close()
        raise


@_with_typed_os_errors
class StorageServicer(storage_pb2_grpc.StorageServiceServicer):
    def __init__(self, node: Node):
        self.node = node

    # ---- buckets -------------------------------------------------------------------------

    async def MakeBucket(self, request, context):
        return await _in_thread(self.node.make_bucket, request.bucket, request.created_ns,
                                request.info if request.HasField("info") else None)

    async def GetBucket(self, request, context):
        return await _in_thread(self.node.get_bucket, request.bucket)

    async def ListBuckets(self, request, context):
        return storage_pb2.ListBucketsResponse(
            buckets=await _in_thread(self.node.list_buckets, request.include_system))

    async def DeleteBucket(self, request, context):
        await _in_thread(self.node.delete_bucket, request.bucket)
        return types_pb2.Empty()

    async def SetBucketEncryption(self, request, context):
        return await _in_thread(self.node.set_bucket_encryption, request.bucket, request.encryption)

    async def UpdateBucket(self, request, context):
        return await _in_thread(self.node.update_bucket, request)

    # ---- uploads -------------------------------------------------------------------------

    async def WriteShard(self, request_iterator, context):
        writer: ShardWriter | None = None
        opening: asyncio.Future | None = None
        in_flight: asyncio.Future | None = None
        loop = asyncio.get_running_loop()
        try:
            async for request in request_iterator:
                kind = request.WhichOneof("message")
                if kind == "header":
                    if writer is not None:
                        raise errors.InvalidRequest("WriteShard got a second header")
                    h = request.header
                    opening = loop.run_in_executor(None, self.node.drive(h.drive).open_upload, h.upload_id, h.bucket,
                                                  h.data_id)
                    writer = await asyncio.shield(opening)
                elif kind == "block":
                    if writer is None:
                        raise errors.InvalidRequest("WriteShard must start with a header")
                    in_flight = loop.run_in_executor(None, writer.write_block, request.block)
                    await asyncio.shield(in_flight)
            if writer is None:
                raise errors.InvalidRequest("WriteShard got no header")
            blocks, nbytes = await _in_thread(writer.finish)
            metrics.WRITTEN.labels(metrics.drive_label(self.node, h.drive)).inc(nbytes)
            return storage_pb2.WriteShardResponse(blocks=blocks, bytes=nbytes)
        except BaseException:
            # A broken stream (client gone, cancelled, bad block) must not leave a tmp shard, not
            # even one whose file was being created in a thread when the stream was cancelled.
            if writer is None and opening is not None:
                await asyncio.wait([opening])
                if not opening.cancelled() and opening.exception() is None:
                    writer = opening.result()
            if writer is not None:
                if in_flight is not None and not in_flight.done():
                    # A cancelled await does not stop the thread: closing the file under a
                    # write in progress could make it write into a reused descriptor.
                    await asyncio.wait([in_flight])
                writer.discard()
            raise

    async def CommitObject(self, request, context):
        await _in_thread(self.node.drive(request.drive).commit_object, request.upload_id, request.meta,
                         conditional=request.conditional, expect_data_id=request.expect_data_id,
                         inline_block=request.inline_block, part_uploads=dict(request.part_uploads),
                         shard_block=request.shard_block)
        # A small object's shard travels inside the call (kept in its metadata, or in its shard file).
        sent = len(request.inline_block) + len(request.shard_block)
        if sent:
            metrics.WRITTEN.labels(metrics.drive_label(self.node, request.drive)).inc(sent)
        return types_pb2.Empty()

    async def CompleteMultipart(self, request, context):
        await _in_thread(self.node.drive(request.drive).complete_multipart, request.meta, request.upload_id)
        return types_pb2.Empty()

    async def AbortUpload(self, request, context):
        await _in_thread(self.node.drive(request.drive).abort_upload, request.upload_id)
        return types_pb2.Empty()

    # ---- objects -------------------------------------------------------------------------

    async def GetObjectMeta(self, request, context):
        return await _in_thread(self.node.drive(request.drive).get_object_meta, request.bucket, request.key,
                                request.with_inline_shard)

    async def ReadShard(self, request, context):
        drive = self.node.drive(request.drive)
        loop = asyncio.get_running_loop()
        opening = loop.run_in_executor(None, functools.partial(
            contextvars.copy_context().run, _open_and_read_first, drive, request))
        try:
            reader, blocks, count, item = await asyncio.shield(opening)
        except asyncio.CancelledError:
            # A cancelled await does not stop the thread: close the reader it opens.
            await asyncio.wait([opening])
            if not opening.cancelled() and opening.exception() is None:
                opening.result()[0].close()
            raise
        in_flight: asyncio.Future | None = None
        read = metrics.READ.labels(metrics.drive_label(self.node, request.drive))
        try:
            sent = 0
            while item is not _DONE:
                index, block = item
                read.inc(len(block))
                yield frames.Payload(block, index)  # a ShardBlock, written by hand (sealstore.frames)
                sent += 1
                if sent == count:  # no trip to the thread pool just to hear there is no more
                    break
                in_flight = loop.run_in_executor(None, next, blocks, _DONE)
                item = await asyncio.shield(in_flight)
        except errors.ObjectTampered as err:
            log.warning("drive %d: %s", request.drive, err.message)
            raise
        finally:
            if in_flight is not None and not in_flight.done():
                await asyncio.wait([in_flight])  # never close the file under a read in progress
            reader.close()

    async def DeleteObject(self, request, context):
        await _in_thread(self.node.drive(request.drive).delete_object, request.bucket, request.key,
                         only_data_id=request.data_id)
        return types_pb2.Empty()

    async def ListObjects(self, request, context):
        entries, truncated = await _in_thread(self.node.drive(request.drive).list_objects,
                                              request.bucket, request.prefix, request.start_after, request.max_keys)
        return storage_pb2.ListObjectsResponse(entries=entries, truncated=truncated)

    async def CheckShard(self, request, context):
        drive = self.node.drive(request.drive)
        result = await _in_thread(drive.check_shard, request.bucket, request.key, deep=False)
        if request.deep and result.state == storage_pb2.CheckShardResponse.OK:
            # Outside the folder's lock: reading every block of a large object must not hold up
            # its writers (a version replaced meanwhile is caught by the heal's conditional commit).
            found = await _in_thread(drive.corrupt_shards, result.meta)
            if found:
                result.state = storage_pb2.CheckShardResponse.SHARD_CORRUPT
                result.detail = "; ".join(p if len(found) == 1 and len(result.meta.parts) <= 1 else f"part {d}: {p}"
                                          for d, p in found)
                result.bad_shards.extend(d for d, _ in found)
        return result

    async def UpdateObjectTags(self, request, context):
        await _in_thread(self.node.drive(request.drive).update_tags, request.bucket, request.key,
                         request.expect_data_id, dict(request.tags))
        return types_pb2.Empty()

    async def UpdateObjectEncryption(self, request, context):
        await _in_thread(self.node.drive(request.drive).update_encryption, request.bucket, request.key,
                         request.expect_data_id, request.encrypted_dek, request.kms_key_version)
        return types_pb2.Empty()

    async def NodeStatus(self, request, context):
        objects = await _in_thread(self.node.count_objects)
        return storage_pb2.NodeStatusResponse(
            node_id=self.node.node_id, drives=[str(d.root) for d in self.node.all_drives],
            objects=objects,
            drive_states=[storage_pb2.DriveState(
                path=str(d.root), state=d.state, detail=d.refusal,
                slot=d.identity.drive_index if d.identity else -1,
                deployment_id=d.identity.deployment_id if d.identity else "") for d in self.node.all_drives])
