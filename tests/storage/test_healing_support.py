"""What healing needs from a drive: format files, CheckShard states, orphan removal, and the
conditional commit that lets a concurrent PUT or DELETE win over a heal."""
from __future__ import annotations

import json
import shutil

import pytest

from sealstore import errors
from sealstore.v1 import storage_pb2
from services.storage.drive import Drive, DriveIdentity
from services.storage.node import Node
from tests.storage.test_drive import meta_for, object_dir, put, read_all

State = storage_pb2.CheckShardResponse
ME = DriveIdentity("deployment-a", 0, 2)


def upload(drive, upload_id, bucket, blocks):
    w = drive.open_upload(upload_id, bucket)
    for b in blocks:
        w.write_block(b)
    w.finish()


def test_a_new_drive_gets_its_format_file(tmp_path):
    Drive(tmp_path / "d", ME)
    fmt = json.loads((tmp_path / "d" / ".sealstore" / "format.json").read_text())
    assert fmt == {"format_version": 1, "deployment_id": "deployment-a", "set_index": 0, "drive_index": 2}
    assert Drive(tmp_path / "d", ME).state == "online"  # and is accepted at the next start


@pytest.mark.parametrize("identity,state,words", [
    (DriveIdentity("deployment-b", 0, 2), "foreign", "belongs to deployment deployment-a"),
    (DriveIdentity("deployment-a", 0, 3), "misplaced", "is drive 2 of set 0"),
    # Same drive index in another erasure set: still the wrong slot.
    (DriveIdentity("deployment-a", 1, 2), "misplaced", "mounted as drive 2 of set 1"),
])
def test_a_foreign_or_misplaced_drive_is_refused_and_never_written(tmp_path, identity, state, words):
    d = Drive(tmp_path / "d", ME)
    d.make_bucket("bkt", 1)
    before = sorted((p.relative_to(d.root), p.stat().st_size) for p in d.root.rglob("*"))
    (d.tmp / "leftover.shard").write_bytes(b"x")  # would be cleaned by an accepted drive
    before = sorted((p.relative_to(d.root), p.stat().st_size) for p in d.root.rglob("*"))
    node = Node("n", [tmp_path / "d"], [identity])
    refused = node.all_drives[0]
    assert refused.state == state and words in refused.refusal
    with pytest.raises(errors.ServiceUnavailable, match=state if state == "misplaced" else "refused"):
        node.drive(0).make_bucket("other", 1)
    assert node.list_buckets() == [] and node.count_objects() == 0
    assert sorted((p.relative_to(d.root), p.stat().st_size) for p in d.root.rglob("*")) == before


def test_an_emptied_drive_gets_its_folders_and_format_back_on_the_next_write(tmp_path):
    d = Drive(tmp_path / "d", ME)
    d.make_bucket("bkt", 1)
    put(d, "bkt", "k", "v1", [b"a" * 10])
    for child in d.root.iterdir():
        shutil.rmtree(child)
    assert d.list_buckets() == [] and d.count_objects() == 0
    assert d.check_shard("bkt", "k").state == State.NO_META
    d.make_bucket("bkt", 1)
    assert (d.root / ".sealstore" / "format.json").exists()
    put(d, "bkt", "k", "v1", [b"a" * 10])
    assert read_all(d, "bkt", "k") == [b"a" * 10]


def test_check_shard_states_and_orphan_removal(tmp_path):
    d = Drive(tmp_path / "d")
    d.make_bucket("bkt", 1)
    assert d.check_shard("bkt", "k").state == State.NO_META
    put(d, "bkt", "k", "v1", [b"a" * 100, b"b" * 100, b"c" * 40])
    assert d.check_shard("bkt", "k", deep=True).state == State.OK
    obj = object_dir(d, "bkt", "k")
    # A crash between the rename of a new shard and its meta.json leaves an orphan shard.
    (obj / "crashed.shard").write_bytes(b"orphan")
    check = d.check_shard("bkt", "k")
    assert check.state == State.OK and check.orphans_removed == 1 and not (obj / "crashed.shard").exists()
    shard = obj / "v1.shard"
    raw = bytearray(shard.read_bytes())
    raw[30] ^= 1
    shard.write_bytes(bytes(raw))
    assert d.check_shard("bkt", "k").state == State.OK  # quick: sizes only
    deep = d.check_shard("bkt", "k", deep=True)
    assert deep.state == State.SHARD_CORRUPT and "mismatch" in deep.detail
    assert "mismatch" in d.verify_current_shard(deep.meta)  # what the node runs off its loop
    shard.write_bytes(bytes(raw[:-5]))
    assert d.check_shard("bkt", "k").state == State.SHARD_CORRUPT
    shard.unlink()
    assert d.check_shard("bkt", "k").state == State.SHARD_MISSING


def test_conditional_commit_replaces_a_corrupt_shard_but_never_a_newer_version(tmp_path):
    d = Drive(tmp_path / "d")
    d.make_bucket("bkt", 1)
    put(d, "bkt", "k", "v1", [b"a" * 100])
    (object_dir(d, "bkt", "k") / "v1.shard").write_bytes(b"garbage")
    upload(d, "heal-1", "bkt", [b"a" * 100])
    d.commit_object("heal-1", meta_for("bkt", "k", "v1", [b"a" * 100]), conditional=True, expect_data_id="v1")
    assert read_all(d, "bkt", "k") == [b"a" * 100] and not list(d.tmp.iterdir())

    # The heal saw v1, but a PUT committed v2 meanwhile: the heal loses, its upload is dropped.
    upload(d, "heal-2", "bkt", [b"a" * 100])
    put(d, "bkt", "k", "v2", [b"z" * 100], mtime=2)
    with pytest.raises(errors.PreconditionFailed):
        d.commit_object("heal-2", meta_for("bkt", "k", "v1", [b"a" * 100]), conditional=True, expect_data_id="v1")
    assert read_all(d, "bkt", "k") == [b"z" * 100] and not list(d.tmp.iterdir())

    # The heal saw no copy, but one appeared: refused too.
    upload(d, "heal-3", "bkt", [b"a" * 100])
    with pytest.raises(errors.PreconditionFailed):
        d.commit_object("heal-3", meta_for("bkt", "k2", "v1", [b"a" * 100]), conditional=True, expect_data_id="x")
    # Without `conditional`, upload id and data id must still match (a PUT's commit).
    upload(d, "u4", "bkt", [b"a"])
    with pytest.raises(errors.InvalidArgument):
        d.commit_object("u4", meta_for("bkt", "k", "v9", [b"a"]))


def test_set_slots_name_the_set_of_each_drive():
    from services.storage.server import parse_args, _identity
    args = parse_args(["--listen", "127.0.0.1:1", "--data-dir", "/tmp", "--drives", "/a,/b",
                       "--deployment-id", "dep", "--set-slots", "0:3,1:3"])
    assert [_identity(args.deployment_id, args.set_index, s) for s in args.set_slots.split(",")] == [
        DriveIdentity("dep", 0, 3), DriveIdentity("dep", 1, 3)]
    assert _identity("dep", 2, "1") == DriveIdentity("dep", 2, 1)  # a plain member index: --set-index's set
