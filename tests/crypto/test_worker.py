"""The crypto worker through real gRPC with mTLS: a real kms and 4 real storage nodes."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import time

import grpc
import pytest
import xxhash

from sealstore import errors
from sealstore.v1 import crypto_pb2, kms_pb2
from sealstore.erasure import coder as erasure
from services.crypto import dare
from services.crypto.put_pipeline import STRIPE_SIZE

MiB = 1 << 20
KEY = "bucket-key"
DISABLED_KEY = "soon-disabled"


@pytest.fixture(scope="module")
def setup(cluster):
    kms = cluster.admin_kms()
    for name in (KEY, DISABLED_KEY):
        kms.CreateKey(kms_pb2.CreateKeyRequest(name=name), timeout=10)

    async def make(store):
        await store.make_bucket("bkt")
        await store.make_bucket("plain")
    cluster.run_store(make)
    return cluster


def put(stub, bucket, key, data: bytes, *, sse: str | None = KEY, context: str = "", chunk: int = 300_000,
        end: bool = True, end_size: int | None = None, content_length: int | None = None, fail_after: int = -1):
    def requests():
        header = crypto_pb2.PutObjectHeader(bucket=bucket, key=key, content_type="application/x-test",
                                            user_metadata={"color": "blue"},
                                            content_length=len(data) if content_length is None else content_length)
        if sse is not None:
            header.sse_kms.CopyFrom(crypto_pb2.SseKmsRequest(key_name=sse, context_json=context))
        yield crypto_pb2.PutObjectRequest(header=header)
        for n, i in enumerate(range(0, len(data), chunk)):
            if n == fail_after:
                raise RuntimeError("client went away")
            yield crypto_pb2.PutObjectRequest(data=data[i:i + chunk])
        if end:
            yield crypto_pb2.PutObjectRequest(end=crypto_pb2.PutObjectEnd(
                size=len(data) if end_size is None else end_size))
    return stub.PutObject(requests(), timeout=60).meta


def get(stub, bucket, key, rng: crypto_pb2.ByteRange | None = None):
    """(head, data, number of data messages); typed error if the call fails."""
    request = crypto_pb2.GetObjectRequest(bucket=bucket, key=key)
    if rng is not None:
        request.range.CopyFrom(rng)
    head, chunks = None, []
    for msg in stub.GetObject(request, timeout=60):
        if msg.WhichOneof("message") == "head":
            assert head is None and not chunks, "head comes once, first"
            head = msg.head
        else:
            assert head is not None
            assert 0 < len(msg.data) <= MiB
            chunks.append(msg.data)
    return head, b"".join(chunks), len(chunks)


def typed(exc_info) -> errors.SealstoreError:
    return errors.from_rpc_error(exc_info.value)


def pattern(size: int, seed: int = 0) -> bytes:
    block = hashlib.sha256(f"{seed}".encode()).digest() * 2048  # 64 KiB, recognisable
    return (block * (size // len(block) + 1))[:size]


@pytest.mark.parametrize("size", [0, 1, 65536, MiB + 17, 5 * MiB + 3])
def test_encrypted_round_trip(setup, size):
    stub = setup.worker()
    data = os.urandom(size)
    meta = put(stub, "bkt", f"obj-{size}", data)
    assert meta.size == size
    assert meta.stored_size == dare.encrypted_size(size)
    assert meta.erasure.data_shards == 2 and meta.erasure.parity_shards == 2
    assert meta.erasure.stripe_count == erasure.stripe_count(dare.encrypted_size(size), STRIPE_SIZE)
    enc = meta.encryption
    assert enc.cipher == "AES-256-GCM" and enc.kms_key_name == KEY and enc.domain == "SSE-KMS"
    assert enc.seal_algorithm == "DAREv2-HMAC-SHA256" and len(enc.sealed_oek) == 64 and len(enc.iv) == 32
    assert enc.encrypted_dek and enc.context_json == ""
    assert len(meta.etag) == 32 and meta.etag != hashlib.md5(data).hexdigest()
    head, body, _ = get(stub, "bkt", f"obj-{size}")
    assert body == data
    assert (head.offset, head.length, head.is_range) == (0, size, False)
    assert head.meta.data_id == meta.data_id and head.meta.user_metadata["color"] == "blue"
    assert head.meta.content_type == "application/x-test"


def test_plain_round_trip_has_md5_etag_and_no_envelope(setup):
    stub = setup.worker()
    data = os.urandom(2 * MiB + 5)
    meta = put(stub, "plain", "p", data, sse=None)
    assert meta.etag == hashlib.md5(data).hexdigest()
    assert not meta.HasField("encryption") and meta.stored_size == len(data)
    head, body, _ = get(stub, "plain", "p", crypto_pb2.ByteRange(first=MiB - 3, last=MiB + 10))
    assert body == data[MiB - 3:MiB + 11] and head.is_range


def test_sse_kms_etag_is_xxh3_of_ciphertext_on_drives(setup):
    data = os.urandom(1000)
    meta = put(setup.worker(), "bkt", "etag", data)
    assert meta.etag != hashlib.md5(data).hexdigest()
    assert meta.etag == format(int(meta.etag, 16), "032x") and len(meta.etag) == 32
    assert meta.etag != xxhash.xxh3_128_hexdigest(data)


@pytest.mark.parametrize("rng,start,length", [
    (crypto_pb2.ByteRange(first=0, last=0), 0, 1),
    (crypto_pb2.ByteRange(first=65535, last=65536), 65535, 2),
    (crypto_pb2.ByteRange(first=65536, last=-1), 65536, 3 * MiB + 1 - 65536),
    (crypto_pb2.ByteRange(first=STRIPE_SIZE - 5, last=STRIPE_SIZE + 70000),
     STRIPE_SIZE - 5, 70006),
    (crypto_pb2.ByteRange(first=3 * MiB - 2, last=10 * MiB), 3 * MiB - 2, 3),
    (crypto_pb2.ByteRange(is_suffix=True, suffix_length=100), 3 * MiB + 1 - 100, 100),
    (crypto_pb2.ByteRange(is_suffix=True, suffix_length=10 * MiB), 0, 3 * MiB + 1),
    (crypto_pb2.ByteRange(first=MiB, last=2 * MiB - 1), MiB, MiB),
])
def test_ranges(setup, rng, start, length):
    stub = setup.worker()
    data = pattern(3 * MiB + 1, seed=7)
    if not hasattr(test_ranges, "stored"):
        put(stub, "bkt", "ranged", data)
        test_ranges.stored = True
    head, body, _ = get(stub, "bkt", "ranged", rng)
    assert (head.offset, head.length, head.is_range) == (start, length, True)
    assert body == data[start:start + length]


def test_unsatisfiable_range(setup):
    stub = setup.worker()
    put(stub, "bkt", "small", b"12345")
    with pytest.raises(grpc.RpcError) as info:
        get(stub, "bkt", "small", crypto_pb2.ByteRange(first=5, last=9))
    assert isinstance(typed(info), errors.InvalidRange)


def test_context_is_bound_and_stored(setup):
    stub = setup.worker()
    ctx = '{"department":"finance"}'
    meta = put(stub, "bkt", "ctx", b"with context", context=ctx)
    assert meta.encryption.context_json == ctx
    assert get(stub, "bkt", "ctx")[1] == b"with context"


def _files_under(paths) -> list:
    return [p for d in paths for p in d.rglob("*") if p.is_file()]


def test_drives_hold_ciphertext_not_plaintext(setup):
    stub = setup.worker()
    # Big enough (296 KB, 148 KiB per data shard) to be stored in shard files, not inline.
    marker = b"SEALSTORE-PLAINTEXT-MARKER-0123456789" * 8000
    put(stub, "plain", "visible", marker, sse=None)
    put(stub, "bkt", "hidden", marker)
    shards = {p: p.read_bytes() for p in _files_under(setup.drives()) if p.suffix == ".shard"}
    plain_id = next(iter(get(stub, "plain", "visible")[0].meta.data_id for _ in [0]))
    enc_id = get(stub, "bkt", "hidden")[0].meta.data_id
    plain_shards = [b for p, b in shards.items() if p.stem == plain_id]
    enc_shards = [b for p, b in shards.items() if p.stem == enc_id]
    assert len(plain_shards) == 4 and len(enc_shards) == 4
    # Data fragments of an unencrypted object contain the plaintext; no encrypted shard does.
    assert any(marker[:200] in b for b in plain_shards)
    assert not any(marker[:40] in b for b in enc_shards)
    every_file = b"".join(p.read_bytes() for p in _files_under(setup.drives()))
    assert b"SEALSTORE-PLAINTEXT-MARKER" in every_file  # sanity: the plain object
    assert marker[:40] not in b"".join(enc_shards)


def test_chacha_worker_objects_are_read_by_any_worker(setup):
    data = os.urandom(200_000)
    meta = put(setup.worker("chacha"), "bkt", "chacha", data)
    assert meta.encryption.cipher == "ChaCha20-Poly1305"
    assert get(setup.worker("aes"), "bkt", "chacha")[1] == data


def test_missing_key_on_put_is_kms_not_found_and_nothing_visible(setup):
    stub = setup.worker()
    with pytest.raises(grpc.RpcError) as info:
        put(stub, "bkt", "nokey", b"data", sse="no-such-key")
    assert isinstance(typed(info), errors.KMSNotFound)
    with pytest.raises(grpc.RpcError) as info:
        get(stub, "bkt", "nokey")
    assert isinstance(typed(info), errors.NoSuchKey)


def test_put_into_missing_bucket(setup):
    with pytest.raises(grpc.RpcError) as info:
        put(setup.worker(), "no-such-bucket", "k", b"x")
    assert isinstance(typed(info), errors.NoSuchBucket)


def test_get_missing_key(setup):
    with pytest.raises(grpc.RpcError) as info:
        get(setup.worker(), "bkt", "never-written")
    assert isinstance(typed(info), errors.NoSuchKey)


def test_disabled_key_fails_before_any_data(setup):
    stub = setup.worker()
    data = os.urandom(3 * MiB)
    put(stub, "bkt", "will-be-locked", data, sse=DISABLED_KEY)
    kms = setup.admin_kms()
    kms.DisableKey(kms_pb2.KeyRequest(name=DISABLED_KEY), timeout=10)
    try:
        received = []
        request = crypto_pb2.GetObjectRequest(bucket="bkt", key="will-be-locked")
        with pytest.raises(grpc.RpcError) as info:
            for msg in stub.GetObject(request, timeout=30):
                received.append(msg)
        assert isinstance(typed(info), errors.KMSDisabled)
        assert received == [], "the error must arrive before the head and any data"
        with pytest.raises(grpc.RpcError) as info:
            put(stub, "bkt", "other", b"x", sse=DISABLED_KEY)
        assert isinstance(typed(info), errors.KMSDisabled)
    finally:
        kms.EnableKey(kms_pb2.KeyRequest(name=DISABLED_KEY), timeout=10)
    assert get(stub, "bkt", "will-be-locked")[1] == data


@pytest.mark.parametrize("broken", ["no-end", "wrong-size", "client-error"])
def test_broken_upload_leaves_previous_version(setup, broken):
    stub = setup.worker()
    key = f"keep-{broken}"
    v1 = os.urandom(100_000)
    put(stub, "bkt", key, v1)
    v2 = os.urandom(2 * MiB)
    with pytest.raises(grpc.RpcError) as info:
        if broken == "no-end":
            put(stub, "bkt", key, v2, end=False)
        elif broken == "wrong-size":
            put(stub, "bkt", key, v2, end_size=len(v2) + 1, content_length=-1)
        else:
            put(stub, "bkt", key, v2, fail_after=3)
    if broken != "client-error":
        assert isinstance(typed(info), errors.IncompleteBody)
    assert get(stub, "bkt", key)[1] == v1


def test_no_temporary_shards_linger_after_aborts(setup):
    stub = setup.worker()
    with pytest.raises(grpc.RpcError):
        put(stub, "bkt", "aborted", os.urandom(3 * MiB), end=False)
    with pytest.raises(grpc.RpcError):
        put(stub, "bkt", "aborted", os.urandom(3 * MiB), fail_after=5)

    async def metas(store):
        return await store.get_object_metas("bkt", "aborted")
    assert setup.run_store(metas) == [None] * 4
    # Every drive keeps uploads in progress in <drive>/tmp; aborts must leave it empty.
    deadline = time.monotonic() + 5
    leftovers = ["?"]
    while leftovers and time.monotonic() < deadline:
        leftovers = [p for d in setup.drives() for p in (d / "tmp").iterdir()]
        time.sleep(0.1)
    assert leftovers == []


def test_corrupted_shard_is_routed_around(setup):
    stub = setup.worker()
    data = os.urandom(2 * MiB)
    meta = put(stub, "bkt", "corrupt-me", data)
    shard0 = next(p for p in _files_under(setup.drives()[:1]) if p.name == f"{meta.data_id}.shard")
    raw = bytearray(shard0.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard0.write_bytes(bytes(raw))
    assert get(stub, "bkt", "corrupt-me")[1] == data


def _object_dirs(setup, key: str) -> list:
    """Per drive, the folder holding meta.json and the shard of `key` in bucket bkt."""
    found = []
    for meta_file in sorted(p for d in setup.drives() for p in d.rglob("meta.json")):
        if json.loads(meta_file.read_text())["key"] == key:
            found.append(meta_file.parent)
    assert len(found) == 4
    return found


def test_ciphertext_from_another_object_is_never_returned(setup):
    """Shards that pass every storage checksum but hold another object's ciphertext."""
    stub = setup.worker()
    a, b = os.urandom(MiB + 5), os.urandom(MiB + 5)
    meta_a = put(stub, "bkt", "swap-a", a)
    meta_b = put(stub, "bkt", "swap-b", b)
    for dir_a, dir_b in zip(_object_dirs(setup, "swap-a"), _object_dirs(setup, "swap-b")):
        (dir_a / f"{meta_a.data_id}.shard").write_bytes((dir_b / f"{meta_b.data_id}.shard").read_bytes())
    received = []
    with pytest.raises(grpc.RpcError) as info:
        for msg in stub.GetObject(crypto_pb2.GetObjectRequest(bucket="bkt", key="swap-a"), timeout=30):
            received.append(msg.WhichOneof("message"))
    assert isinstance(typed(info), errors.ObjectTampered)
    assert received == ["head"], "no plaintext may be sent for a package that fails authentication"
    assert get(stub, "bkt", "swap-b")[1] == b


def test_tampered_envelope_fails_before_any_data(setup):
    stub = setup.worker()
    meta = put(stub, "bkt", "bad-iv", b"some secret bytes")
    for obj_dir in _object_dirs(setup, "bad-iv"):
        raw = json.loads((obj_dir / "meta.json").read_text())
        raw["encryption"]["iv"] = base64.b64encode(bytes(32)).decode()
        (obj_dir / "meta.json").write_text(json.dumps(raw))
    received = []
    with pytest.raises(grpc.RpcError) as info:
        for msg in stub.GetObject(crypto_pb2.GetObjectRequest(bucket="bkt", key="bad-iv"), timeout=30):
            received.append(msg)
    assert isinstance(typed(info), errors.ObjectTampered)
    assert received == []
    assert meta.encryption.iv != bytes(32)


# Last in this module: the restarted node may miss writes until its channel reconnects.
def test_one_storage_node_down(setup):
    stub = setup.worker()
    data = os.urandom(3 * MiB + 11)
    put(stub, "bkt", "degraded", data)
    victim = setup.storage[0]  # holds data shard 0: reads must use parity
    victim.stop()
    try:
        head, body, _ = get(stub, "bkt", "degraded")
        assert body == data
        rng = crypto_pb2.ByteRange(first=MiB + 3, last=2 * MiB)
        assert get(stub, "bkt", "degraded", rng)[1] == data[MiB + 3:2 * MiB + 1]
        # write quorum is 3 of 4 (2 data + 2 parity): a PUT still succeeds
        more = os.urandom(MiB + 1)
        put(stub, "bkt", "written-degraded", more)
        assert get(stub, "bkt", "written-degraded")[1] == more
    finally:
        victim.start(setup.data)
        victim.wait()
