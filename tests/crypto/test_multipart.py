"""Multipart uploads through the worker's real pipelines, in-process: the storage fake for the
drives and the real kms (in-memory keystore) behind the worker's real KmsClient."""
from __future__ import annotations

import hashlib
import os

import pytest

from sealstore import config, errors
from sealstore import multipart as naming
from sealstore.v1 import types_pb2
from services.crypto import dare, keys, multipart
from services.crypto.sealing import PartTarget, PutHeader, SseKms
from tests.fakes.kms import InProcessKms
from tests.fakes.objects import body, payload
from tests.fakes.storage import FakeStorage

BUCKET = "mp-bucket"
KEY_NAME = "bucket-key"
PART = 3 * 1024 * 1024 + 5  # several stripes, not a whole number of packages


def with_system_bucket(fake: FakeStorage) -> FakeStorage:
    """The drives' `.multipart` bucket (the storage nodes make it themselves; the fake's MakeBucket
    applies the client-facing name rules, which refuse a leading dot)."""
    for node in fake.nodes:
        for drive in node.drives:
            drive.buckets[naming.SYSTEM_BUCKET] = types_pb2.BucketInfo(name=naming.SYSTEM_BUCKET)
    return fake


def run(fake: FakeStorage, kms: InProcessKms, test):
    async def go(store):
        await store.make_bucket(BUCKET)
        return await test(store, kms.client())
    return fake.run(go)


def header(key: str = "obj", *, sse: bool = True, upload_id: str = "", number: int = 0,
           size: int = -1) -> PutHeader:
    return PutHeader(bucket=BUCKET, key=key, sse_kms=SseKms(KEY_NAME) if sse else None, content_length=size,
                     part=PartTarget(upload_id, number) if number else None, content_type="text/x-parts",
                     user_metadata={"who": "me"}, tags={"t": "1"})


async def upload(store, client, upload_id: str, number: int, data: bytes, *, key: str = "obj"):
    h = header(key, upload_id=upload_id, number=number, size=len(data))
    return await multipart.upload_part(store, client, h, body(data))


def stored_part(fake: FakeStorage, upload_id: str, number: int, member: int = 0):
    return fake.member_drive(member).copy_of(naming.SYSTEM_BUCKET, naming.part_key(BUCKET, upload_id, number))


def test_part_key_known_answer():
    # HMAC-SHA256(OEK, "sealstore multipart part key" || LE32(7) || nonce), frozen.
    key = keys.derive_part_key(bytes(range(32)), 7, bytes(range(32, 64)))
    assert key.hex() == "b4e787796509ca7a566a265fe3b103a0ce8d8bfadd9ed4917b3927e330a9a194"
    assert keys.derive_part_key(bytes(range(32)), 8, bytes(range(32, 64))) != key
    assert keys.derive_part_key(bytes(range(32)), 7, bytes(range(33, 65))) != key
    with pytest.raises(errors.ObjectTampered):
        keys.derive_part_key(bytes(range(32)), 7, b"short")


def test_create_upload_seals_once_and_commits_the_record():
    fake, kms = with_system_bucket(FakeStorage()), InProcessKms()
    kms.create_key(KEY_NAME)

    async def test(store, client):
        upload_id, record = await multipart.create_upload(store, client, header())
        naming.validate_upload_id(upload_id)
        stored = await store.get_object_meta(naming.SYSTEM_BUCKET, naming.record_key(BUCKET, upload_id))
        assert stored.upload == types_pb2.MultipartUpload(bucket=BUCKET, key="obj", upload_id=upload_id,
                                                          initiated_ns=record.upload.initiated_ns)
        assert stored.encryption.kms_key_name == KEY_NAME and stored.encryption.sealed_oek
        assert stored.content_type == "text/x-parts" and dict(stored.user_metadata) == {"who": "me"}
        assert dict(stored.tags) == {"t": "1"} and stored.inline
        return upload_id
    run(fake, kms, test)
    assert kms.calls == {"GenerateKey": 1}


def test_create_upload_in_a_missing_bucket_is_refused_before_the_kms():
    fake, kms = with_system_bucket(FakeStorage()), InProcessKms()
    kms.create_key(KEY_NAME)

    async def test(store, client):
        with pytest.raises(errors.NoSuchBucket):
            await multipart.create_upload(store, client, PutHeader(bucket="nope", key="k", sse_kms=SseKms(KEY_NAME)))
    run(fake, kms, test)
    assert kms.calls == {}


def test_a_part_uploaded_again_gets_a_fresh_nonce_and_different_stored_bytes():
    fake, kms = with_system_bucket(FakeStorage()), InProcessKms()
    kms.create_key(KEY_NAME)
    data = payload(PART, seed=4)

    async def test(store, client):
        upload_id, _ = await multipart.create_upload(store, client, header())
        first = await upload(store, client, upload_id, 2, data)
        first_blocks = list(stored_part(fake, upload_id, 2).blocks)
        second = await upload(store, client, upload_id, 2, data)
        return upload_id, first, first_blocks, second
    upload_id, first, first_blocks, second = run(fake, kms, test)
    a, b = first.parts[0], second.parts[0]
    assert a.number == b.number == 2 and a.size == b.size == PART
    assert len(a.key_nonce) == len(b.key_nonce) == 32 and a.key_nonce != b.key_nonce
    assert a.data_id != b.data_id and a.stored_size == dare.encrypted_size(PART)
    # SSE-KMS part ETags are no MD5 of the plaintext (AWS) and differ with the ciphertext.
    assert a.etag != hashlib.md5(data).hexdigest() and a.etag != b.etag
    current = stored_part(fake, upload_id, 2)
    assert current.meta.parts[0].key_nonce == b.key_nonce
    assert current.blocks != first_blocks  # same plaintext, other key: other ciphertext
    assert data[:64] not in b"".join(current.blocks)
    assert first.encryption.kms_key_name == KEY_NAME  # for the response's SSE headers
    assert not current.meta.HasField("encryption")  # the record alone holds the sealed key
    assert kms.calls == {"GenerateKey": 1, "Decrypt": 2}


def test_unencrypted_part_etag_is_the_md5_and_parts_are_never_inline():
    fake, kms = with_system_bucket(FakeStorage()), InProcessKms()
    data = b"small part"

    async def test(store, client):
        upload_id, record = await multipart.create_upload(store, client, header(sse=False))
        assert not record.HasField("encryption")
        meta = await multipart.upload_part(store, client, header(sse=False, upload_id=upload_id, number=1,
                                                                  size=len(data)), body(data))
        return upload_id, meta
    upload_id, meta = run(fake, kms, test)
    assert meta.etag == meta.parts[0].etag == hashlib.md5(data).hexdigest()
    assert meta.parts[0].key_nonce == b"" and not meta.inline
    assert b"".join(stored_part(fake, upload_id, 1).blocks)  # a shard file, not inline
    assert kms.calls == {}


def test_part_of_an_unknown_or_foreign_upload_is_no_such_upload():
    fake, kms = with_system_bucket(FakeStorage()), InProcessKms()
    kms.create_key(KEY_NAME)

    async def test(store, client):
        upload_id, _ = await multipart.create_upload(store, client, header("obj"))
        for bad_id, key in ((upload_id, "other"), ("0" * 32, "obj"), ("not-an-id", "obj")):
            with pytest.raises(errors.NoSuchUpload):
                await upload(store, client, bad_id, 1, b"x", key=key)
        with pytest.raises(errors.InvalidArgument):
            await upload(store, client, upload_id, 10_001, b"x")
        with pytest.raises(errors.EntityTooLarge):
            await multipart.upload_part(store, client, header(upload_id=upload_id, number=1,
                                                              size=naming.MAX_PART_SIZE + 1), body(b""))
    run(fake, kms, test)
    assert kms.calls == {"GenerateKey": 1}  # refused before any Decrypt
    assert sum(n.calls["WriteShard"] for n in fake.nodes) == 0


def test_a_part_stored_after_its_upload_ended_is_removed():
    fake, kms = with_system_bucket(FakeStorage()), InProcessKms()

    async def test(store, client):
        upload_id, _ = await multipart.create_upload(store, client, header(sse=False))
        record_key = naming.record_key(BUCKET, upload_id)

        async def aborting_body():
            yield b"abc"
            await store.delete_object(naming.SYSTEM_BUCKET, record_key)  # an abort lands mid-part
            async for item in body(b"def", end=6):
                yield item
        with pytest.raises(errors.NoSuchUpload):
            await multipart.upload_part(store, client, header(sse=False, upload_id=upload_id, number=1),
                                        aborting_body())
        with pytest.raises(errors.NoSuchKey):
            await store.get_object_meta(naming.SYSTEM_BUCKET, naming.part_key(BUCKET, upload_id, 1))
    run(fake, kms, test)


def test_sse_c_parts_need_the_upload_customer_key():
    fake, kms = with_system_bucket(FakeStorage()), InProcessKms()
    customer, other = os.urandom(32), os.urandom(32)
    data = payload(100_000, seed=8)

    def part(upload_id: str, key: bytes | None) -> PutHeader:
        return PutHeader(bucket=BUCKET, key="obj", customer_key=key, content_length=len(data),
                         part=PartTarget(upload_id, 1))

    async def test(store, client):
        upload_id, record = await multipart.create_upload(store, client, PutHeader(
            bucket=BUCKET, key="obj", customer_key=customer))
        assert record.encryption.domain == keys.DOMAIN_SSE_C and record.encryption.customer_key_check
        with pytest.raises(errors.CustomerKeyMismatch):
            await multipart.upload_part(store, client, part(upload_id, other), body(data))
        with pytest.raises(errors.InvalidRequest):
            await multipart.upload_part(store, client, part(upload_id, None), body(data))
        meta = await multipart.upload_part(store, client, part(upload_id, customer), body(data))
        assert meta.etag != hashlib.md5(data).hexdigest() and len(meta.parts[0].key_nonce) == 32
        # A plain upload refuses SSE-C parameters on its parts.
        plain_id, _ = await multipart.create_upload(store, client, header(sse=False))
        with pytest.raises(errors.InvalidRequest):
            await multipart.upload_part(store, client, part(plain_id, customer), body(data))
        return upload_id
    upload_id = run(fake, kms, test)
    assert data[:64] not in b"".join(stored_part(fake, upload_id, 1).blocks)
    assert kms.calls == {}  # SSE-C never asks the kms
    # The refused parts wrote nothing: the commits are the two upload records and the one part
    # (a one-stripe part travels inside its commit: no shard stream).
    assert sum(n.calls["WriteShard"] for n in fake.nodes) == 0
    assert sum(n.calls["CommitObject"] for n in fake.nodes) == 3 * 4


def test_sse_s3_part_etag_is_the_md5_of_the_plaintext(monkeypatch):
    monkeypatch.setenv(config.ENV_SSE_S3_KEY, "site-sse-s3")
    fake, kms = with_system_bucket(FakeStorage()), InProcessKms()
    kms.create_key("site-sse-s3")
    data = payload(70_000, seed=2)

    async def test(store, client):
        upload_id, record = await multipart.create_upload(store, client, PutHeader(bucket=BUCKET, key="obj",
                                                                                   sse_s3=True))
        assert record.encryption.domain == keys.DOMAIN_SSE_S3
        return await multipart.upload_part(store, client, PutHeader(
            bucket=BUCKET, key="obj", content_length=len(data), part=PartTarget(upload_id, 1)), body(data))
    meta = run(fake, kms, test)
    assert meta.etag == hashlib.md5(data).hexdigest() and meta.stored_size == dare.encrypted_size(len(data))
    assert kms.calls == {"GenerateKey": 1, "Decrypt": 1}
