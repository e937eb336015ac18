"""One drive folder: buckets, commit protocol, overwrite, abort, tmp cleanup, listing."""
from __future__ import annotations

import hashlib
import json

import pytest

from sealstore import errors
from sealstore.v1 import types_pb2
from services.storage import drive as drive_module
from services.storage.drive import Drive
from services.storage.node import Node


def meta_for(bucket, key, data_id, blocks, mtime=1):
    return types_pb2.ObjectMeta(
        format_version=1, bucket=bucket, key=key, data_id=data_id, size=sum(map(len, blocks)),
        stored_size=sum(map(len, blocks)), etag="e-" + data_id, mtime_ns=mtime,
        erasure=types_pb2.ErasureLayout(data_shards=2, parity_shards=2, stripe_size=1049088,
                                        ec_type="isa_l_rs_cauchy", block_checksum="xxh3-128",
                                        stripe_count=len(blocks)))


def put(drive, bucket, key, data_id, blocks, mtime=1):
    w = drive.open_upload(data_id, bucket)
    for b in blocks:
        w.write_block(b)
    w.finish()
    drive.commit_object(data_id, meta_for(bucket, key, data_id, blocks, mtime))


def read_all(drive, bucket, key, data_id=""):
    with drive.open_shard(bucket, key, data_id) as r:
        return [b for _, b in r.read_blocks(0, r.block_count)]


def object_dir(drive, bucket, key):
    h = hashlib.sha256(key.encode()).hexdigest()
    return drive.root / "buckets" / bucket / "objects" / h[:2] / h


@pytest.fixture
def drive(tmp_path):
    d = Drive(tmp_path / "d0")
    d.make_bucket("photos", 123)
    return d


def test_bucket_names_follow_s3_rules(tmp_path):
    d = Drive(tmp_path / "d")
    for bad in ["ab", "a" * 64, "UPPER", "under_score", "-start", "end-", "a..b", "192.168.1.1", "a.-b"]:
        with pytest.raises(errors.InvalidBucketName):
            d.make_bucket(bad, 1)
    for good in ["abc", "a" * 63, "my.bucket-1", "1bucket"]:
        assert d.make_bucket(good, 1).name == good
    assert [b.name for b in d.list_buckets()] == sorted(["abc", "a" * 63, "my.bucket-1", "1bucket"])


def test_bucket_lifecycle(drive):
    with pytest.raises(errors.BucketAlreadyOwnedByYou):
        drive.make_bucket("photos", 1)
    assert drive.get_bucket("photos").created_ns == 123
    info = drive.set_bucket_encryption("photos", types_pb2.BucketEncryption(sse_algorithm="aws:kms",
                                                                            kms_master_key_id="k1"))
    assert drive.get_bucket("photos").encryption.kms_master_key_id == "k1" == info.encryption.kms_master_key_id
    stored = json.loads((drive.root / "buckets/photos/bucket.json").read_text())
    assert stored["encryption"]["sse_algorithm"] == "aws:kms"  # protobuf JSON on disk
    assert not drive.set_bucket_encryption("photos", types_pb2.BucketEncryption()).HasField("encryption")
    drive.delete_bucket("photos")
    with pytest.raises(errors.NoSuchBucket):
        drive.get_bucket("photos")
    with pytest.raises(errors.NoSuchBucket):
        drive.delete_bucket("photos")


def test_commit_then_read(drive):
    blocks = [b"a" * 100, b"b" * 100, b"c" * 7]
    w = drive.open_upload("up1", "photos")
    for b in blocks:
        w.write_block(b)
    w.finish()
    with pytest.raises(errors.NoSuchKey):  # nothing visible before commit
        drive.get_object_meta("photos", "dir/x.jpg")
    drive.commit_object("up1", meta_for("photos", "dir/x.jpg", "up1", blocks))
    assert drive.get_object_meta("photos", "dir/x.jpg").data_id == "up1"
    assert read_all(drive, "photos", "dir/x.jpg") == blocks
    assert list((drive.root / "tmp").iterdir()) == []
    files = sorted(p.name for p in object_dir(drive, "photos", "dir/x.jpg").iterdir())
    assert files == ["meta.json", "up1.shard"]
    raw = json.loads((object_dir(drive, "photos", "dir/x.jpg") / "meta.json").read_text())
    assert raw["key"] == "dir/x.jpg" and raw["erasure"]["block_checksum"] == "xxh3-128"


def test_long_and_unicode_keys(drive):
    key = "ü/" + "k" * 1000
    put(drive, "photos", key, "u1", [b"z"])
    assert drive.get_object_meta("photos", key).key == key
    with pytest.raises(errors.KeyTooLongError):
        drive.get_object_meta("photos", "k" * 1025)


def test_overwrite_replaces_version_and_removes_old_shard(drive, monkeypatch):
    monkeypatch.setattr(drive_module, "RETAIN_PREVIOUS_SECONDS", 0.0)
    put(drive, "photos", "k", "v1", [b"1" * 10])
    with drive.open_shard("photos", "k", "v1") as old_reader:
        put(drive, "photos", "k", "v2", [b"2" * 10, b"2"])
        put(drive, "photos", "other", "o1", [b"o"])  # the next commit drops what expired
        # A reader that opened v1 keeps reading it even though the file is gone.
        assert old_reader.read_block(0) == b"1" * 10
    assert drive.get_object_meta("photos", "k").data_id == "v2"
    assert read_all(drive, "photos", "k") == [b"2" * 10, b"2"]
    assert not (object_dir(drive, "photos", "k") / "v1.shard").exists()
    assert not (object_dir(drive, "photos", "k") / "prev.json").exists()
    with pytest.raises(errors.NoSuchKey):
        drive.open_shard("photos", "k", "v1")


def test_failed_overwrite_keeps_previous_version(drive):
    put(drive, "photos", "k", "v1", [b"1" * 10])
    # An upload whose commit never happens (e.g. quorum failed) changes nothing visible.
    w = drive.open_upload("v2", "photos")
    w.write_block(b"2" * 10)
    w.finish()
    drive.abort_upload("v2")
    with pytest.raises(errors.InvalidRequest):
        drive.commit_object("v2", meta_for("photos", "k", "v2", [b"2" * 10]))
    assert drive.get_object_meta("photos", "k").data_id == "v1"
    assert read_all(drive, "photos", "k") == [b"1" * 10]
    assert list((drive.root / "tmp").iterdir()) == []


def test_commit_checks_data_id_and_bucket(drive):
    w = drive.open_upload("v9", "photos")
    w.finish()
    with pytest.raises(errors.InvalidArgument):
        drive.commit_object("v9", meta_for("photos", "k", "other", []))
    with pytest.raises(errors.NoSuchBucket):
        drive.commit_object("v9", meta_for("nobucket", "k", "v9", []))
    with pytest.raises(errors.NoSuchBucket):
        drive.open_upload("v10", "nobucket")
    with pytest.raises(errors.InvalidArgument):
        drive.open_upload("../evil", "photos")


def test_empty_object(drive):
    put(drive, "photos", "empty", "e1", [])
    meta = drive.get_object_meta("photos", "empty")
    assert meta.size == 0 and meta.erasure.stripe_count == 0
    assert read_all(drive, "photos", "empty") == []


def test_restart_removes_leftover_tmp_files(tmp_path):
    d = Drive(tmp_path / "d")
    d.make_bucket("photos", 1)
    w = d.open_upload("crashed", "photos")
    w.write_block(b"partial")
    assert (tmp_path / "d/tmp/crashed.shard").exists()
    Drive(tmp_path / "d")  # the node restarts
    assert list((tmp_path / "d/tmp").iterdir()) == []
    assert d.get_bucket("photos").name == "photos"


def test_delete_object_is_idempotent_and_bucket_not_empty(drive):
    put(drive, "photos", "a", "a1", [b"x"])
    with pytest.raises(errors.BucketNotEmpty):
        drive.delete_bucket("photos")
    assert drive.get_object_meta("photos", "a").data_id == "a1"  # refusal changed nothing
    drive.delete_object("photos", "a")
    drive.delete_object("photos", "a")
    with pytest.raises(errors.NoSuchKey):
        drive.get_object_meta("photos", "a")
    assert not object_dir(drive, "photos", "a").exists()
    drive.delete_bucket("photos")
    assert drive.list_buckets() == []


def test_list_objects_prefix_start_after_max_keys(drive):
    keys = ["a/1", "a/2", "a/3", "b/1", "a/0"]
    for i, k in enumerate(keys):
        put(drive, "photos", k, f"id{i}", [b"d" * (i + 1)])
    entries, truncated = drive.list_objects("photos", "a/", "", 1000)
    assert [e.key for e in entries] == ["a/0", "a/1", "a/2", "a/3"] and not truncated
    assert entries[1].size == 1 and entries[1].data_id == "id0"
    entries, truncated = drive.list_objects("photos", "a/", "a/0", 2)
    assert [e.key for e in entries] == ["a/1", "a/2"] and truncated
    entries, truncated = drive.list_objects("photos", "", "a/3", 2)
    assert [e.key for e in entries] == ["b/1"] and not truncated
    with pytest.raises(errors.NoSuchBucket):
        drive.list_objects("nobucket", "", "", 10)


def test_node_bucket_calls_span_drives(tmp_path):
    node = Node("n", [tmp_path / "d0", tmp_path / "d1"])
    node.make_bucket("shared", 5)
    assert all(d.get_bucket("shared").created_ns == 5 for d in node.drives)
    with pytest.raises(errors.BucketAlreadyOwnedByYou):
        node.make_bucket("shared", 6)
    put(node.drive(1), "shared", "k", "k1", [b"x"])
    with pytest.raises(errors.BucketNotEmpty):
        node.delete_bucket("shared")
    assert node.drive(0).has_bucket("shared")  # refused on one drive → untouched on all
    with pytest.raises(errors.InvalidArgument):
        node.drive(2)
    assert node.count_objects() == 1


def test_conditional_delete_spares_a_newer_version(drive):
    put(drive, "photos", "k", "old", [b"1"])
    put(drive, "photos", "k", "new", [b"2"], mtime=2)
    drive.delete_object("photos", "k", only_data_id="old")  # the undo of a failed commit of "old"
    assert drive.get_object_meta("photos", "k").data_id == "new"
    assert read_all(drive, "photos", "k") == [b"2"]
    drive.delete_object("photos", "k")
    with pytest.raises(errors.NoSuchKey):
        drive.get_object_meta("photos", "k")


def test_undone_overwrite_puts_the_previous_version_back(drive):
    """An overwrite that missed its write quorum is undone on the drives it reached: the version
    it replaced comes back (deleting the key there would lose an acknowledged object when the
    drives that missed the commit are fewer than the read quorum)."""
    put(drive, "photos", "k", "v1", [b"1" * 10])
    put(drive, "photos", "k", "v2", [b"2" * 10], mtime=2)
    put(drive, "photos", "k", "v3", [b"3" * 10], mtime=3)
    drive.delete_object("photos", "k", only_data_id="v3")
    assert drive.get_object_meta("photos", "k").data_id == "v2"
    assert read_all(drive, "photos", "k") == [b"2" * 10]
    folder = object_dir(drive, "photos", "k")
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "v2.shard"]
    # Nothing more is kept: a second undo of v2 deletes the key.
    drive.delete_object("photos", "k", only_data_id="v2")
    with pytest.raises(errors.NoSuchKey):
        drive.get_object_meta("photos", "k")


def test_undo_without_a_kept_version_deletes(drive, monkeypatch):
    monkeypatch.setattr(drive_module, "RETAIN_PREVIOUS_SECONDS", 0.0)
    put(drive, "photos", "k", "v1", [b"1"])
    put(drive, "photos", "k", "v2", [b"2"], mtime=2)
    put(drive, "photos", "x", "x1", [b"x"])  # expires what v2 kept
    drive.delete_object("photos", "k", only_data_id="v2")
    with pytest.raises(errors.NoSuchKey):
        drive.get_object_meta("photos", "k")


def test_listing_parses_only_files_that_changed(drive, monkeypatch):
    """Listing parsed every meta.json each time (an inline object's holds its shard): under load
    it became the storage nodes' bottleneck. Listings now read the index that commits and
    deletes keep, and stat the page's files: only a file changed behind the index's back (here
    a hand-restored older copy) is parsed."""
    for n in range(5):
        put(drive, "photos", f"k{n}", f"v{n}", [b"x" * 10])
    parsed = []
    real_parse = drive_module._parse_meta
    monkeypatch.setattr(drive_module, "_parse_meta", lambda raw, *a: parsed.append(1) or real_parse(raw, *a))

    def listed():
        entries, _ = drive.list_objects("photos", "", "", 0)
        return [(e.key, e.data_id) for e in entries]
    assert listed() == [(f"k{n}", f"v{n}") for n in range(5)]
    assert parsed == []
    k1 = object_dir(drive, "photos", "k1") / "meta.json"
    old_k1 = k1.read_bytes()
    put(drive, "photos", "k1", "w1", [b"y" * 10], mtime=2)
    drive.delete_object("photos", "k3")
    put(drive, "photos", "k9", "v9", [b"z"])
    parsed.clear()
    assert listed() == [("k0", "v0"), ("k1", "w1"), ("k2", "v2"), ("k4", "v4"), ("k9", "v9")]
    assert parsed == []
    k1.write_bytes(old_k1)
    assert listed() == [("k0", "v0"), ("k1", "v1"), ("k2", "v2"), ("k4", "v4"), ("k9", "v9")]
    assert len(parsed) == 1
    parsed.clear()
    assert listed()[1] == ("k1", "v1") and parsed == []  # the row was repaired


def _tmp_files(drive):
    return sorted(p.name for p in drive.tmp.iterdir())


def test_a_one_stripe_object_arrives_with_its_commit(drive):
    """CommitObject's shard_block: the shard file is written in the same call, bound to the data id
    like a streamed one, and read back like any other."""
    block = bytes(range(256)) * 2048
    drive.commit_object("one1", meta_for("photos", "k", "one1", [block]), shard_block=block)
    assert read_all(drive, "photos", "k") == [block]
    assert (object_dir(drive, "photos", "k") / "one1.shard").is_file()
    assert _tmp_files(drive) == []
    # The shard's checksums are bound to its data id: renamed to another version it is refused.
    drive.commit_object("one2", meta_for("photos", "k2", "one2", [block]), shard_block=block)
    d2 = object_dir(drive, "photos", "k2")
    (d2 / "one1.shard").write_bytes((object_dir(drive, "photos", "k") / "one1.shard").read_bytes())
    (d2 / "one1.shard").replace(d2 / "one2.shard")
    with pytest.raises(errors.SealstoreError):
        read_all(drive, "photos", "k2")


@pytest.mark.parametrize("how", ["inline", "two stripes", "no stripe", "conditional", "other data id"])
def test_a_shard_block_with_any_other_commit_is_refused_and_leaves_nothing(drive, how):
    block = b"s" * 1000
    meta = meta_for("photos", "k", "bad1", [block])
    kwargs = {}
    if how == "inline":
        meta.inline = True
    elif how == "two stripes":
        meta.erasure.stripe_count = 2
    elif how == "no stripe":
        meta.erasure.stripe_count = 0
    elif how == "conditional":
        kwargs = {"conditional": True, "expect_data_id": ""}
    else:
        meta.data_id = "bad2"
    with pytest.raises(errors.InvalidArgument):
        drive.commit_object("bad1", meta, shard_block=block, **kwargs)
    assert _tmp_files(drive) == []
    with pytest.raises(errors.NoSuchKey):
        drive.get_object_meta("photos", "k")


def test_a_shard_block_never_replaces_a_streamed_upload_of_the_same_id(drive):
    streamed = b"streamed" * 100
    w = drive.open_upload("same1", "photos", "same1")
    w.write_block(streamed)
    w.finish()
    with pytest.raises(errors.InvalidRequest):
        drive.commit_object("same1", meta_for("photos", "k", "same1", [b"x" * 800]), shard_block=b"x" * 800)
    assert _tmp_files(drive) == ["same1.shard"]  # the stream's shard is still there, untouched
    drive.commit_object("same1", meta_for("photos", "k", "same1", [streamed]))
    assert read_all(drive, "photos", "k") == [streamed]


def test_a_one_stripe_commit_that_fails_leaves_no_temporary_shard(drive, monkeypatch):
    with pytest.raises(errors.NoSuchBucket):
        drive.commit_object("nb1", meta_for("absent", "k", "nb1", [b"x"]), shard_block=b"x")

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(drive_module, "_write_meta", full)
    with pytest.raises(OSError):
        drive.commit_object("full1", meta_for("photos", "k", "full1", [b"y" * 500]), shard_block=b"y" * 500)
    assert _tmp_files(drive) == []
    assert not (object_dir(drive, "photos", "k") / "full1.shard").exists()


def test_a_get_takes_a_one_stripe_shard_with_the_metadata_but_never_a_bad_one(drive):
    """GetObjectMeta with_inline_shard: the block of a one-stripe shard file, verified here and
    framed as an inline shard; left out (the metadata still answered) when the file is rotten or
    gone, for a larger object, and without the flag."""
    from sealstore.erasure import framing
    block = bytes(range(256)) * 1024
    drive.commit_object("get1", meta_for("photos", "one", "get1", [block]), shard_block=block)
    answer = drive.get_object_meta("photos", "one", with_inline_shard=True)
    reader = framing.InlineShardReader(answer.inline_shard, 1)
    assert [b for _, b in reader.read_blocks(0, 1)] == [block]
    assert not drive.get_object_meta("photos", "one").inline_shard
    put(drive, "photos", "two", "get2", [block, block[:100]])
    assert not drive.get_object_meta("photos", "two", with_inline_shard=True).inline_shard
    shard = object_dir(drive, "photos", "one") / "get1.shard"
    rotten = bytearray(shard.read_bytes())
    rotten[-1] ^= 1
    shard.write_bytes(rotten)
    answer = drive.get_object_meta("photos", "one", with_inline_shard=True)
    assert answer.data_id == "get1" and not answer.inline_shard
    shard.unlink()
    answer = drive.get_object_meta("photos", "one", with_inline_shard=True)
    assert answer.data_id == "get1" and not answer.inline_shard
