"""Healing multipart objects and uploads in progress, in-process on real drives
(tests/fakes/real_storage.py): part shards rebuilt one by one from the members whose copy of that
part is sound, sound parts left untouched, conditional commits losing to concurrent writes, and
the `.multipart` bucket walked like any other."""
from __future__ import annotations

import random
import shutil

import pytest

from sealstore import errors, multipart
from sealstore.erasure.client import StoredVersion
from sealstore.erasure.coder import StripeCoder
from sealstore.erasure.heal import heal_all, heal_object
from sealstore.erasure.streams import StripeReader
from sealstore.multipart import SYSTEM_BUCKET
from sealstore.v1 import storage_pb2
from tests.erasure.multipart_objects import put_multipart, read_object, upload
from tests.fakes.real_storage import RealStorage

BUCKET = "heal-mp"
State = storage_pb2.CheckShardResponse
PARTS = [random.Random(n).randbytes(size) for n, size in enumerate((300_000, 200_000, 90_000))]


def run(storage: RealStorage, test):
    async def go(store):
        await store.make_bucket(BUCKET)
        return await test(store)
    return storage.run(go)


def shard(storage: RealStorage, member: int, key: str, data_id: str, bucket: str = BUCKET):
    return storage.drive(member)._object_dir(bucket, key) / f"{data_id}.shard"


def rot(path) -> None:
    raw = bytearray(path.read_bytes())
    raw[40] ^= 0xFF  # inside block 0, past its header
    path.write_bytes(bytes(raw))


async def read_from(store, key: str, meta, members: list[int]) -> bytes:
    """The object decoded from exactly `members` (k of them): each must hold every part."""
    coder = StripeCoder(meta.erasure.data_shards, meta.erasure.parity_shards)
    out = bytearray()
    for part in meta.parts:
        reader = StripeReader(store, coder, StoredVersion.of_part(BUCKET, key, part), members)
        async for stripe in reader.stripes(0, part.stripe_count):
            out += stripe
        assert not reader.errors, reader.errors
    return bytes(out)


def test_only_the_bad_parts_are_rebuilt_and_the_sound_ones_left_alone(tmp_path):
    storage = RealStorage(tmp_path)

    async def test(store):
        meta = await put_multipart(store, BUCKET, "k", PARTS)
        p1, p2, p3 = (p.data_id for p in meta.parts)
        shard(storage, 1, "k", p2).unlink()
        rot(shard(storage, 3, "k", p1))
        untouched = shard(storage, 1, "k", p1).stat().st_ino, shard(storage, 3, "k", p3).stat().st_ino

        checks = await store.check_shards(BUCKET, "k", deep=True)
        assert (checks[1].state, list(checks[1].bad_shards)) == (State.SHARD_MISSING, [p2])
        assert (checks[3].state, list(checks[3].bad_shards)) == (State.SHARD_CORRUPT, [p1])
        report = await heal_object(store, BUCKET, "k")
        assert (report.shards_rebuilt, report.shards_failed, report.objects_healed) == (2, 0, 1)
        assert (shard(storage, 1, "k", p1).stat().st_ino, shard(storage, 3, "k", p3).stat().st_ino) == untouched
        assert all(c.state == State.OK for c in await store.check_shards(BUCKET, "k", deep=True))
        # Members 1 and 3, the two that were damaged, now serve the whole object on their own.
        assert await read_from(store, "k", meta, [1, 3]) == b"".join(PARTS)
        assert (await heal_object(store, BUCKET, "k")).shards_rebuilt == 0
    run(storage, test)


def test_a_wiped_drive_gets_buckets_objects_parts_and_uploads_back(tmp_path):
    storage = RealStorage(tmp_path)

    async def test(store):
        meta = await put_multipart(store, BUCKET, "done", PARTS)
        upload_id, parts = await upload(store, BUCKET, "pending", PARTS[:2])
        drive = storage.drive(2)
        shutil.rmtree(drive.root)
        drive.ensure_layout()
        report = await heal_all(store)
        assert report.unrecoverable == 0, report.details
        assert report.objects_healed == 4  # the object, the record and the two parts
        assert sorted(drive.list_buckets(include_system=True), key=lambda b: b.name)[0].name == SYSTEM_BUCKET
        assert await read_from(store, "done", meta, [2, 3]) == b"".join(PARTS)
        keys = [e.key for e in drive.list_objects(SYSTEM_BUCKET, "", "", 100)[0]]
        assert keys == [multipart.part_key(BUCKET, upload_id, 1), multipart.part_key(BUCKET, upload_id, 2),
                        multipart.record_key(BUCKET, upload_id)]
        check = await store.check_shards(SYSTEM_BUCKET, multipart.part_key(BUCKET, upload_id, 2), deep=True)
        assert [c.state for c in check] == [State.OK] * 4
    run(storage, test)


def test_a_lost_part_of_an_upload_in_progress_is_healed_by_the_walk(tmp_path):
    storage = RealStorage(tmp_path)

    async def test(store):
        upload_id, parts = await upload(store, BUCKET, "k", PARTS)
        key = multipart.part_key(BUCKET, upload_id, 3)
        shard(storage, 0, key, parts[2].data_id, SYSTEM_BUCKET).unlink()
        report = await heal_all(store, SYSTEM_BUCKET)
        assert (report.objects_scanned, report.shards_rebuilt) == (4, 1)
        assert shard(storage, 0, key, parts[2].data_id, SYSTEM_BUCKET).exists()
    run(storage, test)


def test_a_heal_commit_loses_to_a_concurrent_write_and_leaves_no_temporary_shard(tmp_path):
    storage = RealStorage(tmp_path)

    async def test(store):
        meta = await put_multipart(store, BUCKET, "k", PARTS)
        drive = storage.drive(1)
        writer = drive.open_upload("heal-x", BUCKET)
        writer.finish()
        with pytest.raises(errors.PreconditionFailed):
            drive.commit_object("", meta, conditional=True, expect_data_id="0" * 32,
                                part_uploads={meta.parts[0].data_id: "heal-x"})
        assert not (drive.tmp / "heal-x.shard").exists()
        # A rebuilt part naming no part of the object is refused.
        drive.open_upload("heal-y", BUCKET).finish()
        with pytest.raises(errors.InvalidArgument):
            drive.commit_object("", meta, conditional=True, expect_data_id=meta.data_id,
                                part_uploads={"f" * 32: "heal-y"})
        assert await read_object(store, BUCKET, "k") == b"".join(PARTS)
    run(storage, test)
