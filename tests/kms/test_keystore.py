"""Keystore contract (shared by the file and memory stores) and the file store's on-disk format."""
from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from sealstore import errors
from services.kms.keystore import FileKeyStore, MemoryKeyStore, StoredKey, validate_key_name


def make_key(name: str, material: bytes = bytes(range(32)), enabled: bool = True) -> StoredKey:
    return StoredKey(name=name, material=material, created_ns=1_700_000_000_000_000_000,
                     created_by="ab" * 32, enabled=enabled)


@pytest.fixture(params=["fs", "mem"])
def store(request, tmp_path):
    return FileKeyStore(tmp_path / "kms") if request.param == "fs" else MemoryKeyStore()


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------ contract, every backend

def test_create_get_round_trip(store):
    store.create(make_key("bucket-a"))
    got = store.get("bucket-a")
    assert got == make_key("bucket-a")


def test_create_refuses_existing_name(store):
    store.create(make_key("k1"))
    with pytest.raises(errors.KMSKeyExists):
        store.create(make_key("k1", material=b"\x09" * 32))
    assert store.get("k1").material == bytes(range(32))


def test_get_and_delete_missing_key(store):
    with pytest.raises(errors.KMSNotFound):
        store.get("nope")
    with pytest.raises(errors.KMSNotFound):
        store.delete("nope")
    with pytest.raises(errors.KMSNotFound):
        store.set_enabled("nope", False)


def test_delete_is_for_good(store):
    store.create(make_key("gone"))
    store.get("gone")  # cached
    store.delete("gone")
    with pytest.raises(errors.KMSNotFound):
        store.get("gone")
    assert store.list() == []


def test_list_sorted(store):
    for name in ("b", "a_1", "C", "a"):
        store.create(make_key(name))
    assert store.list() == sorted(["b", "a_1", "C", "a"])


def test_set_enabled(store):
    store.create(make_key("k"))
    assert store.set_enabled("k", False).enabled is False
    assert store.get("k").enabled is False
    assert store.set_enabled("k", True).enabled is True
    assert store.get("k").enabled is True


@pytest.mark.parametrize("name", ["", "-a", "a-", "a b", "a/b", "a.b", "ä", "x" * 81, "_", "../etc"])
def test_invalid_names_refused(store, name):
    with pytest.raises(errors.KMSInvalidKeyName):
        store.create(make_key(name))
    with pytest.raises(errors.KMSInvalidKeyName):
        store.get(name)


@pytest.mark.parametrize("name", ["a", "A-b_9", "x" * 80, "my-bucket-key", "_a", "a_"])
def test_valid_names(name):
    validate_key_name(name)


# ------------------------------------------------------------------ the file store on disk

def test_file_modes_and_layout(tmp_path):
    store = FileKeyStore(tmp_path / "kms")
    store.create(make_key("bucket-a"))
    master = tmp_path / "kms" / "master.key"
    key_file = tmp_path / "kms" / "keys" / "bucket-a.json"
    assert mode(master) == 0o600 and len(master.read_bytes()) == 32
    assert mode(key_file) == 0o600
    assert mode(tmp_path / "kms") == 0o700 and mode(tmp_path / "kms" / "keys") == 0o700
    doc = json.loads(key_file.read_text())
    assert doc["name"] == "bucket-a" and doc["algorithm"] == "AES256"
    assert doc["created_by"] == "ab" * 32 and doc["enabled"] is True
    assert doc["created_ns"] == 1_700_000_000_000_000_000


def test_key_material_not_in_plain_in_key_file(tmp_path):
    material = os.urandom(32)
    FileKeyStore(tmp_path / "kms").create(make_key("secret", material=material))
    raw = (tmp_path / "kms" / "keys" / "secret.json").read_bytes()
    for form in (material, material.hex().encode(), base64.b64encode(material)):
        assert form not in raw


def test_master_key_created_once_and_reused(tmp_path):
    material = os.urandom(32)
    FileKeyStore(tmp_path / "kms").create(make_key("k", material=material))
    master_before = (tmp_path / "kms" / "master.key").read_bytes()
    reopened = FileKeyStore(tmp_path / "kms")
    assert (tmp_path / "kms" / "master.key").read_bytes() == master_before
    assert reopened.get("k").material == material


def test_other_master_key_cannot_open_keys(tmp_path):
    FileKeyStore(tmp_path / "kms").create(make_key("k"))
    (tmp_path / "kms" / "master.key").write_bytes(os.urandom(32))
    with pytest.raises(errors.SealstoreError) as info:
        FileKeyStore(tmp_path / "kms").get("k")
    assert "master key" in info.value.message


def test_key_file_renamed_to_other_name_does_not_open(tmp_path):
    store = FileKeyStore(tmp_path / "kms")
    store.create(make_key("alice"))
    keys = tmp_path / "kms" / "keys"
    doc = json.loads((keys / "alice.json").read_text())
    doc["name"] = "mallory"
    (keys / "mallory.json").write_text(json.dumps(doc))
    with pytest.raises(errors.SealstoreError):
        FileKeyStore(tmp_path / "kms").get("mallory")


def test_disable_persists_across_restart(tmp_path):
    FileKeyStore(tmp_path / "kms").create(make_key("k"))
    FileKeyStore(tmp_path / "kms").set_enabled("k", False)
    assert FileKeyStore(tmp_path / "kms").get("k").enabled is False


def test_writes_are_atomic(tmp_path, monkeypatch):
    store = FileKeyStore(tmp_path / "kms")
    store.create(make_key("k"))
    key_file = tmp_path / "kms" / "keys" / "k.json"
    before = key_file.read_bytes()
    inode_before = key_file.stat().st_ino

    def failing_fsync(fd):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        store.set_enabled("k", False)
    monkeypatch.undo()
    # The failed rewrite left the old file intact and no temporary behind.
    assert key_file.read_bytes() == before
    assert sorted(p.name for p in key_file.parent.iterdir()) == ["k.json"]
    assert FileKeyStore(tmp_path / "kms").get("k").enabled is True
    # A successful rewrite replaces the file (new inode), never edits it in place.
    store.set_enabled("k", False)
    assert key_file.stat().st_ino != inode_before
    assert sorted(p.name for p in key_file.parent.iterdir()) == ["k.json"]


def test_wrong_sized_master_key_refused(tmp_path):
    (tmp_path / "kms").mkdir()
    (tmp_path / "kms" / "master.key").write_bytes(b"short")
    with pytest.raises(ValueError):
        FileKeyStore(tmp_path / "kms")
