"""A drive's metadata file that is not a readable ObjectMeta (bit rot, a truncated write, hand
edits) is a bad copy with a state of its own, never a crash and never "no copy"; a metadata
file that names another object than its folder's is never listed (issue 8, "Heal cannot repair
metadata with bitrot"; issue 7, finding 1)."""
from __future__ import annotations

import json
import logging
import shutil

import pytest

from sealstore import errors
from sealstore.erasure.quorum import CORRUPT_COPY
from sealstore.v1 import storage_pb2
from services.storage.drive import Drive
from tests.storage.test_drive import meta_for, object_dir, put, read_all
from tests.storage.test_healing_support import upload

State = storage_pb2.CheckShardResponse


def _flip(raw: bytes) -> bytes:
    middle = bytearray(raw)
    middle[len(middle) // 2] ^= 0xFF
    return bytes(middle)


CORRUPTIONS = {
    "flipped-byte": _flip,
    "truncated": lambda raw: raw[: len(raw) // 2],
    "empty": lambda raw: b"",
    "not-json": lambda raw: b"this is not JSON",
    "json-array": lambda raw: b"[1, 2, 3]",
    "json-empty-object": lambda raw: b"{}",
    "unknown-fields-only": lambda raw: b'{"color": "blue"}',
    "wrong-types": lambda raw: raw.replace(b'"size": "', b'"size": "x'),
    "no-data-id": lambda raw: json.dumps({k: v for k, v in json.loads(raw).items() if k != "data_id"}).encode(),
}


@pytest.fixture
def drive(tmp_path):
    d = Drive(tmp_path / "d0")
    d.make_bucket("bkt", 1)
    return d


def _put_inline(d: Drive, key: str, data_id: str, block: bytes, mtime: int = 1) -> None:
    meta = meta_for("bkt", key, data_id, [block], mtime)
    meta.inline = True
    d.commit_object(data_id, meta, inline_block=block)


def _store(d: Drive, key: str, inline: bool) -> None:
    if inline:
        _put_inline(d, key, "v1", b"inline-block")
    else:
        put(d, "bkt", key, "v1", [b"a" * 100, b"b" * 50])


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "streamed"])
@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_corrupt_metadata_is_a_typed_bad_copy_that_only_a_heal_that_saw_it_replaces(drive, corruption, inline):
    _store(drive, "k", inline)
    obj = object_dir(drive, "bkt", "k")
    good = (obj / "meta.json").read_bytes()
    corrupted = CORRUPTIONS[corruption](good)
    assert corrupted != good
    (obj / "meta.json").write_bytes(corrupted)
    shards_before = sorted(p.name for p in obj.glob("*.shard"))

    # Reads get the error table's ObjectTampered (DATA_LOSS), not a parser's exception (a 500).
    with pytest.raises(errors.ObjectTampered):
        drive.get_object_meta("bkt", "k")
    with pytest.raises(errors.ObjectTampered):
        drive.open_shard("bkt", "k", "")
    check = drive.check_shard("bkt", "k", deep=True)
    assert check.state == State.META_CORRUPT and not check.HasField("meta") and check.detail
    assert sorted(p.name for p in obj.glob("*.shard")) == shards_before  # nothing deleted as an orphan
    assert drive.list_objects("bkt", "", "", 0) == ([], False)
    # An undo naming a version never deletes an unreadable copy.
    drive.delete_object("bkt", "k", only_data_id="v1")
    assert (obj / "meta.json").read_bytes() == corrupted

    # A heal that saw "no copy" (or a version) is refused: it did not see this copy.
    refused = meta_for("bkt", "k", "v1", [b"x"])
    refused.inline = True
    for expected in ("", "v1"):
        with pytest.raises(errors.PreconditionFailed):
            drive.commit_object("heal-x", refused, conditional=True, expect_data_id=expected, inline_block=b"x")
    # A heal that saw it corrupt replaces it, byte for byte as it was.
    if inline:
        meta = meta_for("bkt", "k", "v1", [b"inline-block"])
        meta.inline = True
        drive.commit_object("heal-1", meta, conditional=True, expect_data_id=CORRUPT_COPY,
                            inline_block=b"inline-block")
        assert read_all(drive, "bkt", "k") == [b"inline-block"]
    else:
        upload(drive, "heal-1", "bkt", [b"a" * 100, b"b" * 50])
        drive.commit_object("heal-1", meta_for("bkt", "k", "v1", [b"a" * 100, b"b" * 50]), conditional=True,
                            expect_data_id=CORRUPT_COPY)
        assert read_all(drive, "bkt", "k") == [b"a" * 100, b"b" * 50]
    assert (obj / "meta.json").read_bytes() == good
    assert drive.check_shard("bkt", "k", deep=True).state == State.OK
    assert [e.key for e in drive.list_objects("bkt", "", "", 0)[0]] == ["k"]


def test_a_put_over_a_corrupt_copy_succeeds_and_then_wins_over_the_heal(drive):
    _store(drive, "k", inline=False)
    obj = object_dir(drive, "bkt", "k")
    (obj / "meta.json").write_bytes(_flip((obj / "meta.json").read_bytes()))
    upload(drive, "heal-1", "bkt", [b"a" * 100, b"b" * 50])  # the heal saw the copy corrupt...
    put(drive, "bkt", "k", "v2", [b"new"], mtime=2)          # ...then a PUT replaced it
    with pytest.raises(errors.PreconditionFailed):
        drive.commit_object("heal-1", meta_for("bkt", "k", "v1", [b"a" * 100, b"b" * 50]), conditional=True,
                            expect_data_id=CORRUPT_COPY)
    assert read_all(drive, "bkt", "k") == [b"new"]
    assert not list(drive.tmp.iterdir())
    # The corrupt copy's shard file, which nothing names now, goes with the next check.
    assert drive.check_shard("bkt", "k").orphans_removed == 1
    assert sorted(p.name for p in obj.glob("*.shard")) == ["v2.shard"]


def test_a_corrupt_file_is_skipped_by_listings_and_logged_once(drive, caplog):
    _put_inline(drive, "a", "v1", b"x")
    _put_inline(drive, "b", "v2", b"y")
    path = object_dir(drive, "bkt", "a") / "meta.json"
    path.write_bytes(b"{ truncated")
    with caplog.at_level(logging.WARNING, logger="services.storage.drive"):
        for _ in range(3):
            assert [e.key for e in drive.list_objects("bkt", "", "", 0)[0]] == ["b"]
            with pytest.raises(errors.ObjectTampered):
                drive.get_object_meta("bkt", "a")
    assert len([r for r in caplog.records if "unreadable metadata" in r.getMessage()]) == 1


@pytest.mark.parametrize("relocation", ["other-bucket-other-key", "other-bucket-same-key", "same-bucket-other-key"])
def test_a_metadata_file_in_another_objects_folder_is_never_listed(tmp_path, caplog, relocation):
    d = Drive(tmp_path / "d0")
    d.make_bucket("bucket1", 1)
    d.make_bucket("bucket2", 1)
    source = {"other-bucket-other-key": ("bucket1", "A"), "other-bucket-same-key": ("bucket1", "B"),
              "same-bucket-other-key": ("bucket2", "A")}[relocation]
    put(d, *source, "v-src", [b"secret"])
    put(d, "bucket2", "B", "v-b", [b"b-data"])
    put(d, "bucket2", "C", "v-c", [b"c-data"])
    src, dst = object_dir(d, *source), object_dir(d, "bucket2", "B")
    shutil.copyfile(src / "meta.json", dst / "meta.json")
    shutil.copyfile(src / "v-src.shard", dst / "v-src.shard")
    with caplog.at_level(logging.WARNING, logger="services.storage.drive"):
        listed = [(e.key, e.data_id) for e in d.list_objects("bucket2", "", "", 0)[0]]
        d.list_objects("bucket2", "", "", 0)
    expected = [("A", "v-src"), ("C", "v-c")] if relocation == "same-bucket-other-key" else [("C", "v-c")]
    assert listed == expected
    assert len([r for r in caplog.records if "names another object" in r.getMessage()]) == 1
    assert source[1] in [e.key for e in d.list_objects(source[0], "", "", 0)[0]]  # the source is intact


def test_a_heal_replaces_a_foreign_copy_it_saw_but_never_a_put_made_since(tmp_path):
    d = Drive(tmp_path / "d0")
    d.make_bucket("bucket1", 1)
    d.make_bucket("bucket2", 1)
    put(d, "bucket1", "A", "v-a", [b"secret"])
    put(d, "bucket2", "B", "v-b", [b"b-data"])
    src, dst = object_dir(d, "bucket1", "A"), object_dir(d, "bucket2", "B")
    source_before = {p.name: p.read_bytes() for p in src.iterdir()}
    for f in src.iterdir():
        shutil.copyfile(f, dst / f.name)
    (dst / "v-b.shard").unlink()
    # The heal saw A's copy (data id v-a) in B's folder: its commit replaces exactly that.
    upload(d, "heal-1", "bucket2", [b"b-data"])
    d.commit_object("heal-1", meta_for("bucket2", "B", "v-b", [b"b-data"]), conditional=True, expect_data_id="v-a")
    assert read_all(d, "bucket2", "B") == [b"b-data"]
    assert sorted(p.name for p in dst.glob("*.shard")) == ["v-b.shard"]  # A's copied shard went with it
    assert {p.name: p.read_bytes() for p in src.iterdir()} == source_before

    # Moved in again, then a PUT replaced it before the heal's commit: the PUT stays.
    shutil.copyfile(src / "meta.json", dst / "meta.json")
    upload(d, "heal-2", "bucket2", [b"b-data"])
    put(d, "bucket2", "B", "v-b2", [b"newer"], mtime=2)
    with pytest.raises(errors.PreconditionFailed):
        d.commit_object("heal-2", meta_for("bucket2", "B", "v-b", [b"b-data"]), conditional=True,
                        expect_data_id="v-a")
    assert read_all(d, "bucket2", "B") == [b"newer"]
