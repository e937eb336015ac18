"""Multipart upload, multipart GET and CopyObject through the real worker process over gRPC with
mTLS, against a real kms and 4 real storage nodes (tests/crypto/conftest.py): the new RPCs pass
the role tables, and parts survive the real storage CompleteMultipart."""
from __future__ import annotations

import time

import grpc
import pytest

from sealstore import errors
from sealstore import multipart as naming
from sealstore.v1 import crypto_pb2, kms_pb2, types_pb2
from tests.fakes.objects import payload

KEY_A, KEY_B = "mp-key-a", "mp-key-b"
BUCKET = "mpbkt"
MiB = 1 << 20


@pytest.fixture(scope="module")
def setup(cluster):
    kms = cluster.admin_kms()
    for name in (KEY_A, KEY_B):
        kms.CreateKey(kms_pb2.CreateKeyRequest(name=name), timeout=10)

    async def make(store):
        await store.make_bucket(BUCKET)
    cluster.run_store(make)
    return cluster


def upload_part(stub, key: str, upload_id: str, number: int, data: bytes) -> types_pb2.ObjectMeta:
    def requests():
        yield crypto_pb2.PutObjectRequest(header=crypto_pb2.PutObjectHeader(
            bucket=BUCKET, key=key, content_length=len(data),
            part=crypto_pb2.PartTarget(upload_id=upload_id, part_number=number)))
        for i in range(0, len(data), 256 * 1024):
            yield crypto_pb2.PutObjectRequest(data=data[i:i + 256 * 1024])
        yield crypto_pb2.PutObjectRequest(end=crypto_pb2.PutObjectEnd(size=len(data)))
    return stub.PutObject(requests(), timeout=60).meta


def read(stub, key: str, **fields) -> tuple[crypto_pb2.GetObjectHead, bytes]:
    head, data = None, bytearray()
    for message in stub.GetObject(crypto_pb2.GetObjectRequest(bucket=BUCKET, key=key, **fields), timeout=60):
        if message.WhichOneof("message") == "head":
            head = message.head
        else:
            data += message.data
    return head, bytes(data)


def complete(cluster, record: types_pb2.ObjectMeta, upload_id: str) -> None:
    async def go(store):
        entries, _ = await store.list_objects(naming.SYSTEM_BUCKET, naming.parts_prefix(BUCKET, upload_id), "", 1000)
        parts = [e.part for e in entries]
        meta = types_pb2.ObjectMeta(
            format_version=1, bucket=BUCKET, key=record.upload.key, data_id=upload_id,
            size=sum(p.size for p in parts), stored_size=sum(p.stored_size for p in parts),
            etag=naming.multipart_etag([p.etag for p in parts]), mtime_ns=time.time_ns(),
            erasure=record.erasure, encryption=record.encryption, parts=parts)
        await store.complete_multipart(meta)
    cluster.run_store(go)


def test_upload_complete_read_and_copy_through_the_worker(setup):
    stub = setup.worker()
    created = stub.CreateMultipartUpload(crypto_pb2.CreateMultipartUploadRequest(header=crypto_pb2.PutObjectHeader(
        bucket=BUCKET, key="big", sse_kms=crypto_pb2.SseKmsRequest(key_name=KEY_A))), timeout=30)
    upload_id = created.upload_id
    datas = [payload(5 * MiB + 11, seed=1), payload(2 * MiB + 3, seed=2)]
    first = upload_part(stub, "big", upload_id, 1, datas[0])
    again = upload_part(stub, "big", upload_id, 1, datas[0])  # re-uploaded: fresh key material
    assert first.parts[0].key_nonce != again.parts[0].key_nonce and first.etag != again.etag
    upload_part(stub, "big", upload_id, 2, datas[1])
    complete(setup, created.record, upload_id)
    data = b"".join(datas)

    head, got = read(stub, "big")
    assert got == data and [p.number for p in head.meta.parts] == [1, 2]
    first_byte = len(datas[0]) - 100
    head, got = read(stub, "big", range=crypto_pb2.ByteRange(first=first_byte, last=first_byte + 300))
    assert got == data[first_byte:first_byte + 301] and head.is_range
    head, got = read(stub, "big", part_number=2)
    assert got == datas[1] and (head.offset, head.length) == (len(datas[0]), len(datas[1]))
    with pytest.raises(grpc.RpcError) as failure:
        read(stub, "big", part_number=3)
    assert isinstance(errors.from_rpc_error(failure.value), errors.InvalidPartNumber)

    copied = stub.CopyObject(crypto_pb2.CopyObjectRequest(
        source_bucket=BUCKET, source_key="big", destination=crypto_pb2.PutObjectHeader(
            bucket=BUCKET, key="big", sse_kms=crypto_pb2.SseKmsRequest(key_name=KEY_B))), timeout=60)
    assert copied.meta.encryption.kms_key_name == KEY_B and not copied.meta.parts
    assert read(stub, "big")[1] == data
