"""Quorum verdicts of the erasure client, in-process over the storage fake (tests/fakes/storage.py):
which answers of the members make a success, SlowDown, NoSuchKey, NoSuchBucket or StorageFull.

Sets of 4 drives (2 data + 2 parity: write quorum k+1 = 3, read quorum 2) and of 6 (4+2: write
quorum k = 4, read quorum 4). Objects go through the worker's real PUT pipeline."""
from __future__ import annotations

import asyncio

import pytest

from sealstore import errors
from sealstore.v1 import types_pb2
from tests.fakes.objects import get, payload, put
from tests.fakes.storage import FakeStorage

BUCKET = "quorum-bucket"
SMALL = 1000            # stored inline, inside each drive's metadata
LARGE = 3 * 1024 * 1024  # streamed as shards, three stripes


def with_bucket(fake: FakeStorage, test):
    async def go(store):
        await store.make_bucket(BUCKET)
        return await test(store)
    return fake.run(go)


def copies(fake: FakeStorage, key: str) -> list[str]:
    """data_id of each member's copy ('' = none)."""
    out = []
    for i in range(len(fake.topology.storage_sets[0])):
        copy = fake.member_drive(i).objects.get((BUCKET, key))
        out.append(copy.meta.data_id if copy else "")
    return out


def leftover_uploads(fake: FakeStorage) -> int:
    return sum(len(d.uploads) for n in fake.nodes for d in n.drives)


def test_quorums_follow_the_set_shape():
    four, six = FakeStorage(nodes=4, parity=2), FakeStorage(nodes=6, parity=2)
    assert (four.topology.write_quorum, four.topology.read_quorum) == (3, 2)
    assert (six.topology.write_quorum, six.topology.read_quorum) == (4, 4)


@pytest.mark.parametrize("size", [SMALL, LARGE])
def test_write_succeeds_with_one_node_down_of_four(size):
    fake = FakeStorage()
    data = payload(size)

    async def test(store):
        fake.nodes[3].offline = True
        meta = await put(store, BUCKET, "k", data)
        assert await get(store, BUCKET, "k") == data
        return meta
    meta = with_bucket(fake, test)
    assert copies(fake, "k") == [meta.data_id] * 3 + [""]


@pytest.mark.parametrize("size", [SMALL, LARGE])
def test_write_below_quorum_is_slowdown_and_leaves_nothing(size):
    fake = FakeStorage()

    async def test(store):
        fake.nodes[2].offline = fake.nodes[3].offline = True
        with pytest.raises(errors.SlowDown):
            await put(store, BUCKET, "k", payload(size))
    with_bucket(fake, test)
    assert copies(fake, "k") == [""] * 4
    assert leftover_uploads(fake) == 0


def test_write_quorum_is_k_when_parity_is_below_data():
    fake = FakeStorage(nodes=6, parity=2)

    async def test(store):
        fake.nodes[0].offline = fake.nodes[5].offline = True
        await put(store, BUCKET, "k", payload(LARGE))
        fake.nodes[0].offline = fake.nodes[5].offline = False
        fake.nodes[1].offline = fake.nodes[2].offline = fake.nodes[3].offline = True
        with pytest.raises(errors.SlowDown):
            await put(store, BUCKET, "k2", payload(SMALL))
    with_bucket(fake, test)
    assert sum(1 for c in copies(fake, "k") if c) == 4


def test_commit_missing_quorum_is_undone_and_the_previous_version_stays():
    fake = FakeStorage()
    old, new = payload(SMALL, 1), payload(SMALL, 2)

    async def test(store):
        first = await put(store, BUCKET, "k", old)
        fake.nodes[1].fail("CommitObject", errors.ServiceUnavailable("commit lost"))
        fake.nodes[2].fail("CommitObject", errors.ServiceUnavailable("commit lost"))
        with pytest.raises(errors.SlowDown):
            await put(store, BUCKET, "k", new)
        fake.nodes[1].heal()
        fake.nodes[2].heal()
        assert await get(store, BUCKET, "k") == old
        return first
    first = with_bucket(fake, test)
    # The members that did commit the failed PUT were put back to the version it replaced.
    assert copies(fake, "k") == [first.data_id] * 4


def test_full_drives_answer_storage_full_not_slowdown():
    fake = FakeStorage()

    async def test(store):
        for i in (0, 1, 2):
            fake.member_drive(i).full = True
        with pytest.raises(errors.StorageFull):
            await put(store, BUCKET, "k", payload(SMALL))
        with pytest.raises(errors.StorageFull):
            await put(store, BUCKET, "big", payload(LARGE))
    with_bucket(fake, test)
    assert leftover_uploads(fake) == 0


def test_read_quorum_survives_two_lost_nodes_of_four_not_three():
    fake = FakeStorage()
    data = payload(LARGE)

    async def test(store):
        await put(store, BUCKET, "k", data)
        fake.nodes[0].offline = fake.nodes[1].offline = True
        assert await get(store, BUCKET, "k") == data
        fake.nodes[2].offline = True
        with pytest.raises(errors.SlowDown):
            await store.get_object_meta(BUCKET, "k")
    with_bucket(fake, test)


def test_slow_member_counts_as_unavailable_within_the_timeout():
    fake = FakeStorage()
    data = payload(SMALL)

    async def test(store):
        await put(store, BUCKET, "k", data)
        fake.nodes[0].delay = fake.nodes[1].delay = fake.nodes[2].delay = 5.0
        with pytest.raises(errors.SlowDown):
            await store.get_object_meta(BUCKET, "k")
        fake.nodes[2].delay = 0
        assert (await store.get_object_meta(BUCKET, "k")).size == len(data)
    async def go(store):
        await store.make_bucket(BUCKET)
        await test(store)
    fake.run(go, timeout=0.2)


def test_no_such_key_only_when_too_few_members_could_hold_it():
    fake = FakeStorage()

    async def test(store):
        fake.nodes[3].offline = True  # 3 answer "absent": even with node 3, at most 1 copy < 2
        with pytest.raises(errors.NoSuchKey):
            await store.get_object_meta(BUCKET, "absent")
        fake.nodes[2].offline = True  # 2 answer "absent": the 2 silent ones might hold a quorum
        with pytest.raises(errors.SlowDown):
            await store.get_object_meta(BUCKET, "absent")
    with_bucket(fake, test)


def test_a_wiped_drive_does_not_hide_the_bucket_or_its_objects():
    fake = FakeStorage()
    data = payload(SMALL)

    async def test(store):
        await put(store, BUCKET, "k", data)
        fake.member_drive(0).wipe()
        assert await get(store, BUCKET, "k") == data
        with pytest.raises(errors.NoSuchKey):
            await store.get_object_meta(BUCKET, "absent")
        with pytest.raises(errors.NoSuchBucket):
            await store.get_object_meta("no-such-bucket", "k")
    with_bucket(fake, test)


def test_unreadable_metadata_is_read_around_and_wins_no_verdict():
    fake = FakeStorage()
    data = payload(SMALL)

    async def test(store):
        await put(store, BUCKET, "k", data)
        fake.member_drive(0).corrupt_meta(BUCKET, "k")
        fake.member_drive(1).corrupt_meta(BUCKET, "k")
        assert await get(store, BUCKET, "k") == data  # 2 good copies remain: read quorum
        fake.member_drive(2).corrupt_meta(BUCKET, "k")
        with pytest.raises(errors.ObjectTampered):
            await store.get_object_meta(BUCKET, "k")
    with_bucket(fake, test)


def test_a_copy_naming_another_object_is_never_chosen():
    fake = FakeStorage()
    data, other = payload(SMALL, 1), payload(SMALL, 2)

    async def test(store):
        await put(store, BUCKET, "k", data)
        theirs = await put(store, BUCKET, "other", other)
        for i in (0, 1):  # a majority of drives hold a newer copy of "other" under k's name
            moved = types_pb2.ObjectMeta()
            moved.CopyFrom(fake.member_drive(i).copy_of(BUCKET, "other").meta)
            moved.mtime_ns = theirs.mtime_ns + 10**9
            fake.member_drive(i).replace_meta(BUCKET, "k", moved)
        assert await get(store, BUCKET, "k") == data
    with_bucket(fake, test)


def test_bucket_verdicts():
    fake = FakeStorage()

    async def test(store):
        with pytest.raises(errors.BucketAlreadyOwnedByYou):
            await store.make_bucket(BUCKET)
        with pytest.raises(errors.InvalidBucketName):
            await store.make_bucket("Not_A_Bucket")
        fake.nodes[0].offline = fake.nodes[1].offline = True
        with pytest.raises(errors.SlowDown):
            await store.make_bucket("made-below-quorum")
        fake.nodes[0].offline = fake.nodes[1].offline = False
        # The failed create was undone where it had succeeded: no bucket on a minority.
        assert "made-below-quorum" not in {b.name for b in await store.list_buckets()}
        assert all("made-below-quorum" not in d.buckets for n in fake.nodes for d in n.drives)
        await put(store, BUCKET, "k", payload(SMALL))
        with pytest.raises(errors.BucketNotEmpty):
            await store.delete_bucket(BUCKET)
        # A write needs write quorum (3) before it touches any drive; a read needs 2.
        fake.nodes[2].offline = fake.nodes[3].offline = True
        assert (await store.get_bucket(BUCKET)).name == BUCKET
        with pytest.raises(errors.SlowDown):
            await store.get_bucket(BUCKET, for_write=True)
        writes = sum(n.calls["WriteShard"] + n.calls["CommitObject"] for n in fake.nodes)
        with pytest.raises(errors.SlowDown):
            await put(store, BUCKET, "k2", payload(SMALL))
        assert sum(n.calls["WriteShard"] + n.calls["CommitObject"] for n in fake.nodes) == writes
    with_bucket(fake, test)


def test_write_check_is_reused_until_a_member_fails():
    """A PUT asks every node whether the bucket takes writes; the next PUTs within
    WRITABLE_CHECK_SECONDS reuse that answer, unless a member failed to answer meanwhile."""
    fake = FakeStorage()

    def bucket_calls() -> int:
        return sum(n.calls["GetBucket"] for n in fake.nodes)

    async def test(store):
        await put(store, BUCKET, "k1", payload(SMALL))
        asked = bucket_calls()
        await put(store, BUCKET, "k2", payload(SMALL))
        await put(store, BUCKET, "k3", payload(SMALL))
        assert bucket_calls() == asked  # reused: no GetBucket for the next PUTs
        fake.nodes[3].offline = True
        with pytest.raises(errors.NoSuchKey):
            await store.get_object_meta(BUCKET, "missing")  # node 3 does not answer
        await put(store, BUCKET, "k4", payload(SMALL))
        assert bucket_calls() > asked  # asked again after the failure
        fake.nodes[3].offline = False
        # A bucket removed behind this client's back (another gateway deleted it) still refuses
        # the write within the reuse window: the drives say NoSuchBucket.
        await put(store, BUCKET, "k5", payload(SMALL))
        for n in fake.nodes:
            for d in n.drives:
                d.buckets.pop(BUCKET)
        with pytest.raises(errors.NoSuchBucket):
            await put(store, BUCKET, "k6", payload(SMALL))
        with pytest.raises(errors.NoSuchBucket):
            await put(store, BUCKET, "k7", payload(3 * SMALL + 5 * 1024 * 1024))
    with_bucket(fake, test)


@pytest.mark.parametrize("size, inline", [(SMALL, True), (700 * 1024, False)], ids=["inline", "one-stripe-file"])
def test_a_one_stripe_object_reads_its_shards_from_the_metadata_answers(size, inline):
    """A GET of an object of one stripe takes its shards from the data members' GetObjectMeta
    answers: no ReadShard call. A shard that fails its checksum is read around (a ReadShard of
    a parity member; for a shard file, first of the member itself, whose node left the shard out
    of its answer and now says why), and its member is marked for a heal."""
    from services.crypto import get_pipeline
    from services.crypto.get_pipeline import open_object
    fake = FakeStorage()

    async def test(store):
        data = payload(size, 7)
        await put(store, BUCKET, "small", data)
        reads = sum(n.calls["ReadShard"] for n in fake.nodes)
        assert await get(store, BUCKET, "small") == data
        assert sum(n.calls["ReadShard"] for n in fake.nodes) == reads
        fake.member_drive(0).copy_of(BUCKET, "small").rotten.add(0)
        reader = await open_object(store, None, BUCKET, "small", None)
        assert reader.meta.inline == inline and not reader.meta.inline_shard  # shard bytes go no further
        assert b"".join([c async for c in reader.chunks()]) == data
        assert 0 in reader.suspects
        assert sum(n.calls["ReadShard"] for n in fake.nodes) == reads + (1 if inline else 2)
        # The read healed the bad copy in the background.
        await asyncio.gather(*list(get_pipeline._healing.values()))
        assert not fake.member_drive(0).copy_of(BUCKET, "small").rotten
        # Every holder's shard rotten: an error, never garbage.
        for member in range(4):
            fake.member_drive(member).copy_of(BUCKET, "small").rotten.add(0)
        with pytest.raises(errors.ObjectTampered):
            await get(store, BUCKET, "small")
    with_bucket(fake, test)
