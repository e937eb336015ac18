"""Multipart objects on real drives, in-process (tests/fakes/real_storage.py: the storage node's
own code over tmp folders): the `.multipart` system bucket, CompleteMultipart, reads, checks,
overwrite/undo/delete of objects made of several shard files, tags and bucket policy/tags, and
the tampering that must never read as the wrong bytes."""
from __future__ import annotations

import os
import random

import pytest

from sealstore import errors, multipart
from sealstore.erasure.client import StoredVersion
from sealstore.multipart import SYSTEM_BUCKET
from sealstore.v1 import storage_pb2, types_pb2
from tests.erasure.multipart_objects import (completed_meta, new_id, put_multipart, read_object, upload)
from tests.fakes.objects import put
from tests.fakes.real_storage import RealStorage

BUCKET = "mp-bucket"
State = storage_pb2.CheckShardResponse


def data(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


PARTS = [data(200_000, 1), data(150_000, 2), data(70_000, 3)]


def run(storage: RealStorage, test):
    async def go(store):
        await store.make_bucket(BUCKET)
        return await test(store)
    return storage.run(go)


def object_dir(storage: RealStorage, member: int, bucket: str, key: str):
    return storage.drive(member)._object_dir(bucket, key)


def system_keys(storage: RealStorage, member: int) -> list[str]:
    entries, _ = storage.drive(member).list_objects(SYSTEM_BUCKET, "", "", 10_000)
    return [e.key for e in entries]


def test_the_system_bucket_is_on_every_drive_and_hidden_from_s3_listings(tmp_path):
    storage = RealStorage(tmp_path)

    async def test(store):
        assert [b.name for b in await store.list_buckets()] == [BUCKET]
        assert [b.name for b in await store.list_buckets(include_system=True)] == [SYSTEM_BUCKET, BUCKET]
        assert (await store.get_bucket(SYSTEM_BUCKET)).name == SYSTEM_BUCKET
        with pytest.raises(errors.InvalidBucketName):
            await store.delete_bucket(SYSTEM_BUCKET)
        for bad in (".multipart2", ".other", "_multipart"):
            with pytest.raises(errors.InvalidBucketName):
                await store.make_bucket(bad)
    run(storage, test)
    for member in range(4):
        assert (storage.drive(member).buckets / SYSTEM_BUCKET / "bucket.json").is_file()


def test_an_emptied_drive_gets_the_system_bucket_back_on_first_use(tmp_path):
    storage = RealStorage(tmp_path)
    drive = storage.drive(2)
    import shutil
    shutil.rmtree(drive.buckets)
    assert drive.list_objects(SYSTEM_BUCKET, "", "", 10) == ([], False)
    assert drive.has_bucket(SYSTEM_BUCKET)


def test_complete_moves_the_parts_lists_them_before_and_leaves_nothing_of_the_upload(tmp_path):
    storage = RealStorage(tmp_path)

    async def test(store):
        upload_id, parts = await upload(store, BUCKET, "big", PARTS)
        entries, _ = await store.list_objects(SYSTEM_BUCKET, multipart.parts_prefix(BUCKET, upload_id), "", 1000)
        assert [e.part.number for e in entries] == [1, 2, 3]
        assert [e.part.data_id for e in entries] == [p.data_id for p in parts]
        assert [e.part.stripe_count for e in entries] == [4, 3, 2]
        records, _ = await store.list_objects(SYSTEM_BUCKET, multipart.uploads_prefix(BUCKET), "", 1000)
        assert [(r.upload.key, r.upload.upload_id) for r in records] == [("big", upload_id)]
        assert not records[0].HasField("part")

        meta = completed_meta(store, BUCKET, "big", upload_id, parts)
        await store.complete_multipart(meta)
        assert await read_object(store, BUCKET, "big") == b"".join(PARTS)
        listed, _ = await store.list_objects(BUCKET, "", "", 10)
        assert [(e.key, e.size, e.etag) for e in listed] == [("big", sum(map(len, PARTS)), meta.etag)]
        assert not listed[0].HasField("part")
        for member in range(4):
            assert system_keys(storage, member) == []
            folder = object_dir(storage, member, BUCKET, "big")
            assert sorted(p.name for p in folder.glob("*.shard")) == sorted(f"{p.data_id}.shard" for p in parts)
        assert not [p for m in range(4) for p in storage.drive(m).buckets.joinpath(SYSTEM_BUCKET).rglob("*.shard")]
        # A retry (the gateway's answer lost) changes nothing and succeeds.
        await store.complete_multipart(meta)
        assert await read_object(store, BUCKET, "big") == b"".join(PARTS)
    run(storage, test)


def test_a_part_read_names_its_data_id_and_the_version_id_is_refused(tmp_path):
    storage = RealStorage(tmp_path)

    async def test(store):
        meta = await put_multipart(store, BUCKET, "k", PARTS)
        blocks = [b async for b in store.read_shard(0, StoredVersion.of_part(BUCKET, "k", meta.parts[1]), 0, 0)]
        assert len(blocks) == meta.parts[1].stripe_count
        with pytest.raises(errors.InvalidArgument):
            [b async for b in store.read_shard(0, StoredVersion(BUCKET, "k", meta.data_id), 0, 0)]
        with pytest.raises(errors.NoSuchKey):
            [b async for b in store.read_shard(0, StoredVersion(BUCKET, "k", new_id()), 0, 0)]
    run(storage, test)


def test_complete_naming_another_data_id_is_invalid_part_and_moves_nothing(tmp_path):
    storage = RealStorage(tmp_path)

    async def test(store):
        upload_id, parts = await upload(store, BUCKET, "k", PARTS)
        wrong = [types_pb2.ObjectPart() for _ in parts]
        for w, p in zip(wrong, parts):
            w.CopyFrom(p)
        wrong[1].data_id = new_id()
        with pytest.raises(errors.InvalidPart):
            await store.complete_multipart(completed_meta(store, BUCKET, "k", upload_id, wrong))
        with pytest.raises(errors.NoSuchKey):
            await store.get_object_meta(BUCKET, "k")
        for member in range(4):
            assert len(system_keys(storage, member)) == 4  # record and three parts, untouched
            assert not object_dir(storage, member, BUCKET, "k").exists() or \
                not list(object_dir(storage, member, BUCKET, "k").glob("*.shard"))
        await store.complete_multipart(completed_meta(store, BUCKET, "k", upload_id, parts))
        assert await read_object(store, BUCKET, "k") == b"".join(PARTS)
    run(storage, test)


def test_a_part_meta_of_another_upload_moved_into_place_is_never_used(tmp_path):
    storage = RealStorage(tmp_path)

    async def test(store):
        mine, my_parts = await upload(store, BUCKET, "k", PARTS)
        other, other_parts = await upload(store, BUCKET, "k", [data(200_000, 9)])
        drive = storage.drive(1)
        target = drive._object_dir(SYSTEM_BUCKET, multipart.part_key(BUCKET, mine, 1))
        source = drive._object_dir(SYSTEM_BUCKET, multipart.part_key(BUCKET, other, 1))
        # The other upload's part 1 (meta and shard) replaces ours on drive 1.
        for f in target.iterdir():
            f.unlink()
        for f in source.iterdir():
            os.link(f, target / f.name)
        await store.complete_multipart(completed_meta(store, BUCKET, "k", mine, my_parts))
        folder = object_dir(storage, 1, BUCKET, "k")
        assert not (folder / f"{other_parts[0].data_id}.shard").exists()
        assert not (folder / f"{my_parts[0].data_id}.shard").exists()  # missing here, for heal
        check = await store.check_shards(BUCKET, "k", deep=True)
        assert check[1].state == State.SHARD_MISSING and list(check[1].bad_shards) == [my_parts[0].data_id]
        assert await read_object(store, BUCKET, "k") == b"".join(PARTS)
    run(storage, test)


def test_swapped_part_shards_are_corrupt_not_data(tmp_path):
    storage = RealStorage(tmp_path)

    async def test(store):
        meta = await put_multipart(store, BUCKET, "k", PARTS)
        folder = object_dir(storage, 0, BUCKET, "k")
        a, b = (folder / f"{p.data_id}.shard" for p in meta.parts[:2])
        tmp = folder / "swap"
        a.rename(tmp)
        b.rename(a)
        tmp.rename(b)
        check = await store.check_shards(BUCKET, "k", deep=False)
        assert check[0].state == State.SHARD_CORRUPT
        assert sorted(check[0].bad_shards) == sorted(p.data_id for p in meta.parts[:2])
        with pytest.raises(errors.ObjectTampered):
            [x async for x in store.read_shard(0, StoredVersion.of_part(BUCKET, "k", meta.parts[0]), 0, 0)]
        # Member 0 is read around: the object reads as itself.
        assert await read_object(store, BUCKET, "k") == b"".join(PARTS)
    run(storage, test)


def test_overwrite_undo_and_delete_handle_every_part_shard(tmp_path):
    storage = RealStorage(tmp_path)

    async def test(store):
        await put(store, BUCKET, "k", data(300_000, 5))
        plain = await store.get_object_meta(BUCKET, "k")
        meta = await put_multipart(store, BUCKET, "k", PARTS)
        folder = object_dir(storage, 2, BUCKET, "k")
        # The plain version is kept for an undo, with its shard; a check keeps both versions' shards.
        assert (folder / "prev.json").exists() and (folder / f"{plain.data_id}.shard").exists()
        check = await store.check_shards(BUCKET, "k", deep=True)
        assert all(c.state == State.OK and c.orphans_removed == 0 for c in check)
        # The undo of a completion that missed its quorum puts the plain version back.
        await store.delete_version(2, StoredVersion(BUCKET, "k", meta.data_id))
        assert storage.drive(2).get_object_meta(BUCKET, "k").data_id == plain.data_id
        assert sorted(p.name for p in folder.glob("*.shard")) == [f"{plain.data_id}.shard"]
        # Overwriting the multipart object with a plain one, then the retained version dropped.
        await put(store, BUCKET, "k", data(1_000_000, 6))
        newest = await store.get_object_meta(BUCKET, "k")
        folder0 = object_dir(storage, 0, BUCKET, "k")
        storage.drive(0)._drop_retained(folder0, None)
        assert sorted(p.name for p in folder0.glob("*.shard")) == [f"{newest.data_id}.shard"]
        await store.delete_object(BUCKET, "k")
        assert not folder0.exists()
    run(storage, test)


def test_part_objects_must_describe_themselves(tmp_path):
    storage = RealStorage(tmp_path)
    drive = storage.drive(0)
    meta = types_pb2.ObjectMeta(bucket=SYSTEM_BUCKET, key="b/parts/x/00001", data_id=new_id(),
                                erasure=types_pb2.ErasureLayout(data_shards=2, parity_shards=2, stripe_count=0),
                                inline=True, parts=[types_pb2.ObjectPart(number=1)])
    meta.parts[0].data_id = meta.data_id
    with pytest.raises(errors.InvalidArgument):  # a part is never inline: Complete moves its file
        drive.commit_object(meta.data_id, meta, inline_block=b"")
    meta.inline = False
    meta.parts[0].data_id = new_id()  # a multipart object is not made by CommitObject
    drive.open_upload(meta.data_id, SYSTEM_BUCKET).finish()
    with pytest.raises(errors.InvalidArgument):
        drive.commit_object(meta.data_id, meta)


def test_object_tags_are_conditional_and_bucket_policy_and_tags_kept_on_every_drive(tmp_path):
    storage = RealStorage(tmp_path)

    async def test(store):
        await put(store, BUCKET, "k", data(1000, 1))
        meta = await store.get_object_meta(BUCKET, "k")
        await store.update_object_tags(BUCKET, "k", meta.data_id, {"team": "blue"})
        tagged = await store.get_object_meta(BUCKET, "k")
        assert dict(tagged.tags) == {"team": "blue"} and tagged.data_id == meta.data_id
        with pytest.raises(errors.PreconditionFailed):
            await store.update_object_tags(BUCKET, "k", new_id(), {"x": "y"})
        await store.update_object_tags(BUCKET, "k", meta.data_id, {})
        assert not (await store.get_object_meta(BUCKET, "k")).tags

        policy = '{"Version":"2012-10-17","Statement":[]}'
        info = await store.update_bucket(BUCKET, policy_json=policy)
        assert info.policy_json == policy and not info.tags
        info = await store.update_bucket(BUCKET, tags={"env": "prod"})
        assert info.policy_json == policy and dict(info.tags) == {"env": "prod"}
        for member in range(4):
            got = storage.drive(member).get_bucket(BUCKET)
            assert (got.policy_json, dict(got.tags)) == (policy, {"env": "prod"})
        info = await store.update_bucket(BUCKET, policy_json="")
        assert info.policy_json == "" and dict(info.tags) == {"env": "prod"}
        with pytest.raises(errors.InvalidBucketName):
            await store.update_bucket(SYSTEM_BUCKET, tags={"a": "b"})
    run(storage, test)


def test_uploads_live_in_the_completed_objects_set(tmp_path):
    storage = RealStorage(tmp_path, nodes=8, parity=2, sets=2)

    async def test(store):
        keys = [f"key-{i}" for i in range(6)]
        sets = {store.set_for(BUCKET, k).set_index for k in keys}
        assert sets == {0, 1}  # the keys spread over both sets
        for k in keys:
            assert store.set_for_upload(BUCKET, k) is store.set_for(BUCKET, k)
        with pytest.raises(errors.InvalidArgument):
            store.set_for(SYSTEM_BUCKET, multipart.record_key(BUCKET, new_id()))
        for k in keys[:3]:
            await put_multipart(store, BUCKET, k, PARTS[:2])
            assert await read_object(store, BUCKET, k) == PARTS[0] + PARTS[1]
        uploads = [await upload(store, BUCKET, k, PARTS[2:]) for k in keys[3:]]
        records, _ = await store.list_objects(SYSTEM_BUCKET, multipart.uploads_prefix(BUCKET), "", 1000)
        assert sorted(r.upload.upload_id for r in records) == sorted(u for u, _ in uploads)
    run(storage, test)


def test_completing_an_aborted_upload_is_no_such_upload_and_makes_no_object(tmp_path):
    storage = RealStorage(tmp_path)

    async def test(store):
        upload_id, parts = await upload(store, BUCKET, "k", PARTS)
        # An abort (a prefix delete) that removed the record and part 2 everywhere before the completion.
        for key in (multipart.record_key(BUCKET, upload_id), multipart.part_key(BUCKET, upload_id, 2)):
            await store.delete_object(SYSTEM_BUCKET, key)
        with pytest.raises(errors.NoSuchUpload):
            await store.complete_multipart(completed_meta(store, BUCKET, "k", upload_id, parts))
        with pytest.raises(errors.NoSuchKey):
            await store.get_object_meta(BUCKET, "k")
        for member in range(4):  # nothing moved: parts 1 and 3 are where they were
            assert system_keys(storage, member) == [multipart.part_key(BUCKET, upload_id, n) for n in (1, 3)]
    run(storage, test)


def test_equal_size_part_shards_swapped_or_another_objects_shard_renamed_fail_their_checksums(tmp_path):
    storage = RealStorage(tmp_path)
    same = [data(200_000, 7), data(200_000, 8)]

    async def test(store):
        meta = await put_multipart(store, BUCKET, "k", same)
        folder = object_dir(storage, 0, BUCKET, "k")
        a, b = (folder / f"{p.data_id}.shard" for p in meta.parts)
        tmp = folder / "swap"
        a.rename(tmp)
        b.rename(a)
        tmp.rename(b)
        assert (await store.check_shards(BUCKET, "k", deep=False))[0].state == State.OK  # sizes fit
        deep = (await store.check_shards(BUCKET, "k", deep=True))[0]
        assert deep.state == State.SHARD_CORRUPT and sorted(deep.bad_shards) == sorted(p.data_id for p in meta.parts)
        with pytest.raises(errors.ObjectTampered):
            [x async for x in store.read_shard(0, StoredVersion.of_part(BUCKET, "k", meta.parts[0]), 0, 0)]
        assert await read_object(store, BUCKET, "k") == b"".join(same)

        # A plain object's shard replaced by another object's shard of the same size, renamed.
        big = [data(600_000, 9), data(600_000, 10)]  # shard files (not inline) of the same size
        await put(store, BUCKET, "x", big[0])
        await put(store, BUCKET, "y", big[1])
        x, y = await store.get_object_meta(BUCKET, "x"), await store.get_object_meta(BUCKET, "y")
        x_shard = object_dir(storage, 1, BUCKET, "x") / f"{x.data_id}.shard"
        x_shard.unlink()
        os.link(object_dir(storage, 1, BUCKET, "y") / f"{y.data_id}.shard", x_shard)
        with pytest.raises(errors.ObjectTampered):
            [b async for b in store.read_shard(1, StoredVersion(BUCKET, "x", x.data_id), 0, 0)]
        assert await read_object(store, BUCKET, "x") == big[0]
    run(storage, test)
