"""CryptoService over gRPC: protobuf in, domain calls (put_pipeline / get_pipeline) out."""
from __future__ import annotations

from typing import AsyncIterator

from sealstore import errors, frames
from sealstore.conditions import Conditions
from sealstore.erasure.client import ErasureSetClient, ErasureSets
from sealstore.v1 import crypto_pb2, crypto_pb2_grpc
from services.crypto import dare, keys, metrics, multipart
from services.crypto.copy import CopyRequest, copy_object
from services.crypto.get_pipeline import RangeRequest, open_object
from services.crypto.kms_client import KmsClient
from services.crypto.put_pipeline import BodyEnd, put_object
from services.crypto.sealing import PartTarget, PutHeader, SseKms


def _put_header(msg: crypto_pb2.PutObjectHeader) -> PutHeader:
    """The protobuf header as the pipelines take it. Exactly one SSE mode, or none."""
    sse = None
    if msg.HasField("sse_kms"):
        sse = SseKms(msg.sse_kms.key_name, keys.parse_context_json(msg.sse_kms.context_json),
                     key_id=msg.sse_kms.key_id)
    customer_key = bytes(msg.sse_customer_key) if msg.sse_customer_key else None
    if sum((sse is not None, msg.sse_s3, customer_key is not None)) > 1:
        raise errors.InvalidArgument("a request can ask for one server-side encryption mode only")
    part = PartTarget(msg.part.upload_id, msg.part.part_number) if msg.HasField("part") else None
    return PutHeader(bucket=msg.bucket, key=msg.key, content_type=msg.content_type,
                     user_metadata=dict(msg.user_metadata), sse_kms=sse, content_length=msg.content_length,
                     sse_s3=msg.sse_s3, customer_key=customer_key, part=part, tags=dict(msg.tags),
                     checksums=dict(msg.checksums))


async def _body(requests) -> AsyncIterator[bytes | BodyEnd]:
    async for request in requests:
        kind = request.WhichOneof("message")
        if kind == "data":
            yield request.data
        elif kind == "end":
            yield BodyEnd(request.end.size, dict(request.end.checksums))
            return
        else:
            raise errors.InvalidRequest("PutObject got a second header")


class CryptoServicer(crypto_pb2_grpc.CryptoServiceServicer):
    def __init__(self, store: ErasureSetClient | ErasureSets, kms: KmsClient, cipher: int = dare.AES_256_GCM):
        self.store = store
        self.kms = kms
        self.cipher = cipher

    async def PutObject(self, request_iterator, context):
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("message") != "header":
            raise errors.InvalidRequest("PutObject must start with a header")
        # An error (a missing or disabled key, found before any data is read) ends the call at
        # once, without reading the rest of the body: the gateway stops sending and takes this
        # status as the answer.
        try:
            header = _put_header(first.header)
            store_stream = multipart.upload_part if header.part is not None else put_object
            meta = await store_stream(self.store, self.kms, header, _body(request_iterator), cipher=self.cipher)
        except errors.SealstoreError as err:
            await _send_early_error(context, err)
            raise
        metrics.sealed("part" if header.part is not None else "put", meta)
        return crypto_pb2.PutObjectResponse(meta=meta)

    async def GetObject(self, request, context):
        requested = _range(request.range) if request.HasField("range") else None
        conditions = Conditions.from_proto(request.conditions) if request.HasField("conditions") else None
        reader = await open_object(self.store, self.kms, request.bucket, request.key, requested, conditions,
                                   customer_key=bytes(request.sse_customer_key) or None,
                                   part_number=request.part_number)
        yield crypto_pb2.GetObjectResponse(head=crypto_pb2.GetObjectHead(
            meta=reader.meta, offset=reader.range.offset, length=reader.range.length,
            is_range=reader.range.is_range, not_modified=reader.not_modified))
        mode = metrics.sse_mode(reader.meta)
        metrics.OBJECTS.labels("get", mode).inc()
        opened = metrics.OPENED.labels(mode)
        async for chunk in reader.chunks():
            opened.inc(len(chunk))
            yield frames.Payload(chunk)


    async def CreateMultipartUpload(self, request, context):
        upload_id, record = await multipart.create_upload(self.store, self.kms, _put_header(request.header),
                                                          cipher=self.cipher)
        return crypto_pb2.CreateMultipartUploadResponse(upload_id=upload_id, record=record)


    async def CopyObject(self, request, context):
        copy = CopyRequest(
            source_bucket=request.source_bucket, source_key=request.source_key,
            destination=_put_header(request.destination),
            source_customer_key=bytes(request.source_customer_key) or None,
            source_conditions=(Conditions.from_proto(request.source_conditions)
                               if request.HasField("source_conditions") else None),
            source_range=_range(request.source_range) if request.HasField("source_range") else None,
            replace_metadata=request.replace_metadata, replace_tags=request.replace_tags)
        meta = await copy_object(self.store, self.kms, copy, cipher=self.cipher)
        metrics.sealed("copy", meta)
        return crypto_pb2.PutObjectResponse(meta=meta)


def _range(r) -> RangeRequest:
    return RangeRequest(first=r.first, last=r.last, suffix_length=r.suffix_length, is_suffix=r.is_suffix)


async def _send_early_error(context, err: errors.SealstoreError) -> None:
    """The error also goes out as initial metadata: the gateway may be writing when the call
    ends, and its gRPC client can lose the status then (sealstore.errors.grpc_initial_metadata)."""
    try:
        await context.send_initial_metadata(errors.grpc_initial_metadata(err))
    except Exception:  # the call is already gone: the status is all there is
        pass
