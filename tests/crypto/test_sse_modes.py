"""SSE-S3 and SSE-C through the worker's real pipelines over the storage fake and the real kms
(in-memory keystore): what is stored, what each read needs, and which kms calls each mode costs."""
from __future__ import annotations

import os

import pytest

from sealstore import errors
from services.crypto import keys
from services.crypto.get_pipeline import open_object
from services.crypto.put_pipeline import put_object
from services.crypto.sealing import PutHeader, SseKms, unseal_object_key
from tests.fakes.kms import InProcessKms
from tests.fakes.objects import body, payload
from tests.fakes.storage import FakeStorage

BUCKET = "modes-bucket"
SIZE = 300_000


def stored_bytes(fake: FakeStorage, key: str) -> bytes:
    out = b""
    for i in range(4):
        copy = fake.member_drive(i).copy_of(BUCKET, key)
        out += b"".join(copy.blocks)
    return out


async def read(store, client, key: str, customer_key: bytes | None = None) -> bytes:
    reader = await open_object(store, client, BUCKET, key, None, customer_key=customer_key)
    return b"".join([chunk async for chunk in reader.chunks()])


def run(fake: FakeStorage, kms: InProcessKms, test):
    async def go(store):
        await store.make_bucket(BUCKET)
        return await test(store, kms.client())
    return fake.run(go)


def test_sse_s3_is_sealed_under_the_deployment_key_without_client_context(monkeypatch):
    monkeypatch.setenv("SEALSTORE_SSE_S3_KEY", "site-sse-s3")
    fake, kms = FakeStorage(), InProcessKms()
    kms.create_key("site-sse-s3")
    data = payload(SIZE)

    async def test(store, client):
        meta = await put_object(store, client, PutHeader(bucket=BUCKET, key="k", sse_s3=True,
                                                         content_length=SIZE), body(data))
        enc = meta.encryption
        assert (enc.domain, enc.kms_key_name, enc.context_json, enc.kms_key_id) == ("SSE-S3", "site-sse-s3", "", "")
        assert not enc.customer_key_check
        assert await read(store, client, "k") == data
        # The key sealed under domain SSE-S3 does not open as SSE-KMS: the domain is bound in.
        enc.domain = "SSE-KMS"
        with pytest.raises(errors.ObjectTampered):
            await unseal_object_key(client, meta, BUCKET, "k")
    run(fake, kms, test)
    assert data[:64] not in stored_bytes(fake, "k")
    assert kms.calls == {"GenerateKey": 1, "Decrypt": 2}


def test_sse_c_stores_only_a_check_value_and_needs_the_key():
    fake, kms = FakeStorage(), InProcessKms()
    customer_key = os.urandom(32)
    data = payload(SIZE, seed=3)

    async def test(store, client):
        meta = await put_object(store, client, PutHeader(bucket=BUCKET, key="c", customer_key=customer_key,
                                                         content_length=SIZE), body(data))
        enc = meta.encryption
        assert enc.domain == "SSE-C" and not enc.kms_key_name and not enc.encrypted_dek
        assert enc.customer_key_check == keys.customer_key_check(customer_key, enc.iv)
        assert customer_key not in meta.SerializeToString()
        assert await read(store, client, "c", customer_key) == data
        with pytest.raises(errors.InvalidRequest):
            await read(store, client, "c")
        with pytest.raises(errors.CustomerKeyMismatch):
            await read(store, client, "c", os.urandom(32))
    run(fake, kms, test)
    assert data[:64] not in stored_bytes(fake, "c")
    assert customer_key not in stored_bytes(fake, "c")
    assert kms.calls == {}  # SSE-C never asks the kms


def test_customer_key_on_an_object_that_is_not_sse_c_is_refused():
    fake, kms = FakeStorage(), InProcessKms()
    kms.create_key("kms-key")
    data = payload(1000)

    async def test(store, client):
        await put_object(store, client, PutHeader(bucket=BUCKET, key="plain", content_length=1000), body(data))
        await put_object(store, client, PutHeader(bucket=BUCKET, key="kms", sse_kms=SseKms("kms-key"),
                                                  content_length=1000), body(data))
        for key in ("plain", "kms"):
            assert await read(store, client, key) == data
            with pytest.raises(errors.InvalidRequest) as err:
                await read(store, client, key, os.urandom(32))
            assert "not applicable" in err.value.message
    run(fake, kms, test)


def test_one_mode_per_write():
    fake, kms = FakeStorage(), InProcessKms()

    async def test(store, client):
        header = PutHeader(bucket=BUCKET, key="x", sse_s3=True, customer_key=os.urandom(32), content_length=10)
        with pytest.raises(errors.InvalidArgument):
            await put_object(store, client, header, body(b"0123456789"))
    run(fake, kms, test)
    assert sum(n.calls["WriteShard"] + n.calls["CommitObject"] for n in fake.nodes) == 0
