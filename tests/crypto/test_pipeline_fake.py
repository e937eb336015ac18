"""The worker's PUT and GET pipelines in-process: the storage fake for the drives and the real kms
(KeyManager and servicer, in-memory keystore) behind the worker's real KmsClient."""
from __future__ import annotations

import pytest

from sealstore import errors
from tests.fakes.kms import InProcessKms
from tests.fakes.objects import get, payload, put
from tests.fakes.storage import FakeStorage

BUCKET = "pipeline-bucket"
KEY_NAME = "bucket-key"
SIZES = [0, 1, 1000, 3 * 1024 * 1024 + 17]
ONE_STRIPE = 700 * 1024  # above the inline limit (128 KiB per drive), within one stripe


def run(fake: FakeStorage, kms: InProcessKms, test):
    async def go(store):
        await store.make_bucket(BUCKET)
        return await test(store, kms.client())
    return fake.run(go)


def stored_bytes(fake: FakeStorage, key: str) -> bytes:
    return b"".join(b for i in range(4) for b in fake.member_drive(i).copy_of(BUCKET, key).blocks)


@pytest.mark.parametrize("size", SIZES)
def test_sse_kms_round_trip_and_ranges(size):
    fake, kms = FakeStorage(), InProcessKms()
    kms.create_key(KEY_NAME)
    data = payload(size)

    async def test(store, client):
        meta = await put(store, BUCKET, "k", data, kms=client, key_name=KEY_NAME)
        assert meta.encryption.kms_key_name == KEY_NAME and meta.size == size
        assert await get(store, BUCKET, "k", kms=client) == data
        if size > 2:
            assert await get(store, BUCKET, "k", kms=client, first=1, last=size - 2) == data[1:size - 1]
            assert await get(store, BUCKET, "k", kms=client, first=size - 1) == data[-1:]
    run(fake, kms, test)
    if size >= 64:  # the drives hold ciphertext: no run of the plaintext appears in the shards
        assert data[:64] not in stored_bytes(fake, "k")
    assert kms.calls == {"GenerateKey": 1, "Decrypt": 1 + 2 * (size > 2)}


def test_missing_or_disabled_key_fails_before_any_drive_is_written():
    fake, kms = FakeStorage(), InProcessKms()
    kms.create_key(KEY_NAME)
    kms.manager.disable_key(KEY_NAME, "test-admin")

    async def test(store, client):
        with pytest.raises(errors.KMSNotFound):
            await put(store, BUCKET, "k", payload(1000), kms=client, key_name="no-such-key")
        with pytest.raises(errors.KMSDisabled):
            await put(store, BUCKET, "k", payload(3 * 1024 * 1024), kms=client, key_name=KEY_NAME)
    run(fake, kms, test)
    assert sum(n.calls["WriteShard"] + n.calls["CommitObject"] for n in fake.nodes) == 0


@pytest.mark.parametrize("announced", [3 * 1024 * 1024, ONE_STRIPE], ids=["shorter", "longer-than-one-stripe"])
def test_a_body_other_than_announced_is_refused_and_leaves_nothing(announced):
    fake, kms = FakeStorage(), InProcessKms()
    kms.create_key(KEY_NAME)

    async def test(store, client):
        with pytest.raises(errors.IncompleteBody):
            await put(store, BUCKET, "k", payload(2 * 1024 * 1024), kms=client, key_name=KEY_NAME,
                      content_length=announced)
        with pytest.raises(errors.NoSuchKey):
            await store.get_object_meta(BUCKET, "k")
    run(fake, kms, test)
    assert not any(d.uploads or d.objects for n in fake.nodes for d in n.drives)
    if announced <= ONE_STRIPE:  # held for its commit: no drive heard of it at all
        assert sum(n.calls["WriteShard"] + n.calls["CommitObject"] for n in fake.nodes) == 0


def test_get_reads_around_bad_shards_until_fewer_than_k_remain():
    fake, kms = FakeStorage(), InProcessKms()
    kms.create_key(KEY_NAME)
    data = payload(3 * 1024 * 1024)

    async def test(store, client):
        await put(store, BUCKET, "k", data, kms=client, key_name=KEY_NAME)
        fake.member_drive(0).rot_block(BUCKET, "k", 1)
        fake.member_drive(1).lose_shard(BUCKET, "k")
        assert await get(store, BUCKET, "k", kms=client) == data  # members 2, 3 decode it
        fake.member_drive(2).rot_block(BUCKET, "k", 2)
        with pytest.raises(errors.ObjectTampered):
            await get(store, BUCKET, "k", kms=client)
    run(fake, kms, test)


def test_tampered_ciphertext_is_never_returned():
    fake, kms = FakeStorage(), InProcessKms()
    kms.create_key(KEY_NAME)
    data = payload(1000)

    async def test(store, client):
        await put(store, BUCKET, "k", data, kms=client, key_name=KEY_NAME)
        for i in range(4):  # the same flipped byte in every copy's fragment: decodes, fails authentication
            copy = fake.member_drive(i).copy_of(BUCKET, "k")
            if i < 2:  # data fragments hold the ciphertext
                block = bytearray(copy.blocks[0])
                block[-1] ^= 0x01
                copy.blocks[0] = bytes(block)
        fake.nodes[2].offline = fake.nodes[3].offline = True
        with pytest.raises(errors.ObjectTampered):
            await get(store, BUCKET, "k", kms=client)
    run(fake, kms, test)


def test_an_object_read_under_another_name_is_refused():
    fake, kms = FakeStorage(), InProcessKms()
    kms.create_key(KEY_NAME)

    async def test(store, client):
        await put(store, BUCKET, "a", payload(1000, 1), kms=client, key_name=KEY_NAME)
        await put(store, BUCKET, "b", payload(1000, 2), kms=client, key_name=KEY_NAME)
        for i in range(4):  # every drive's copy of "b" replaced by "a"'s, renamed: DEK bound to "a"
            d = fake.member_drive(i)
            moved = d.copy_of(BUCKET, "a")
            d.objects[(BUCKET, "b")].blocks = list(moved.blocks)
            d.objects[(BUCKET, "b")].meta.encryption.CopyFrom(moved.meta.encryption)
        with pytest.raises((errors.ObjectTampered, errors.KMSInvalidCiphertext)):
            await get(store, BUCKET, "b", kms=client)
    run(fake, kms, test)



@pytest.mark.parametrize("size, announced, streamed", [
    (ONE_STRIPE, True, False),  # held and sent with the commit: no shard stream
    (2 * 1024 * 1024, True, True),  # two stripes: streamed
    (ONE_STRIPE, False, True),  # size not announced (aws-chunked without a decoded length): streamed
])
def test_a_one_stripe_object_travels_inside_its_commit(size, announced, streamed):
    fake, kms = FakeStorage(), InProcessKms()
    kms.create_key(KEY_NAME)
    data = payload(size, seed=3)

    async def test(store, client):
        meta = await put(store, BUCKET, "k", data, kms=client, key_name=KEY_NAME,
                         content_length=None if announced else -1)
        assert not meta.inline and meta.erasure.stripe_count == (1 if size <= ONE_STRIPE else 2)
        assert await get(store, BUCKET, "k", kms=client) == data
        assert await get(store, BUCKET, "k", kms=client, first=size // 2, last=size // 2 + 99) == \
            data[size // 2:size // 2 + 100]
    run(fake, kms, test)
    assert sum(n.calls["WriteShard"] for n in fake.nodes) == (4 if streamed else 0)
    assert sum(n.calls["CommitObject"] for n in fake.nodes) == 4
    assert data[:64] not in stored_bytes(fake, "k")
    assert not any(d.uploads for n in fake.nodes for d in n.drives)


def test_a_one_stripe_commit_below_quorum_is_undone_and_leaves_nothing():
    fake, kms = FakeStorage(), InProcessKms()
    kms.create_key(KEY_NAME)

    async def test(store, client):
        await put(store, BUCKET, "k", payload(ONE_STRIPE, seed=1), kms=client, key_name=KEY_NAME)
        for node in fake.nodes[:2]:
            node.fail("CommitObject", errors.StorageFull("drive full"))
        with pytest.raises(errors.SealstoreError):
            await put(store, BUCKET, "k", payload(ONE_STRIPE, seed=2), kms=client, key_name=KEY_NAME)
        for node in fake.nodes:
            node.heal()
        # The failed PUT never became visible: the first version is still what a GET returns.
        assert await get(store, BUCKET, "k", kms=client) == payload(ONE_STRIPE, seed=1)
    run(fake, kms, test)
    assert not any(d.uploads for n in fake.nodes for d in n.drives)
