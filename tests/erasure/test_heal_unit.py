"""Heal decisions and rebuilds, in-process over the storage fake: what gets rebuilt, from what,
and when a heal must leave a copy alone (its conditional commit loses to a concurrent write)."""
from __future__ import annotations

import pytest

from sealstore.erasure.heal import heal_all, heal_object
from sealstore.v1 import types_pb2
from tests.fakes.objects import get, payload, put
from tests.fakes.storage import Copy, FakeStorage

BUCKET = "heal-bucket"
SMALL = 1000
LARGE = 3 * 1024 * 1024


def run(fake: FakeStorage, test):
    async def go(store):
        await store.make_bucket(BUCKET)
        return await test(store)
    return fake.run(go)


def blocks_of(fake: FakeStorage, member: int, key: str) -> list[bytes]:
    return fake.member_drive(member).copy_of(BUCKET, key).blocks


@pytest.mark.parametrize("size", [SMALL, LARGE])
def test_lost_shard_is_rebuilt_identical(size):
    fake = FakeStorage()
    data = payload(size)

    async def test(store):
        await put(store, BUCKET, "k", data)
        original = list(blocks_of(fake, 1, "k"))
        drive = fake.member_drive(1)
        del drive.objects[(BUCKET, "k")]  # the member lost its copy (shard and metadata)
        report = await heal_object(store, BUCKET, "k")
        assert (report.shards_rebuilt, report.shards_failed, report.objects_healed) == (1, 0, 1)
        assert blocks_of(fake, 1, "k") == original
        for down in (0, 2, 3):  # member 1 alone with one other must now be able to serve it
            fake.nodes[down].offline = down != 0
        assert await get(store, BUCKET, "k") == data
    run(fake, test)


def test_missing_and_rotten_shards_are_rebuilt_and_healthy_objects_left_alone():
    fake = FakeStorage()

    async def test(store):
        await put(store, BUCKET, "missing", payload(LARGE, 1))
        await put(store, BUCKET, "rotten", payload(LARGE, 2))
        await put(store, BUCKET, "sound", payload(LARGE, 3))
        fake.member_drive(0).lose_shard(BUCKET, "missing")
        fake.member_drive(3).rot_block(BUCKET, "rotten", 2)
        shallow = await heal_object(store, BUCKET, "rotten", deep=False)
        assert shallow.shards_rebuilt == 0  # only a deep check reads every block
        report = await heal_all(store, BUCKET)
        assert (report.objects_scanned, report.objects_healed, report.shards_rebuilt) == (3, 2, 2)
        assert not fake.member_drive(0).copy_of(BUCKET, "missing").shard_missing
        assert not fake.member_drive(3).copy_of(BUCKET, "rotten").rotten
        assert (await heal_all(store, BUCKET)).shards_rebuilt == 0
    run(fake, test)


def test_unreadable_metadata_is_rewritten_from_the_majority():
    fake = FakeStorage()
    data = payload(SMALL)

    async def test(store):
        meta = await put(store, BUCKET, "k", data)
        fake.member_drive(2).corrupt_meta(BUCKET, "k")
        report = await heal_object(store, BUCKET, "k")
        assert report.shards_rebuilt == 1
        healed = fake.member_drive(2).copy_of(BUCKET, "k")
        assert not healed.meta_corrupt and healed.meta.data_id == meta.data_id
        fake.nodes[0].offline = fake.nodes[1].offline = True
        assert await get(store, BUCKET, "k") == data
    run(fake, test)


def test_wiped_drive_gets_bucket_and_objects_back():
    fake = FakeStorage()

    async def test(store):
        for n in range(3):
            await put(store, BUCKET, f"k{n}", payload(SMALL if n else LARGE, n))
        fake.member_drive(3).wipe()
        report = await heal_all(store)
        assert report.buckets_healed >= 1 and report.shards_rebuilt == 3
        assert BUCKET in fake.member_drive(3).buckets
        assert {k for (_, k) in fake.member_drive(3).objects} == {"k0", "k1", "k2"}
    run(fake, test)


def test_dry_run_changes_nothing():
    fake = FakeStorage()

    async def test(store):
        await put(store, BUCKET, "k", payload(SMALL))
        del fake.member_drive(1).objects[(BUCKET, "k")]
        report = await heal_object(store, BUCKET, "k", dry_run=True)
        assert report.shards_rebuilt == 1 and "would rebuild" in report.details[0]
        assert (BUCKET, "k") not in fake.member_drive(1).objects
        assert sum(n.calls["CommitObject"] + n.calls["WriteShard"] for n in fake.nodes) == 4  # the PUT's
    run(fake, test)


def test_too_few_sound_shards_is_unrecoverable_and_writes_nothing():
    fake = FakeStorage()

    async def test(store):
        await put(store, BUCKET, "k", payload(LARGE))
        for i in (0, 1, 2):
            fake.member_drive(i).rot_block(BUCKET, "k", 0)
        commits = sum(n.calls["CommitObject"] for n in fake.nodes)
        report = await heal_object(store, BUCKET, "k")
        assert report.unrecoverable == 1 and report.shards_rebuilt == 0
        assert sum(n.calls["CommitObject"] for n in fake.nodes) == commits
    run(fake, test)


def test_a_put_landing_during_the_heal_wins():
    fake = FakeStorage()

    async def test(store):
        await put(store, BUCKET, "k", payload(LARGE, 1))
        del fake.member_drive(1).objects[(BUCKET, "k")]
        newer = types_pb2.ObjectMeta(bucket=BUCKET, key="k", data_id="newer-put", mtime_ns=1)
        racing = Copy(newer, [b"x"])

        def a_put_commits_first():
            fake.member_drive(1).objects[(BUCKET, "k")] = racing
        fake.nodes[1].on("CommitObject", a_put_commits_first)
        report = await heal_object(store, BUCKET, "k")
        assert (report.shards_rebuilt, report.shards_failed) == (0, 1)
        assert fake.member_drive(1).copy_of(BUCKET, "k") is racing
        assert not fake.member_drive(1).uploads  # the heal's temporary shard is dropped
    run(fake, test)


def test_dangling_version_is_removed_only_when_old_and_everyone_answered():
    fake = FakeStorage()

    async def test(store):
        await put(store, BUCKET, "k", payload(SMALL))
        for i in (1, 2, 3):  # a PUT that reached one member only
            del fake.member_drive(i).objects[(BUCKET, "k")]
        young = await heal_object(store, BUCKET, "k")
        assert young.dangling_removed == 0 and (BUCKET, "k") in fake.member_drive(0).objects
        fake.nodes[3].offline = True
        offline = await heal_object(store, BUCKET, "k", grace_s=0)
        assert offline.dangling_removed == 0  # node 3 might hold a copy: wait
        fake.nodes[3].offline = False
        old = await heal_object(store, BUCKET, "k", grace_s=0)
        assert old.dangling_removed == 1 and (BUCKET, "k") not in fake.member_drive(0).objects
    run(fake, test)


def test_stale_version_is_replaced_newer_unfinished_put_is_not():
    fake = FakeStorage()

    async def test(store):
        first = await put(store, BUCKET, "k", payload(SMALL, 1))
        stale = fake.member_drive(3).copy_of(BUCKET, "k")
        fake.nodes[3].offline = True
        second = await put(store, BUCKET, "k", payload(SMALL, 2))
        fake.nodes[3].offline = False
        assert fake.member_drive(3).copy_of(BUCKET, "k") is stale
        assert (await heal_object(store, BUCKET, "k")).shards_rebuilt == 1
        assert fake.member_drive(3).copy_of(BUCKET, "k").meta.data_id == second.data_id != first.data_id
        # A newer copy on one member (a PUT still committing) is skipped, not overwritten.
        inflight = types_pb2.ObjectMeta()
        inflight.CopyFrom(second)
        inflight.data_id, inflight.mtime_ns = "in-flight", second.mtime_ns + 1
        fake.member_drive(0).objects[(BUCKET, "k")] = Copy(inflight, [b""])
        report = await heal_object(store, BUCKET, "k")
        assert report.skipped == 1 and fake.member_drive(0).copy_of(BUCKET, "k").meta.data_id == "in-flight"
    run(fake, test)
