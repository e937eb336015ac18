"""The drive's listing index (issue 8, "Listing in O(page)"): keys in order without reading
every object's metadata, the meta.json files staying the truth (a crash between a metadata
write and the index update neither loses nor invents keys, a lost or rotten index is rebuilt
from them), and drive calls that run off the node's event loop."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shutil
import sqlite3
import threading
import time

import pytest

from sealstore.v1 import storage_pb2
from services.storage import drive as drive_module
from services.storage.drive import Drive
from services.storage.index import INDEX_FILE, ListingIndex
from services.storage.node import Node
from services.storage.servicer import StorageServicer
from tests.storage.test_drive import meta_for, object_dir, put


class SimulatedCrash(BaseException):
    """Raised where the process would die: nothing after it runs, nothing catches it."""


def commit_inline(d: Drive, bucket: str, key: str, data_id: str, block: bytes = b"data") -> None:
    meta = meta_for(bucket, key, data_id, [block])
    meta.inline = True
    d.commit_object(data_id, meta, inline_block=block)


def listed(d: Drive, bucket: str = "bkt", prefix: str = "", start_after: str = "", max_keys: int = 0):
    entries, truncated = d.list_objects(bucket, prefix, start_after, max_keys)
    return [(e.key, e.data_id) for e in entries], truncated


def keys_of(d: Drive, bucket: str = "bkt") -> list[str]:
    return [k for k, _ in listed(d, bucket, max_keys=100_000)[0]]


@pytest.fixture
def drive(tmp_path):
    d = Drive(tmp_path / "d0")
    d.make_bucket("bkt", 1)
    return d


def test_keys_come_in_s3_order_whatever_their_characters(drive):
    keys = ["b", "a/b", "a/a", "a", "A", "~tilde", "é", "z", "中文", "emoji-😀", "a b", "a\tb", "0"]
    for n, key in enumerate(keys):
        commit_inline(drive, "bkt", key, f"v{n}")
    # S3 lists in UTF-8 byte order, which for valid strings is code point order.
    expected = sorted(keys, key=lambda k: k.encode("utf-8"))
    assert expected == sorted(keys)
    assert keys_of(drive) == expected


def test_prefix_start_after_and_max_keys_page_through_the_bucket(drive):
    keys = [f"{d}/{n:03d}" for d in ("logs", "photos", "photosx") for n in range(25)]
    for key in random.Random(1).sample(keys, len(keys)):
        commit_inline(drive, "bkt", key, "v-" + key.replace("/", "-"))
    assert listed(drive, prefix="photos/", max_keys=3) == ([(k, "v-" + k.replace("/", "-"))
                                                           for k in ("photos/000", "photos/001", "photos/002")], True)
    # Paging with start_after walks every key of the prefix once, then says "not truncated".
    for prefix, page_size in (("photos/", 7), ("photos", 10), ("", 1000), ("", 11), ("nope", 5)):
        got, cursor = [], ""
        while True:
            page, truncated = listed(drive, prefix=prefix, start_after=cursor, max_keys=page_size)
            got += [k for k, _ in page]
            if not truncated:
                break
            assert len(page) == page_size
            cursor = page[-1][0]
        assert got == [k for k in sorted(keys) if k.startswith(prefix)], (prefix, page_size)
    # start_after below the prefix, inside it, and past it.
    assert listed(drive, prefix="photos/", start_after="a", max_keys=1)[0][0][0] == "photos/000"
    assert listed(drive, prefix="photos/", start_after="photos/023")[0] == [("photos/024", "v-photos-024")]
    assert listed(drive, prefix="logs/", start_after="photos/") == ([], False)
    assert listed(drive, max_keys=len(keys)) == (listed(drive, max_keys=1000)[0], False)


def test_overwrites_and_deletes_show_at_once(drive):
    commit_inline(drive, "bkt", "k", "v1")
    put(drive, "bkt", "streamed", "s1", [b"a" * 100])
    assert listed(drive)[0] == [("k", "v1"), ("streamed", "s1")]
    commit_inline(drive, "bkt", "k", "v2")
    put(drive, "bkt", "streamed", "s2", [b"b" * 10])
    entries, _ = drive.list_objects("bkt", "", "", 0)
    assert [(e.key, e.data_id, e.size, e.etag) for e in entries] == [("k", "v2", 4, "e-v2"),
                                                                      ("streamed", "s2", 10, "e-s2")]
    drive.delete_object("bkt", "k")
    assert listed(drive)[0] == [("streamed", "s2")]
    # An undo of a failed overwrite puts the kept version back, and the listing with it.
    put(drive, "bkt", "streamed", "s3", [b"c"])
    drive.delete_object("bkt", "streamed", only_data_id="s3")
    assert listed(drive)[0] == [("streamed", "s2")]
    drive.delete_object("bkt", "streamed")
    assert listed(drive) == ([], False)
    assert drive.count_objects() == 0


def test_a_page_reads_no_metadata_file_and_stats_only_its_own(drive, monkeypatch):
    for n in range(300):
        commit_inline(drive, "bkt", f"key-{n:04d}", f"v{n}")
    parsed, stats = [], []
    real_parse, real_identity = drive_module._parse_meta, drive_module._file_identity
    monkeypatch.setattr(drive_module, "_parse_meta", lambda raw, *a: parsed.append(1) or real_parse(raw, *a))
    monkeypatch.setattr(drive_module, "_file_identity", lambda p: stats.append(p) or real_identity(p))
    page, truncated = listed(drive, start_after="key-0100", max_keys=10)
    assert [k for k, _ in page] == [f"key-{n:04d}" for n in range(101, 111)] and truncated
    assert parsed == []
    assert len(stats) <= 11  # the page and the one entry that says "truncated"


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "streamed"])
def test_a_crash_between_the_metadata_write_and_the_index_update_loses_no_key(tmp_path, monkeypatch, inline):
    d = Drive(tmp_path / "d")
    d.make_bucket("bkt", 1)
    commit_inline(d, "bkt", "old", "o1")

    def crash(*args, **kwargs):
        raise SimulatedCrash()
    monkeypatch.setattr(ListingIndex, "put", crash)
    with pytest.raises(SimulatedCrash):
        if inline:
            commit_inline(d, "bkt", "new", "n1")
        else:
            put(d, "bkt", "new", "n1", [b"x" * 10])
    with pytest.raises(SimulatedCrash):
        commit_inline(d, "bkt", "old", "o2")  # an overwrite whose row still names o1
    # Even before a restart, the page's check against meta.json shows the overwrite.
    assert ("old", "o2") in listed(d)[0]
    monkeypatch.undo()
    # The restart's reconcile finds the key whose row was never written.
    restarted = Drive(tmp_path / "d")
    assert listed(restarted)[0] == [("new", "n1"), ("old", "o2")]


def test_a_crash_between_the_metadata_removal_and_the_index_update_invents_no_key(tmp_path, monkeypatch):
    d = Drive(tmp_path / "d")
    d.make_bucket("bkt", 1)
    for key in ("a", "b", "c"):
        commit_inline(d, "bkt", key, "v-" + key)

    def crash(*args, **kwargs):
        raise SimulatedCrash()
    monkeypatch.setattr(ListingIndex, "remove", crash)
    with pytest.raises(SimulatedCrash):
        d.delete_object("bkt", "b")
    assert listed(d)[0] == [("a", "v-a"), ("c", "v-c")]  # the page's check drops the row
    monkeypatch.undo()
    d2 = Drive(tmp_path / "d")
    assert listed(d2)[0] == [("a", "v-a"), ("c", "v-c")]
    assert d2.count_objects() == 2


def test_a_failed_index_write_does_not_fail_the_put_and_the_next_listing_catches_up(drive, monkeypatch, caplog):
    def locked(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")
    monkeypatch.setattr(ListingIndex, "put", locked)
    with caplog.at_level(logging.WARNING, logger="services.storage.drive"):
        commit_inline(drive, "bkt", "k", "v1")  # meta.json is written: the PUT succeeded
    assert "reconciled before the next listing" in caplog.text
    monkeypatch.undo()
    assert listed(drive)[0] == [("k", "v1")]


def test_a_lost_or_rotten_index_is_rebuilt_from_the_metadata_files(tmp_path, caplog):
    d = Drive(tmp_path / "d")
    d.make_bucket("bkt", 1)
    d.make_bucket("other", 1)
    keys = [f"k{n:02d}" for n in range(20)]
    for key in keys:
        commit_inline(d, "bkt", key, "v-" + key)
    put(d, "other", "big", "b1", [b"z" * 50])
    d.index.close()
    index_file = tmp_path / "d" / ".sealstore" / INDEX_FILE
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / "d" / ".sealstore" / f"{INDEX_FILE}{suffix}").unlink(missing_ok=True)
    rebuilt = Drive(tmp_path / "d")
    assert keys_of(rebuilt) == keys and listed(rebuilt, "other")[0] == [("big", "b1")]
    rebuilt.index.close()

    for suffix in ("-wal", "-shm"):
        (tmp_path / "d" / ".sealstore" / f"{INDEX_FILE}{suffix}").unlink(missing_ok=True)
    index_file.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    with caplog.at_level(logging.WARNING, logger="services.storage.drive"):
        again = Drive(tmp_path / "d")
    assert "listing index unreadable" in caplog.text
    assert keys_of(again) == keys and again.count_objects() == 21


def test_the_reconcile_at_start_leaves_corrupt_and_foreign_metadata_out(tmp_path):
    d = Drive(tmp_path / "d")
    d.make_bucket("bkt", 1)
    for key in ("good", "rotten", "victim"):
        commit_inline(d, "bkt", key, "v-" + key)
    d.index.close()
    rotten = object_dir(d, "bkt", "rotten") / "meta.json"
    rotten.write_bytes(rotten.read_bytes()[:40])
    # A copy of "good"'s metadata in another key's folder, and in a folder of a key never stored.
    shutil.copy(object_dir(d, "bkt", "good") / "meta.json", object_dir(d, "bkt", "victim") / "meta.json")
    stray = object_dir(d, "bkt", "never-stored")
    stray.mkdir(parents=True)
    shutil.copy(object_dir(d, "bkt", "good") / "meta.json", stray / "meta.json")
    for reopened in (Drive(tmp_path / "d"), _with_index_removed(tmp_path / "d")):
        assert listed(reopened)[0] == [("good", "v-good")]


def _with_index_removed(root) -> Drive:
    for suffix in ("", "-wal", "-shm"):
        (root / ".sealstore" / f"{INDEX_FILE}{suffix}").unlink(missing_ok=True)
    return Drive(root)


def test_a_metadata_file_replaced_behind_the_index_is_listed_as_it_now_is(drive):
    commit_inline(drive, "bkt", "k", "v1")
    commit_inline(drive, "bkt", "other", "o1")
    meta_path = object_dir(drive, "bkt", "k") / "meta.json"
    meta = json.loads(meta_path.read_bytes())
    meta["data_id"], meta["etag"] = "v9", "e-v9"
    meta_path.write_text(json.dumps(meta))
    assert listed(drive)[0] == [("k", "v9"), ("other", "o1")]
    meta_path.write_bytes(b"{ rotten")
    assert listed(drive)[0] == [("other", "o1")]


def test_concurrent_commits_and_deletes_of_the_same_keys_leave_index_and_files_agreeing(tmp_path):
    d = Drive(tmp_path / "d")
    d.make_bucket("bkt", 1)
    keys = ["hot-1", "hot-2", "hot-3"]
    failures: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for n in range(40):
                key = rng.choice(keys)
                action = rng.random()
                if action < 0.45:
                    commit_inline(d, "bkt", key, f"w{seed}-{n}")
                elif action < 0.7:
                    put(d, "bkt", key, f"s{seed}-{n}", [b"s" * 20])
                elif action < 0.85:
                    d.delete_object("bkt", key)
                else:
                    listed(d)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    on_disk = []
    for key in keys:
        try:
            on_disk.append((key, d.get_object_meta("bkt", key).data_id))
        except Exception:
            continue
    assert listed(d)[0] == on_disk
    assert listed(_with_index_removed(tmp_path / "d"))[0] == on_disk
    assert not list(d.tmp.iterdir())


def test_drive_calls_run_off_the_event_loop(tmp_path, monkeypatch):
    """A slow drive call (a big listing, a long fsync) used to stall every other request of the
    node: all file I/O ran on its one event loop."""
    node = Node("n", [tmp_path / "d"])
    node.drive(0).make_bucket("bkt", 1)
    commit_inline(node.drive(0), "bkt", "k", "v1")
    servicer = StorageServicer(node)
    real_list = Drive.list_objects

    def slow_list(self, *args):
        time.sleep(1.0)
        return real_list(self, *args)
    monkeypatch.setattr(Drive, "list_objects", slow_list)

    async def scenario():
        listing = asyncio.ensure_future(servicer.ListObjects(
            storage_pb2.ListObjectsRequest(bucket="bkt", drive=0), None))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        meta = await servicer.GetObjectMeta(storage_pb2.ObjectRequest(bucket="bkt", key="k", drive=0), None)
        took = time.monotonic() - started
        page = await listing
        return meta, took, page
    meta, took, page = asyncio.run(scenario())
    assert meta.data_id == "v1" and [e.key for e in page.entries] == ["k"]
    assert took < 0.5


def test_a_refused_drive_answers_listings_with_an_error_instead_of_waiting(tmp_path):
    from sealstore import errors
    from services.storage.drive import DriveIdentity
    Drive(tmp_path / "d", DriveIdentity("deployment-a", 0, 0)).make_bucket("bkt", 1)
    refused = Drive(tmp_path / "d", DriveIdentity("deployment-b", 0, 0))
    assert refused.refusal
    with pytest.raises(errors.ServiceUnavailable):
        refused.list_objects("bkt", "", "", 0)


def test_an_index_file_that_rots_while_the_node_runs_is_rebuilt_by_the_next_listing(drive, caplog):
    for key in ("a", "b", "c"):
        commit_inline(drive, "bkt", key, "v-" + key)
    drive.index.path.write_bytes(b"\x00garbage" * 512)
    with caplog.at_level(logging.WARNING, logger="services.storage.drive"):
        assert listed(drive)[0] == [("a", "v-a"), ("b", "v-b"), ("c", "v-c")]
    assert "listing index unreadable" in caplog.text
    commit_inline(drive, "bkt", "d", "v-d")
    assert keys_of(drive) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("how", ["removed", "emptied"])
def test_an_index_file_removed_while_the_node_runs_is_rebuilt_by_the_next_listing(drive, how):
    """The node opens its index file per call: a file removed or emptied under it was made anew,
    and every key written before vanished from listings until a restart."""
    for key in ("a", "b", "c"):
        commit_inline(drive, "bkt", key, "v-" + key)
    path = drive.index.path
    if how == "removed":
        path.unlink()
    else:
        path.write_bytes(b"")  # the same inode, truncated: SQLite sees a new database
    commit_inline(drive, "bkt", "b", "v2-b")  # written to the new file, before any listing
    assert listed(drive)[0] == [("a", "v-a"), ("b", "v2-b"), ("c", "v-c")]
    assert drive.count_objects() == 3
    path.unlink()
    assert keys_of(drive) == ["a", "b", "c"]  # removed, no write since: the listing sees it too
    commit_inline(drive, "bkt", "d", "v-d")
    assert keys_of(drive) == ["a", "b", "c", "d"]


def index_files_open(d: Drive) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(d.index.path)):
            found.append(target)
    return found


def test_calls_waiting_for_the_index_get_the_connection_and_the_last_closes_it(drive, monkeypatch):
    """Opening a connection (and loading the schema) per call was a quarter of a commit's CPU
    under concurrent writes; a call that ends while others wait hands its connection on. Between
    bursts no file of the index stays open (the drive can be remounted read-only)."""
    index = drive.index
    opened = []
    real_open = ListingIndex._open
    monkeypatch.setattr(ListingIndex, "_open", lambda self: opened.append(1) or real_open(self))
    inside, release = threading.Event(), threading.Event()

    def first():
        with index._session():
            inside.set()
            release.wait(10)
    holder = threading.Thread(target=first)
    holder.start()
    assert inside.wait(10)
    waiters = [threading.Thread(target=commit_inline, args=(drive, "bkt", f"k{n}", f"v{n}")) for n in range(3)]
    for t in waiters:
        t.start()
    deadline = time.monotonic() + 10
    while index._callers < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert index._callers == 4
    release.set()
    for t in [holder, *waiters]:
        t.join(10)
    assert len(opened) == 1
    assert index_files_open(drive) == []
    assert keys_of(drive) == ["k0", "k1", "k2"]
    assert index_files_open(drive) == []


def test_a_handed_on_connection_follows_the_file_removed_under_it(drive):
    for key in ("a", "b"):
        commit_inline(drive, "bkt", key, "v-" + key)
    index = drive.index
    with index._callers_lock:
        index._callers += 1  # another call waiting: the next session hands its connection on
    try:
        commit_inline(drive, "bkt", "c", "v-c")
        assert index._kept is not None
        index.path.unlink()
        commit_inline(drive, "bkt", "d", "v-d")  # goes to a new file, not to the removed one
    finally:
        with index._callers_lock:
            index._callers -= 1
    index.close()
    assert index.path.exists() and index_files_open(drive) == []
    assert keys_of(drive) == ["a", "b", "c", "d"]
