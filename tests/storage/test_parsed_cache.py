"""Parsed metadata files are remembered by their bytes (services/storage/parsed.py), and an
overwrite keeps the replaced version by a hard link (Drive._keep_current): whatever the files
on disk hold now is what reads see, at once, even when a file changes within one timestamp tick
or in place."""
from __future__ import annotations

import json
import os

import pytest

from sealstore import errors
from sealstore.v1 import types_pb2
from services.storage import drive as drive_module
from services.storage.drive import CorruptMetadata, Drive, _parse_meta, _write_meta
from services.storage.parsed import PARSED, ParsedFiles
from tests.storage.test_drive import meta_for, object_dir, put, read_all
from tests.storage.test_listing_index import commit_inline


@pytest.fixture
def drive(tmp_path):
    d = Drive(tmp_path / "d0")
    d.make_bucket("bkt", 1)
    return d


def meta_path(d: Drive, key: str):
    return object_dir(d, "bkt", key) / "meta.json"


def test_a_meta_json_swapped_in_place_is_read_at_once(drive):
    commit_inline(drive, "bkt", "a", "va", b"A" * 64)
    commit_inline(drive, "bkt", "b", "vb", b"B" * 64)
    assert drive.get_object_meta("bkt", "a").data_id == "va"  # remembered now
    path = meta_path(drive, "a")
    before = os.stat(path)
    # The other key's file, written into this one's inode, same size, right away: the file's
    # identity (inode, size, and likely its timestamps) does not change.
    path.write_bytes(meta_path(drive, "b").read_bytes())
    assert os.stat(path).st_ino == before.st_ino and os.stat(path).st_size == before.st_size
    swapped = drive.get_object_meta("bkt", "a", with_inline_shard=True)
    assert (swapped.key, swapped.data_id) == ("b", "vb")
    with drive.open_shard("bkt", "a", "") as reader:
        assert [block for _, block in reader.read_blocks(0, reader.block_count)] == [b"B" * 64]


def test_an_older_copy_put_back_is_read_at_once(drive):
    put(drive, "bkt", "k", "v1", [b"1" * 10])
    old = meta_path(drive, "k").read_bytes()
    drive.get_object_meta("bkt", "k")
    put(drive, "bkt", "k", "v2", [b"2" * 10], mtime=2)
    assert drive.get_object_meta("bkt", "k").data_id == "v2"
    meta_path(drive, "k").write_bytes(old)
    assert drive.get_object_meta("bkt", "k").data_id == "v1"
    assert read_all(drive, "bkt", "k") == [b"1" * 10]


def test_a_remembered_file_that_rots_is_a_corrupt_copy(drive):
    commit_inline(drive, "bkt", "k", "v1")
    raw = meta_path(drive, "k").read_bytes()
    drive.get_object_meta("bkt", "k")
    meta_path(drive, "k").write_bytes(raw.replace(b'"data_id": "v1"', b'"data_id": "v/"'))
    with pytest.raises(CorruptMetadata):
        drive.get_object_meta("bkt", "k")
    with pytest.raises(errors.ObjectTampered):
        drive.open_shard("bkt", "k", "")


def test_callers_get_copies(drive):
    commit_inline(drive, "bkt", "k", "v1")
    first = drive.get_object_meta("bkt", "k")
    first.data_id, first.size = "changed", 999
    first.tags["t"] = "x"
    again = drive.get_object_meta("bkt", "k", with_inline_shard=True)
    assert (again.data_id, again.size, dict(again.tags)) == ("v1", 4, {})
    assert again.inline_shard  # the first call cleared it on its own copy only


def test_a_bucket_json_edited_on_disk_is_read_at_once(drive):
    assert not drive.get_bucket("bkt").policy_json
    path = drive.root / "buckets" / "bkt" / "bucket.json"
    info = json.loads(path.read_bytes())
    info["policy_json"] = '{"Version": "2012-10-17"}'
    path.write_text(json.dumps(info))
    assert drive.get_bucket("bkt").policy_json == '{"Version": "2012-10-17"}'
    mutable = drive.get_bucket("bkt")
    mutable.policy_json = ""
    assert drive.get_bucket("bkt").policy_json


def rich_meta() -> types_pb2.ObjectMeta:
    meta = meta_for("bkt", "ü/key with spaces", "d1", [b"x" * 10])
    meta.content_type = "text/plain"
    meta.user_metadata["a"] = "ü"
    meta.tags["t"] = "v"
    meta.checksums["CRC32"] = "AAAAAA=="
    meta.shard_index = 3
    meta.encryption.CopyFrom(types_pb2.EncryptionEnvelope(
        format_version=1, cipher="AES-256-GCM", kms_key_name="k", encrypted_dek=b"\x00\xff" * 40,
        sealed_oek=b"\x01" * 64, iv=b"\x02" * 32, context_json='{"b/k": ""}', kms_key_version=2**31,
        kms_key_id="id", customer_key_check=b"\x03"))
    meta.parts.add(number=1, data_id="p1", stripe_count=2, stored_size=2**40)
    meta.parts.add(number=3, data_id="p3", stripe_count=1, stored_size=1)
    meta.upload.bucket, meta.upload.key = "bkt", "dest"
    meta.size, meta.stored_size, meta.mtime_ns = 2**63 - 1, 2**64 - 1, -5
    return meta


def test_what_a_write_remembers_is_what_the_file_parses_to(tmp_path):
    """_write_meta remembers the message it wrote instead of parsing the file back: that message
    must equal the parse, or a read would see something the file does not say."""
    inline = meta_for("bkt", "k", "d2", [b"x"])
    inline.inline, inline.inline_shard = True, os.urandom(300)
    unknown = meta_for("bkt", "k", "d3", [b"x"])
    unknown.MergeFromString(b"\xa8\x1f\x07")  # field 501, varint 7: unknown to this ObjectMeta
    assert unknown.SerializeToString().endswith(b"\xa8\x1f\x07")
    for n, meta in enumerate([rich_meta(), inline, unknown]):
        path = tmp_path / f"meta{n}.json"
        PARSED.clear()
        _write_meta(path, meta)
        remembered = _parse_meta(path.read_bytes())
        PARSED.clear()
        parsed = _parse_meta(path.read_bytes())
        assert remembered == parsed
        assert remembered.SerializeToString(deterministic=True) == parsed.SerializeToString(deterministic=True)


def test_the_table_is_bounded_in_entries_and_bytes():
    table = ParsedFiles(max_entries=3, max_bytes=8000)
    for n in range(5):
        table.put(bytes([n]) * 32, 100, types_pb2.BucketInfo(name=f"b{n}"))
    assert len(table) == 3
    assert table.get(types_pb2.BucketInfo, bytes([0]) * 32) is None
    assert table.get(types_pb2.BucketInfo, bytes([4]) * 32).name == "b4"
    table.get(types_pb2.BucketInfo, bytes([2]) * 32)  # used: the least recent is now 3
    table.put(bytes([9]) * 32, 100, types_pb2.BucketInfo(name="b9"))
    assert table.get(types_pb2.BucketInfo, bytes([3]) * 32) is None
    assert table.get(types_pb2.BucketInfo, bytes([2]) * 32).name == "b2"
    by_bytes = ParsedFiles(max_entries=100, max_bytes=1000)
    for n in range(9):
        by_bytes.put(bytes([n]) * 32, 120, types_pb2.BucketInfo(name=f"b{n}"))
    assert len(by_bytes) == 8 and by_bytes.get(types_pb2.BucketInfo, bytes([0]) * 32) is None
    by_bytes.put(bytes([42]) * 32, 126, types_pb2.BucketInfo(name="big"))  # over max_bytes // 8: never kept
    assert by_bytes.get(types_pb2.BucketInfo, bytes([42]) * 32) is None and len(by_bytes) == 8
    # The same digest under another message type is another entry.
    assert table.get(types_pb2.ObjectMeta, bytes([2]) * 32) is None


def test_an_overwrite_keeps_the_replaced_file_by_a_link_and_an_undo_restores_it(drive):
    commit_inline(drive, "bkt", "k", "v1", b"one")
    folder = object_dir(drive, "bkt", "k")
    first = (folder / "meta.json").read_bytes()
    first_inode = os.stat(folder / "meta.json").st_ino
    commit_inline(drive, "bkt", "k", "v2", b"two")
    kept = folder / "prev.json"
    assert kept.read_bytes() == first
    assert os.stat(kept).st_ino == first_inode  # the very file, not a copy
    assert os.stat(kept).st_nlink == 1 and os.stat(folder / "meta.json").st_ino != first_inode
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "prev.json"]  # no temporary left
    commit_inline(drive, "bkt", "k", "v3", b"three")
    assert _parse_meta(kept.read_bytes()).data_id == "v2"
    drive.delete_object("bkt", "k", only_data_id="v3")  # the undo of v3
    assert drive.get_object_meta("bkt", "k").data_id == "v2"
    with drive.open_shard("bkt", "k", "") as reader:
        assert [block for _, block in reader.read_blocks(0, reader.block_count)] == [b"two"]
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json"]


def test_a_failed_overwrite_keeps_meta_json_and_drops_the_link(drive, monkeypatch):
    commit_inline(drive, "bkt", "k", "v1", b"one")
    folder = object_dir(drive, "bkt", "k")
    first = (folder / "meta.json").read_bytes()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(drive_module, "write_file_atomic", full)
    with pytest.raises(OSError):
        commit_inline(drive, "bkt", "k", "v2", b"two")
    assert (folder / "meta.json").read_bytes() == first
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json"]
    assert drive.get_object_meta("bkt", "k").data_id == "v1"


def test_a_link_left_by_a_crash_does_not_block_the_next_overwrite(drive):
    commit_inline(drive, "bkt", "k", "v1", b"one")
    folder = object_dir(drive, "bkt", "k")
    (folder / ".prev.json.tmp").write_bytes(b"left by a crash")
    commit_inline(drive, "bkt", "k", "v2", b"two")
    assert _parse_meta((folder / "prev.json").read_bytes()).data_id == "v1"
    assert not (folder / ".prev.json.tmp").exists()
