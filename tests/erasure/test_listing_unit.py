"""Listing merges, in-process over the storage fake: across the members of a set (an entry needs
read quorum members agreeing on its version; pages stop at the smallest truncated horizon) and
across sets (merged in key order, each key in one set)."""
from __future__ import annotations

import pytest

from sealstore import errors
from tests.fakes.objects import payload, put
from tests.fakes.storage import FakeStorage

BUCKET = "list-bucket"


async def list_all(store, max_keys: int, prefix: str = "") -> tuple[list[str], int]:
    keys, pages, cursor = [], 0, ""
    while True:
        entries, truncated = await store.list_objects(BUCKET, prefix, cursor, max_keys)
        pages += 1
        assert len(entries) <= max_keys
        keys += [e.key for e in entries]
        if not truncated:
            return keys, pages
        cursor = entries[-1].key


def test_entries_need_read_quorum_and_pages_cover_every_key_once():
    fake = FakeStorage()
    names = [f"k{i:03d}" for i in range(25)]

    async def go(store):
        await store.make_bucket(BUCKET)
        for name in names:
            await put(store, BUCKET, name, payload(10, hash(name)))
        # Members miss different keys (down during some PUTs), so their pages end at different
        # keys: the horizon logic must still decide every key exactly once.
        del fake.member_drive(0).objects[(BUCKET, "k003")]
        del fake.member_drive(1).objects[(BUCKET, "k007")]
        for i in (1, 2, 3):  # a leftover on one member only: never listed
            del fake.member_drive(i).objects[(BUCKET, "k010")]
        for max_keys in (1, 3, 7, 1000):
            keys, _ = await list_all(store, max_keys)
            assert keys == [n for n in names if n != "k010"], max_keys
        fake.nodes[0].offline = fake.nodes[1].offline = True
        keys, _ = await list_all(store, 4)  # members 2 and 3 still hold a read quorum of each key
        assert keys == [n for n in names if n != "k010"]
        fake.nodes[1].offline = False
        del fake.member_drive(2).objects[(BUCKET, "k007")]  # now only member 3 holds it
        keys, _ = await list_all(store, 4)
        assert "k007" not in keys and len(keys) == 23
        fake.nodes[1].offline = fake.nodes[2].offline = True
        with pytest.raises(errors.SlowDown):
            await store.list_objects(BUCKET, "", "", 10)
    fake.run(go)


def test_versions_agreed_by_quorum_win_over_a_newer_minority():
    fake = FakeStorage()

    async def go(store):
        await store.make_bucket(BUCKET)
        first = await put(store, BUCKET, "k", payload(10, 1))
        newer = fake.member_drive(0).copy_of(BUCKET, "k")
        newer.meta.data_id, newer.meta.mtime_ns = "unfinished", first.mtime_ns + 1
        entries, _ = await store.list_objects(BUCKET, "", "", 10)
        assert [(e.key, e.data_id) for e in entries] == [("k", first.data_id)]
        prefixed, _ = await store.list_objects(BUCKET, "x", "", 10)
        assert prefixed == []
    fake.run(go)


def test_sets_merge_in_key_order():
    fake = FakeStorage(nodes=8, parity=2, sets=2)
    names = [f"obj-{i:02d}" for i in range(30)]

    async def go(store):
        await store.make_bucket(BUCKET)
        for name in names:
            await put(store, BUCKET, name, payload(10))
        homes = {store.set_for(BUCKET, n).set_index for n in names}
        assert homes == {0, 1}  # the keys really are spread over both sets
        for max_keys in (1, 4, 1000):
            keys, pages = await list_all(store, max_keys)
            assert keys == names, max_keys
        keys, _ = await list_all(store, 3, prefix="obj-1")
        assert keys == [n for n in names if n.startswith("obj-1")]
    fake.run(go)
    per_set = [sum(1 for i in range(4) for (b, _) in fake.member_drive(i, s).objects if b == BUCKET)
               for s in (0, 1)]
    assert sum(per_set) == 4 * len(names) and all(per_set)
