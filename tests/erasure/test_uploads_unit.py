"""Uploads in progress at the erasure layer (sealstore/erasure/uploads.py), in-process on real
drives: summaries, removal that leaves no file on any drive (even on a drive that missed a
quorum delete), expiry by age, parts left without a record, and the heal walk's expiry."""
from __future__ import annotations

import random
import time

import pytest

from sealstore import multipart
from sealstore.erasure import uploads
from sealstore.multipart import SYSTEM_BUCKET
from services.heal.healer import Healer, ScannerSettings
from tests.erasure.multipart_objects import upload
from tests.fakes.real_storage import RealStorage

BUCKET = "uploads-unit"
PARTS = [random.Random(n).randbytes(size) for n, size in enumerate((200_000, 70_000))]
HOUR_NS = 3600 * 10**9


def upload_files(storage: RealStorage, upload_id: str) -> list:
    """Files of the upload on any drive: its objects' folders hold meta.json and shard files."""
    found = []
    for member in range(4):
        root = storage.drive(member).root / "buckets" / SYSTEM_BUCKET / "objects"
        for meta in root.rglob("meta.json") if root.exists() else []:
            if upload_id.encode() in meta.read_bytes():
                found += list(meta.parent.iterdir())
    return found


def run(storage: RealStorage, test):
    async def go(store):
        await store.make_bucket(BUCKET)
        return await test(store)
    return storage.run(go)


def test_summaries_then_removal_leaves_no_file(tmp_path):
    storage = RealStorage(tmp_path)

    async def test(store):
        upload_id, _ = await upload(store, BUCKET, "k/1", PARTS)
        other_id, _ = await upload(store, BUCKET, "k/2", PARTS[:1])
        found = {(u.key, u.upload_id, u.parts, u.bytes) for _, u in await uploads.summaries(store)}
        assert found == {("k/1", upload_id, 2, sum(map(len, PARTS))), ("k/2", other_id, 1, len(PARTS[0]))}
        assert upload_files(storage, upload_id)
        one = store.set_for_upload(BUCKET, "k/1")
        assert await uploads.remove(one, BUCKET, upload_id) == 2
        assert upload_files(storage, upload_id) == []
        assert [u.upload_id for _, u in await uploads.summaries(store, BUCKET)] == [other_id]
        with pytest.raises(Exception) as exc:
            await uploads.record(one, BUCKET, upload_id)
        assert type(exc.value).__name__ == "NoSuchUpload"
    run(storage, test)


def test_a_drive_that_kept_a_part_is_emptied_by_the_removal(tmp_path):
    storage = RealStorage(tmp_path)

    async def test(store):
        upload_id, _ = await upload(store, BUCKET, "k", PARTS)
        # Members 1-3 lose part 1 (as after a quorum delete that member 0 missed): the quorum no
        # longer lists it, member 0 still does.
        key = multipart.part_key(BUCKET, upload_id, 1)
        for member in (1, 2, 3):
            storage.drive(member).delete_object(SYSTEM_BUCKET, key)
        one = store.set_for_upload(BUCKET, "k")
        await uploads.remove(one, BUCKET, upload_id)
        assert upload_files(storage, upload_id) == []
    run(storage, test)


def test_expiry_by_age_and_orphan_parts(tmp_path):
    storage = RealStorage(tmp_path)

    async def test(store):
        kept_id, _ = await upload(store, BUCKET, "fresh", PARTS[:1])
        orphan_id, _ = await upload(store, BUCKET, "orphan", PARTS)
        one = store.set_for_upload(BUCKET, "orphan")
        await one.delete_object(SYSTEM_BUCKET, multipart.record_key(BUCKET, orphan_id))
        listed = {u.upload_id: u for _, u in await uploads.summaries(store)}
        assert listed[orphan_id].key == "" and listed[orphan_id].parts == 2  # parts without a record
        assert await uploads.expire(store, 3600) == []
        later = time.time_ns() + 2 * HOUR_NS
        stale = await uploads.expire(store, 3600, now_ns=later, dry_run=True)
        assert {u.upload_id for u in stale} == {kept_id, orphan_id}
        assert upload_files(storage, orphan_id)  # a dry run removes nothing
        await uploads.expire(store, 3600, now_ns=later)
        assert upload_files(storage, orphan_id) == [] and upload_files(storage, kept_id) == []
    run(storage, test)


def test_the_heal_walk_expires_stale_uploads(tmp_path):
    storage = RealStorage(tmp_path)

    async def test(store):
        upload_id, _ = await upload(store, BUCKET, "abandoned", PARTS)
        time.sleep(0.05)
        healer = Healer(store, ScannerSettings(interval=0, upload_expiry=0.01))
        dry = await healer.wait(healer.start(dry_run=True))
        assert dry.state == "done" and dry.counts["uploads_expired"] == 1 and upload_files(storage, upload_id)
        assert any(upload_id in line for line in dry.details)
        run_ = await healer.wait(healer.start())
        assert run_.state == "done" and run_.counts["uploads_expired"] == 1
        assert run_.to_proto().counts.uploads_expired == 1
        assert upload_files(storage, upload_id) == []
        keeping = Healer(store, ScannerSettings(interval=0, upload_expiry=0))
        other_id, _ = await upload(store, BUCKET, "kept", PARTS[:1])
        assert (await keeping.wait(keeping.start())).counts["uploads_expired"] == 0
        assert upload_files(storage, other_id)
    run(storage, test)


@pytest.mark.parametrize("text, seconds", [("7d", 7 * 86400), ("12h", 43200), ("30m", 1800), ("45s", 45),
                                           ("90", 90), ("1w", 7 * 86400), ("0", 0), (" 2D ", 2 * 86400)])
def test_durations(text, seconds):
    assert uploads.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "-1h", "soon", "nan", "inf", "1y"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        uploads.parse_duration(text)


def test_expiry_setting():
    assert uploads.upload_expiry_from_env({}) == multipart.DEFAULT_UPLOAD_EXPIRY_S
    assert uploads.upload_expiry_from_env({uploads.ENV_UPLOAD_EXPIRY: "3s"}) == 3
    with pytest.raises(SystemExit):
        ScannerSettings.from_env({uploads.ENV_UPLOAD_EXPIRY: "later"})
