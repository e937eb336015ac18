"""CopyObject and UploadPartCopy through the worker's real pipelines, in-process (storage fake,
real kms with an in-memory keystore), and the CryptoService wiring of the new RPCs."""
from __future__ import annotations

import hashlib
import os

import pytest

from sealstore import errors
from sealstore import multipart as naming
from sealstore.conditions import Conditions
from sealstore.v1 import crypto_pb2, crypto_pb2_grpc
from services.crypto import multipart
from services.crypto.copy import CopyRequest, copy_object
from services.crypto.get_pipeline import RangeRequest, open_object
from services.crypto.put_pipeline import put_object
from services.crypto.sealing import PartTarget, PutHeader, SseKms
from services.crypto.servicer import CryptoServicer
from tests.crypto.test_multipart import with_system_bucket
from tests.fakes.grpc_inprocess import InProcessChannel
from tests.fakes.kms import InProcessKms
from tests.fakes.objects import body, get, payload, put
from tests.fakes.storage import FakeStorage

BUCKET = "copy-bucket"
OTHER = "copy-other"
KEY_A, KEY_B = "key-a", "key-b"
SIZE = 2 * 1024 * 1024 + 333


def setup():
    fake, kms = with_system_bucket(FakeStorage()), InProcessKms()
    kms.create_key(KEY_A)
    kms.create_key(KEY_B)
    return fake, kms


def run(fake: FakeStorage, test):
    async def go(store):
        await store.make_bucket(BUCKET)
        await store.make_bucket(OTHER)
        return await test(store)
    return fake.run(go)


def dest(key: str, sse: str = "", bucket: str = BUCKET, **kw) -> PutHeader:
    return PutHeader(bucket=bucket, key=key, sse_kms=SseKms(sse) if sse else None, **kw)


def shard_bytes(fake: FakeStorage, bucket: str, key: str) -> bytes:
    return b"".join(b for i in range(4) for b in fake.member_drive(i).copy_of(bucket, key).blocks)


def test_copy_changes_mode_and_key_with_fresh_key_material():
    fake, kms = setup()
    data = payload(SIZE, seed=9)

    async def test(store):
        client = kms.client()
        await put(store, BUCKET, "plain", data)
        # none -> KMS, across buckets
        to_kms = await copy_object(store, client, CopyRequest(BUCKET, "plain", dest("enc", KEY_A, bucket=OTHER)))
        assert to_kms.encryption.kms_key_name == KEY_A
        assert await get(store, OTHER, "enc", kms=client) == data
        # KMS key A -> B, onto itself: the new version replaces the old one
        moved = await copy_object(store, client, CopyRequest(OTHER, "enc", dest("enc", KEY_B, bucket=OTHER)))
        assert moved.encryption.kms_key_name == KEY_B and moved.data_id != to_kms.data_id
        assert moved.encryption.sealed_oek != to_kms.encryption.sealed_oek
        assert moved.encryption.encrypted_dek != to_kms.encryption.encrypted_dek
        assert moved.encryption.iv != to_kms.encryption.iv
        assert (await store.get_object_meta(OTHER, "enc")).data_id == moved.data_id
        assert await get(store, OTHER, "enc", kms=client) == data
        # KMS -> none
        back = await copy_object(store, client, CopyRequest(OTHER, "enc", dest("back")))
        assert not back.HasField("encryption") and back.etag == hashlib.md5(data).hexdigest()
        assert await get(store, BUCKET, "back") == data
    run(fake, test)
    assert data[:64] not in shard_bytes(fake, OTHER, "enc")
    # Key B alone can read the moved object now: disabling A changes nothing for it.
    kms.manager.disable_key(KEY_A, "test-admin")

    async def read_again(store):
        return await get(store, OTHER, "enc", kms=kms.client())
    assert fake.run(read_again) == data


def test_metadata_and_tagging_directives():
    fake, kms = setup()

    async def test(store):
        client = kms.client()
        src = PutHeader(bucket=BUCKET, key="src", content_type="text/plain", user_metadata={"a": "1"},
                        tags={"t": "x"}, content_length=5)
        await put_object(store, client, src, body(b"hello"))
        kept = await copy_object(store, client, CopyRequest(BUCKET, "src", dest(
            "kept", content_type="ignored/type", user_metadata={"b": "2"}, tags={"u": "y"})))
        assert kept.content_type == "text/plain" and dict(kept.user_metadata) == {"a": "1"}
        assert dict(kept.tags) == {"t": "x"}
        replaced = await copy_object(store, client, CopyRequest(BUCKET, "src", dest(
            "replaced", content_type="new/type", user_metadata={"b": "2"}, tags={"u": "y"}),
            replace_metadata=True, replace_tags=True))
        assert replaced.content_type == "new/type" and dict(replaced.user_metadata) == {"b": "2"}
        assert dict(replaced.tags) == {"u": "y"}
    run(fake, test)


@pytest.mark.parametrize("conditions", [
    Conditions(if_match='"0123"'),
    Conditions(if_none_match="*"),
    Conditions(if_unmodified_since=1),
    Conditions(if_modified_since=4_000_000_000),
])
def test_failed_source_conditions_are_412_before_any_kms_call(conditions):
    fake, kms = setup()

    async def test(store):
        await put(store, BUCKET, "src", b"x" * 1000, kms=kms.client(), key_name=KEY_A)
        kms.calls.clear()
        with pytest.raises(errors.PreconditionFailed):
            await copy_object(store, kms.client(), CopyRequest(BUCKET, "src", dest("d", KEY_B),
                                                               source_conditions=conditions))
        with pytest.raises(errors.NoSuchKey):
            await store.get_object_meta(BUCKET, "d")
    run(fake, test)
    assert kms.calls == {}


def test_matching_source_conditions_copy():
    fake, kms = setup()

    async def test(store):
        meta = await put(store, BUCKET, "src", b"abc", kms=kms.client(), key_name=KEY_A)
        copied = await copy_object(store, kms.client(), CopyRequest(
            BUCKET, "src", dest("d"), source_conditions=Conditions(if_match=f'"{meta.etag}"',
                                                                   if_modified_since=1)))
        assert copied.size == 3
    run(fake, test)


def test_upload_part_copy_with_a_source_range():
    fake, kms = setup()
    data = payload(SIZE, seed=3)

    async def test(store):
        client = kms.client()
        await put(store, BUCKET, "src", data, kms=client, key_name=KEY_A)
        upload_id, _ = await multipart.create_upload(store, client, dest("mp", KEY_B))
        part = dest("mp", part=PartTarget(upload_id, 2))
        meta = await copy_object(store, client, CopyRequest(BUCKET, "src", part,
                                                            source_range=RangeRequest(first=100, last=1_500_099)))
        assert meta.parts[0].number == 2 and meta.parts[0].size == 1_500_000 and len(meta.parts[0].key_nonce) == 32
        assert meta.encryption.kms_key_name == KEY_B  # the upload's key, not the source's
        for bad in (RangeRequest(first=0, last=SIZE), RangeRequest(first=5, last=4), RangeRequest(is_suffix=True,
                                                                                                    suffix_length=3)):
            with pytest.raises(errors.InvalidArgument):
                await copy_object(store, client, CopyRequest(BUCKET, "src", part, source_range=bad))
        with pytest.raises(errors.NoSuchUpload):
            await copy_object(store, client, CopyRequest(BUCKET, "src", dest("mp", part=PartTarget("f" * 32, 1))))
        with pytest.raises(errors.InvalidRequest):  # a range belongs to part copies only
            await copy_object(store, client, CopyRequest(BUCKET, "src", dest("x"),
                                                         source_range=RangeRequest(first=0, last=1)))
        return upload_id
    upload_id = run(fake, test)
    assert fake.member_drive(0).copy_of(naming.SYSTEM_BUCKET, naming.part_key(BUCKET, upload_id, 2))


def test_servicer_wires_create_upload_part_and_copy():
    """The new RPCs through the generated stubs (in-process channel): protobuf in, protobuf out."""
    fake, kms = setup()

    async def test(store):
        stub = crypto_pb2_grpc.CryptoServiceStub(InProcessChannel(CryptoServicer(store, kms.client())))
        created = await stub.CreateMultipartUpload(crypto_pb2.CreateMultipartUploadRequest(
            header=crypto_pb2.PutObjectHeader(bucket=BUCKET, key="mp", sse_kms=crypto_pb2.SseKmsRequest(
                key_name=KEY_A, key_id="arn:aws:kms:key-a"))))
        assert created.record.upload.upload_id == created.upload_id
        assert created.record.encryption.kms_key_id == "arn:aws:kms:key-a"

        async def part_stream():
            yield crypto_pb2.PutObjectRequest(header=crypto_pb2.PutObjectHeader(
                bucket=BUCKET, key="mp", content_length=4,
                part=crypto_pb2.PartTarget(upload_id=created.upload_id, part_number=1)))
            yield crypto_pb2.PutObjectRequest(data=b"part")
            yield crypto_pb2.PutObjectRequest(end=crypto_pb2.PutObjectEnd(size=4))
        answer = await stub.PutObject(part_stream())
        assert answer.meta.parts[0].number == 1 and answer.meta.encryption.kms_key_name == KEY_A

        await put(store, BUCKET, "src", b"source bytes")
        copied = await stub.CopyObject(crypto_pb2.CopyObjectRequest(
            source_bucket=BUCKET, source_key="src",
            destination=crypto_pb2.PutObjectHeader(bucket=BUCKET, key="dst", sse_kms=crypto_pb2.SseKmsRequest(
                key_name=KEY_B))))
        assert copied.meta.encryption.kms_key_name == KEY_B and copied.meta.size == 12
        assert await get(store, BUCKET, "dst", kms=kms.client()) == b"source bytes"
    run(fake, test)


def test_copy_between_sse_c_and_kms():
    fake, kms = setup()
    customer, other = os.urandom(32), os.urandom(32)
    data = payload(300_000, seed=5)

    async def test(store):
        client = kms.client()
        await put_object(store, client, PutHeader(bucket=BUCKET, key="c", customer_key=customer,
                                                  content_length=len(data)), body(data))
        with pytest.raises(errors.CustomerKeyMismatch):
            await copy_object(store, client, CopyRequest(BUCKET, "c", dest("k", KEY_A), source_customer_key=other))
        with pytest.raises(errors.InvalidRequest):  # an SSE-C source needs its key
            await copy_object(store, client, CopyRequest(BUCKET, "c", dest("k", KEY_A)))
        to_kms = await copy_object(store, client, CopyRequest(BUCKET, "c", dest("k", KEY_A),
                                                              source_customer_key=customer))
        assert to_kms.encryption.domain == "SSE-KMS"
        assert await get(store, BUCKET, "k", kms=client) == data
        # Back to SSE-C under another customer key, onto the source itself.
        to_c = await copy_object(store, client, CopyRequest(BUCKET, "k", dest("c", customer_key=other)))
        assert to_c.encryption.domain == "SSE-C" and to_c.encryption.iv != to_kms.encryption.iv
        reader = await open_object(store, client, BUCKET, "c", None, customer_key=other)
        assert b"".join([c async for c in reader.chunks()]) == data
    run(fake, test)
