"""Four real storage node processes over mTLS, driven through ErasureSetClient."""
from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid

import grpc
import pytest
from pyeclib.ec_iface import ECDriver

from sealstore import errors
from sealstore.erasure.client import ErasureSetClient, StoredVersion
from sealstore.rpc import aio_channel
from sealstore.v1 import storage_pb2, storage_pb2_grpc, types_pb2

K, M = 2, 2
STRIPE = 64 * 1024  # small stripes keep the tests fast; the node does not care about the size
EC = ECDriver(k=K, m=M, ec_type="isa_l_rs_cauchy")


def run(cluster, scenario, role: str = "admin"):
    """Runs `scenario(client)` in a fresh event loop with a client holding `role`'s certificate:
    the admin (heal) may write shards, list and read node status, but only the gateway deletes
    buckets (sealstore/authz.py)."""
    async def main():
        client = ErasureSetClient(cluster.topology, cluster.certs, role, timeout=5)
        try:
            return await scenario(client)
        finally:
            await client.close()
    return asyncio.run(main())


def gateway_client(cluster) -> ErasureSetClient:
    """Bucket deletion (and the undo of a failed bucket creation) is the gateway's alone."""
    return ErasureSetClient(cluster.topology, cluster.certs, "gateway", timeout=5)


def encode(data: bytes) -> list[list[bytes]]:
    """fragments[member] = that member's blocks, one per stripe."""
    per_member: list[list[bytes]] = [[] for _ in range(K + M)]
    for off in range(0, len(data), STRIPE):
        for i, frag in enumerate(EC.encode(data[off:off + STRIPE])):
            per_member[i].append(frag)
    return per_member


def new_meta(bucket, key, data_id, data):
    return types_pb2.ObjectMeta(
        format_version=1, bucket=bucket, key=key, data_id=data_id, size=len(data), stored_size=len(data),
        etag=hashlib.md5(data).hexdigest(), mtime_ns=time.time_ns(),
        erasure=types_pb2.ErasureLayout(data_shards=K, parity_shards=M, stripe_size=STRIPE,
                                        ec_type="isa_l_rs_cauchy", block_checksum="xxh3-128",
                                        stripe_count=-(-len(data) // STRIPE)))


async def put(client, bucket, key, data, members=range(K + M)):
    data_id = uuid.uuid4().hex
    frags = encode(data)
    replies = await asyncio.gather(*(client.write_shard(i, data_id, bucket, frags[i]) for i in members))
    assert [r.blocks for r in replies] == [len(frags[0])] * len(replies)
    meta = new_meta(bucket, key, data_id, data)
    await client.commit_object(data_id, meta, list(members))
    return meta


async def get(client, bucket, key, members):
    meta = await client.get_object_meta(bucket, key)
    shards = []
    for i in members:
        shards.append([b async for b in client.read_shard(i, StoredVersion(bucket, key, meta.data_id), 0,
                                                          meta.erasure.stripe_count)])
    return b"".join(EC.decode(list(stripe)) for stripe in zip(*shards))


def shard_path(cluster, node, bucket, key, data_id, drive=0):
    h = hashlib.sha256(key.encode()).hexdigest()
    return cluster.drive_dir(node, drive) / "buckets" / bucket / "objects" / h[:2] / h / f"{data_id}.shard"


def test_bucket_operations_with_quorum(cluster):
    async def scenario(c):
        info = await c.make_bucket("alpha")
        assert info.name == "alpha" and info.created_ns > 0
        with pytest.raises(errors.BucketAlreadyOwnedByYou):
            await c.make_bucket("alpha")
        with pytest.raises(errors.InvalidBucketName):
            await c.make_bucket("Not_Valid")
        await c.make_bucket("beta")
        assert [b.name for b in await c.list_buckets()] == ["alpha", "beta"]
        assert (await c.get_bucket("alpha")).created_ns == info.created_ns
        enc = types_pb2.BucketEncryption(sse_algorithm="aws:kms", kms_master_key_id="alpha-key")
        assert (await c.set_bucket_encryption("alpha", enc)).encryption == enc
        assert (await c.get_bucket("alpha")).encryption.kms_master_key_id == "alpha-key"
        assert not (await c.set_bucket_encryption("alpha", None)).HasField("encryption")
        await c.delete_bucket("beta")
        with pytest.raises(errors.NoSuchBucket):
            await c.get_bucket("beta")
        with pytest.raises(errors.NoSuchBucket):
            await c.delete_bucket("beta")
        assert [b.name for b in await c.list_buckets()] == ["alpha"]
        await c.delete_bucket("alpha")
    run(cluster, scenario, "gateway")  # bucket operations are the gateway's
    assert all(not (cluster.drive_dir(i) / "buckets/alpha").exists() for i in range(4))


def test_put_read_list_delete(cluster):
    data = os.urandom(3 * STRIPE + 1234)

    async def scenario(c):
        await c.make_bucket("objs")
        with pytest.raises(errors.NoSuchKey):
            await c.get_object_meta("objs", "dir/file.bin")
        meta = await put(c, "objs", "dir/file.bin", data)
        got = await c.get_object_meta("objs", "dir/file.bin")
        assert (got.data_id, got.size, got.etag) == (meta.data_id, len(data), meta.etag)
        copies = await c.get_object_metas("objs", "dir/file.bin")
        assert [m.shard_index for m in copies] == [0, 1, 2, 3]
        assert await get(c, "objs", "dir/file.bin", [0, 1]) == data
        assert await get(c, "objs", "dir/file.bin", [2, 3]) == data  # parity only
        # A block range: stripe 2 alone.
        part = [b async for b in c.read_shard(0, StoredVersion("objs", "dir/file.bin", meta.data_id), 2, 1)]
        assert part == [encode(data)[0][2]]
        entries, truncated = await c.list_objects("objs", "dir/", "", 100)
        assert [(e.key, e.size, e.data_id) for e in entries] == [("dir/file.bin", len(data), meta.data_id)]
        assert not truncated
        gateway = gateway_client(cluster)
        with pytest.raises(errors.BucketNotEmpty):
            await gateway.delete_bucket("objs")
        assert (await c.get_bucket("objs")).name == "objs"  # refused everywhere, still whole
        assert await get(c, "objs", "dir/file.bin", [1, 2]) == data
        await c.delete_object("objs", "dir/file.bin")
        await c.delete_object("objs", "dir/file.bin")  # idempotent
        with pytest.raises(errors.NoSuchKey):
            await c.get_object_meta("objs", "dir/file.bin")
        with pytest.raises(errors.NoSuchBucket):
            await c.get_object_meta("nobucket", "x")
        await gateway.delete_bucket("objs")
        await gateway.close()
    run(cluster, scenario)


def test_overwrite_and_empty_object(cluster):
    async def scenario(c):
        await c.make_bucket("over")
        v1 = await put(c, "over", "k", b"one" * 50000)
        v2 = await put(c, "over", "k", b"two" * 1000)
        assert (await c.get_object_meta("over", "k")).data_id == v2.data_id
        assert await get(c, "over", "k", [0, 3]) == b"two" * 1000
        # The replaced version stays a minute as the copy an undo would restore (drive.py),
        # never served as the object.
        old_shard = shard_path(cluster, 0, "over", "k", v1.data_id)
        assert old_shard.exists() and v1.data_id in (old_shard.parent / "prev.json").read_text()
        with pytest.raises(errors.NoSuchKey):
            [b async for b in c.read_shard(0, StoredVersion("over", "k", v1.data_id), 0, 1)]
        empty = await put(c, "over", "empty", b"")
        got = await c.get_object_meta("over", "empty")
        assert got.data_id == empty.data_id and got.erasure.stripe_count == 0
        assert [b async for b in c.read_shard(1, StoredVersion("over", "empty", got.data_id), 0, 0)] == []
    run(cluster, scenario)


def test_list_objects_pages_in_key_order(cluster):
    keys = [f"p/{n:02d}" for n in (7, 3, 11, 1, 5)] + ["q/1"]

    async def scenario(c):
        await c.make_bucket("listing")
        for k in keys:
            await put(c, "listing", k, k.encode())
        seen, cursor = [], ""
        while True:
            entries, truncated = await c.list_objects("listing", "p/", cursor, 2)
            assert len(entries) <= 2
            seen += [e.key for e in entries]
            if not truncated:
                break
            cursor = entries[-1].key
        return seen
    assert run(cluster, scenario) == ["p/01", "p/03", "p/05", "p/07", "p/11"]


def test_corrupt_shard_gives_data_loss_on_that_member_only(cluster):
    data = os.urandom(2 * STRIPE + 10)

    async def scenario(c):
        await c.make_bucket("rot")
        meta = await put(c, "rot", "victim", data)
        path = shard_path(cluster, 1, "rot", "victim", meta.data_id)
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))
        with pytest.raises(errors.ObjectTampered):
            [b async for b in c.read_shard(1, StoredVersion("rot", "victim", meta.data_id), 0, 3)]
        # The raw status a reader sees is DATA_LOSS.
        stub = storage_pb2_grpc.StorageServiceStub(aio_channel(cluster.certs, "crypto", cluster.address(1), server="storage"))
        with pytest.raises(grpc.RpcError) as info:
            async for _ in stub.ReadShard(storage_pb2.ReadShardRequest(
                    bucket="rot", key="victim", data_id=meta.data_id, first_block=0, block_count=3)):
                pass
        assert info.value.code() == grpc.StatusCode.DATA_LOSS
        assert await get(c, "rot", "victim", [0, 2]) == data
        assert await get(c, "rot", "victim", [2, 3]) == data
    run(cluster, scenario)


def test_abort_and_broken_stream_leave_no_tmp_shard(cluster):
    async def scenario(c):
        await c.make_bucket("aborts")
        await c.write_shard(0, "upl-aborted", "aborts", [b"x" * 100])
        assert (cluster.drive_dir(0) / "tmp/upl-aborted.shard").exists()
        await c.abort_upload("upl-aborted")
        assert not (cluster.drive_dir(0) / "tmp/upl-aborted.shard").exists()

        async def breaks():
            yield b"y" * 100
            raise RuntimeError("client gives up mid-stream")
        with pytest.raises(Exception):
            await c.write_shard(1, "upl-broken", "aborts", breaks())
        for _ in range(50):
            if not (cluster.drive_dir(1) / "tmp/upl-broken.shard").exists():
                break
            await asyncio.sleep(0.05)
        assert not (cluster.drive_dir(1) / "tmp/upl-broken.shard").exists()
        with pytest.raises(errors.NoSuchBucket):
            await c.write_shard(2, "upl-nobucket", "no-such-bucket", [b"z"])
        with pytest.raises(errors.SlowDown):  # no member has the shard any more
            await c.commit_object("upl-aborted", new_meta("aborts", "k", "upl-aborted", b"x"), [0, 1, 2, 3])
        with pytest.raises(errors.NoSuchKey):
            await c.get_object_meta("aborts", "k")
    run(cluster, scenario)


def test_one_node_down_keeps_reads_and_writes(fresh_cluster):
    data_a, data_b = os.urandom(STRIPE + 5), os.urandom(2 * STRIPE)

    async def before(c):
        await c.make_bucket("deg")
        await put(c, "deg", "a", data_a)
    run(fresh_cluster, before)
    fresh_cluster.stop(3)

    async def degraded(c):
        assert (await c.get_bucket("deg")).name == "deg"
        assert (await c.get_object_meta("deg", "a")).size == len(data_a)
        assert (await c.get_object_metas("deg", "a"))[3] is None
        assert await get(c, "deg", "a", [0, 2]) == data_a
        meta_b = await put(c, "deg", "b", data_b, members=[0, 1, 2])  # 3 of 4 = write quorum
        assert (await c.get_object_meta("deg", "b")).data_id == meta_b.data_id
        assert await get(c, "deg", "b", [1, 2]) == data_b
        entries, _ = await c.list_objects("deg", "", "", 10)
        assert [e.key for e in entries] == ["a", "b"]
        await c.delete_object("deg", "a")
        with pytest.raises(errors.NoSuchKey):
            await c.get_object_meta("deg", "a")
    run(fresh_cluster, degraded)


def test_two_nodes_down_commit_fails_and_nothing_is_visible(fresh_cluster):
    old = os.urandom(STRIPE + 7)

    async def before(c):
        await c.make_bucket("quorum")
        return await put(c, "quorum", "existing", old)
    old_meta = run(fresh_cluster, before)
    fresh_cluster.stop(2, 3)

    async def below_quorum(c):
        with pytest.raises(errors.SlowDown):
            await put(c, "quorum", "new", b"n" * 1000, members=[0, 1])
        with pytest.raises(errors.SlowDown):  # a failed overwrite
            await put(c, "quorum", "existing", b"o" * 1000, members=[0, 1])
        gateway = gateway_client(fresh_cluster)
        with pytest.raises(errors.SlowDown):
            await gateway.make_bucket("another")
        await gateway.close()
        with pytest.raises(errors.SlowDown):
            await c.delete_object("quorum", "existing")
    run(fresh_cluster, below_quorum)
    assert list((fresh_cluster.drive_dir(0) / "tmp").iterdir()) == []
    fresh_cluster.start(2, 3)

    async def after(c):
        with pytest.raises(errors.NoSuchKey):
            await c.get_object_meta("quorum", "new")
        assert all(m is None for m in await c.get_object_metas("quorum", "new"))
        assert (await c.get_object_meta("quorum", "existing")).data_id == old_meta.data_id
        assert await get(c, "quorum", "existing", [2, 3]) == old
        with pytest.raises(errors.NoSuchBucket):
            await c.get_bucket("another")
        entries, _ = await c.list_objects("quorum", "", "", 10)
        assert [e.key for e in entries] == ["existing"]
    run(fresh_cluster, after)


def test_listing_skips_entries_only_a_minority_has(cluster):
    async def scenario(c):
        await c.make_bucket("minority")
        for k in ["h/1", "h/2", "h/3"]:
            await put(c, "minority", k, k.encode())
        # Keys that sort first but exist on member 0 only (e.g. left by a lost commit).
        m0 = c.members[0]
        for n in range(5):
            data_id = f"orphan{n}"
            await c.write_shard(0, data_id, "minority", [b"o"])
            await m0.stub.CommitObject(storage_pb2.CommitObjectRequest(
                upload_id=data_id, meta=new_meta("minority", f"g/{n}", data_id, b"o"), drive=m0.drive))
        entries, truncated = await c.list_objects("minority", "", "", 2)
        assert [e.key for e in entries] == ["h/1", "h/2"] and truncated
        entries, truncated = await c.list_objects("minority", "", "h/2", 2)
        assert [e.key for e in entries] == ["h/3"] and not truncated
        with pytest.raises(errors.NoSuchKey):  # one copy is below read quorum
            await c.get_object_meta("minority", "g/0")
    run(cluster, scenario)


def test_node_with_two_drives_serves_two_members(make_cluster):
    two = make_cluster(size=2, parity=2, drives=2)
    data = os.urandom(STRIPE * 2 + 3)

    async def scenario(c):
        assert [(m.address, m.drive) for m in c.members] == [
            (two.address(0), 0), (two.address(0), 1), (two.address(1), 0), (two.address(1), 1)]
        await c.make_bucket("multi")
        meta = await put(c, "multi", "obj", data)
        assert await get(c, "multi", "obj", [1, 3]) == data
        statuses = await c.node_status()
        assert sorted(s.objects for s in statuses) == [2, 2]
        return meta
    meta = run(two, scenario)
    for node in range(2):
        for drive in range(2):
            assert (two.drive_dir(node, drive) / "buckets/multi/bucket.json").exists()
            assert shard_path(two, node, "multi", "obj", meta.data_id, drive).exists()
