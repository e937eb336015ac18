"""The fs keystore on disk: file modes, sealed material, format 1 (foundation) compatibility,
atomic writes. The contract every backend keeps is in test_backends.py."""
from __future__ import annotations

import base64
import json
import os
import stat

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sealstore import errors
from services.kms import ciphertext
from services.kms.keystore import FileKeyStore, validate_key_name

CALLER = "ab" * 32
CTX = b'{"b":"b/o"}'


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("name", ["a", "A-b_9", "x" * 80, "my-bucket-key", "_a", "a_"])
def test_valid_names(name):
    validate_key_name(name)


def test_file_modes_and_layout(tmp_path):
    store = FileKeyStore(tmp_path / "kms")
    store.create("bucket-a", CALLER)
    master = tmp_path / "kms" / "master.key"
    key_file = tmp_path / "kms" / "keys" / "bucket-a.json"
    assert mode(master) == 0o600 and len(master.read_bytes()) == 32
    assert mode(key_file) == 0o600
    assert mode(tmp_path / "kms") == 0o700 and mode(tmp_path / "kms" / "keys") == 0o700
    doc = json.loads(key_file.read_text())
    assert doc["format_version"] == 2
    assert doc["name"] == "bucket-a" and doc["algorithm"] == "AES256"
    assert doc["created_by"] == CALLER and doc["enabled"] is True
    assert (doc["min_version"], doc["deletion_ns"], len(doc["versions"])) == (1, 0, 1)


def test_key_material_not_in_plain_in_key_file(tmp_path):
    material = os.urandom(32)
    store = FileKeyStore(tmp_path / "kms")
    store.import_key("secret", material, CALLER)
    store.rotate("secret")
    raw = (tmp_path / "kms" / "keys" / "secret.json").read_bytes()
    for form in (material, material.hex().encode(), base64.b64encode(material)):
        assert form not in raw


def test_master_key_created_once_and_reused(tmp_path):
    material = os.urandom(32)
    FileKeyStore(tmp_path / "kms").import_key("k", material, CALLER)
    master_before = (tmp_path / "kms" / "master.key").read_bytes()
    reopened = FileKeyStore(tmp_path / "kms")
    assert (tmp_path / "kms" / "master.key").read_bytes() == master_before
    foreign = ciphertext.seal(material, b"d" * 32, CTX)
    assert reopened.decrypt("k", foreign, CTX).plaintext == b"d" * 32


def test_other_master_key_cannot_open_keys(tmp_path):
    FileKeyStore(tmp_path / "kms").create("k", CALLER)
    (tmp_path / "kms" / "master.key").write_bytes(os.urandom(32))
    with pytest.raises(errors.SealstoreError) as info:
        FileKeyStore(tmp_path / "kms").describe("k")
    assert "master key" in info.value.message


def test_key_file_renamed_to_other_name_does_not_open(tmp_path):
    FileKeyStore(tmp_path / "kms").create("alice", CALLER)
    keys = tmp_path / "kms" / "keys"
    doc = json.loads((keys / "alice.json").read_text())
    doc["name"] = "mallory"
    (keys / "mallory.json").write_text(json.dumps(doc))
    with pytest.raises(errors.SealstoreError):
        FileKeyStore(tmp_path / "kms").describe("mallory")


def test_versions_cannot_be_swapped_in_the_file(tmp_path):
    store = FileKeyStore(tmp_path / "kms")
    store.create("k", CALLER)
    store.rotate("k")
    path = tmp_path / "kms" / "keys" / "k.json"
    doc = json.loads(path.read_text())
    doc["versions"].reverse()
    path.write_text(json.dumps(doc))
    with pytest.raises(errors.SealstoreError):
        FileKeyStore(tmp_path / "kms").describe("k")


def test_state_and_versions_persist_across_restart(tmp_path):
    store = FileKeyStore(tmp_path / "kms")
    store.create("k", CALLER)
    old = store.generate_data_key("k", CTX)
    store.rotate("k")
    store.set_min_version("k", 1)
    store.set_enabled("k", False)
    reopened = FileKeyStore(tmp_path / "kms")
    meta = reopened.describe("k")
    assert (meta.enabled, meta.version, meta.min_version) == (False, 2, 1)
    reopened.set_enabled("k", True)
    assert reopened.decrypt("k", old.ciphertext, CTX).plaintext == old.plaintext


def test_format_1_key_file_still_opens_and_upgrades_on_change(tmp_path):
    """A key file as the foundation wrote it (one sealed_key, v1 AAD) and a 76-byte ciphertext."""
    kms = tmp_path / "kms"
    (kms / "keys").mkdir(parents=True, mode=0o700)
    master, material = os.urandom(32), os.urandom(32)
    (kms / "master.key").write_bytes(master)
    nonce = os.urandom(12)
    sealed = nonce + AESGCM(master).encrypt(nonce, material, b"sealstore-kms-key/v1/legacy")
    (kms / "keys" / "legacy.json").write_text(json.dumps({
        "format_version": 1, "name": "legacy", "algorithm": "AES256", "created_ns": 1_700_000_000_000_000_000,
        "created_by": CALLER, "enabled": True, "sealed_key": base64.b64encode(sealed).decode()}))
    foundation_ciphertext = ciphertext.seal(material, b"d" * 32, CTX)
    assert len(foundation_ciphertext) == 76
    store = FileKeyStore(kms)
    meta = store.describe("legacy")
    assert (meta.version, meta.created_ns, meta.enabled) == (1, 1_700_000_000_000_000_000, True)
    assert store.decrypt("legacy", foundation_ciphertext, CTX).plaintext == b"d" * 32
    store.rotate("legacy")
    assert json.loads((kms / "keys" / "legacy.json").read_text())["format_version"] == 2
    assert FileKeyStore(kms).decrypt("legacy", foundation_ciphertext, CTX).plaintext == b"d" * 32


def test_ciphertexts_name_their_version(tmp_path):
    store = FileKeyStore(tmp_path / "kms")
    store.create("k", CALLER)
    v1 = store.generate_data_key("k", CTX).ciphertext
    store.rotate("k")
    v2 = store.generate_data_key("k", CTX).ciphertext
    assert len(v1) == 76  # version 1: exactly KES's format
    assert len(v2) == 84 and v2[:8] == ciphertext.VERSION_MAGIC + (2).to_bytes(4, "big")


def test_writes_are_atomic(tmp_path, monkeypatch):
    store = FileKeyStore(tmp_path / "kms")
    store.create("k", CALLER)
    key_file = tmp_path / "kms" / "keys" / "k.json"
    before = key_file.read_bytes()
    inode_before = key_file.stat().st_ino

    def failing_fsync(fd):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        store.set_enabled("k", False)
    monkeypatch.undo()
    # The failed rewrite left the old file intact, no temporary behind, and the cache unchanged.
    assert key_file.read_bytes() == before
    assert sorted(p.name for p in key_file.parent.iterdir()) == ["k.json"]
    assert store.describe("k").enabled is True
    assert FileKeyStore(tmp_path / "kms").describe("k").enabled is True
    # A successful rewrite replaces the file (new inode), never edits it in place.
    store.set_enabled("k", False)
    assert key_file.stat().st_ino != inode_before
    assert sorted(p.name for p in key_file.parent.iterdir()) == ["k.json"]


def test_wrong_sized_master_key_refused(tmp_path):
    (tmp_path / "kms").mkdir()
    (tmp_path / "kms" / "master.key").write_bytes(b"short")
    with pytest.raises(ValueError):
        FileKeyStore(tmp_path / "kms")
