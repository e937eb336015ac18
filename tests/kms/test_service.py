"""KeyManager logic over the in-memory keystore (no gRPC)."""
from __future__ import annotations

import pytest

from sealstore import errors
from services.kms.keystore import MemoryKeyStore
from services.kms.service import KeyManager

CALLER = "ab" * 32


@pytest.fixture
def manager() -> KeyManager:
    return KeyManager(MemoryKeyStore())


def test_create_records_caller_and_algorithm(manager):
    info = manager.create_key("bucket-a", CALLER)
    assert (info.name, info.algorithm, info.created_by, info.enabled) == ("bucket-a", "AES256", CALLER, True)
    assert info.created_ns > 0
    assert manager.describe_key("bucket-a") == info


def test_import_requires_32_bytes(manager):
    with pytest.raises(errors.InvalidArgument):
        manager.import_key("k", b"x" * 31, CALLER)
    with pytest.raises(errors.InvalidArgument):
        manager.import_key("k", b"x" * 33, CALLER)
    manager.import_key("k", b"x" * 32, CALLER)
    with pytest.raises(errors.KMSKeyExists):
        manager.import_key("k", b"y" * 32, CALLER)


def test_generate_and_decrypt(manager):
    manager.create_key("k", CALLER)
    dek = manager.generate_key("k", b'{"b":"b/o"}')
    assert len(dek.plaintext) == 32 and len(dek.ciphertext) == 76
    assert "plaintext" not in repr(dek)
    assert manager.decrypt("k", dek.ciphertext, b'{"b":"b/o"}') == dek.plaintext
    with pytest.raises(errors.KMSInvalidCiphertext):
        manager.decrypt("k", dek.ciphertext, b'{"b":"b/other"}')


def test_imported_key_decrypts_what_it_sealed_elsewhere(manager):
    from services.kms import ciphertext
    material = bytes(range(32))
    manager.import_key("imported", material, CALLER)
    foreign = ciphertext.seal(material, b"d" * 32, b"ctx")
    assert manager.decrypt("imported", foreign, b"ctx") == b"d" * 32


def test_disabled_key_refuses_generate_and_decrypt_until_enabled(manager):
    manager.create_key("k", CALLER)
    dek = manager.generate_key("k", b"")
    assert manager.disable_key("k", CALLER).enabled is False
    with pytest.raises(errors.KMSDisabled):
        manager.generate_key("k", b"")
    with pytest.raises(errors.KMSDisabled):
        manager.decrypt("k", dek.ciphertext, b"")
    assert manager.describe_key("k").enabled is False
    manager.enable_key("k", CALLER)
    assert manager.decrypt("k", dek.ciphertext, b"") == dek.plaintext


def test_deleted_key_is_not_found(manager):
    manager.create_key("k", CALLER)
    manager.delete_key("k", CALLER)
    for call in (lambda: manager.describe_key("k"), lambda: manager.generate_key("k", b""),
                 lambda: manager.decrypt("k", b"x" * 76, b""), lambda: manager.delete_key("k", CALLER)):
        with pytest.raises(errors.KMSNotFound):
            call()


def test_list_filters_by_glob_and_sorts(manager):
    for name in ("bucket-b", "bucket-a", "other"):
        manager.create_key(name, CALLER)
    assert [k.name for k in manager.list_keys()] == ["bucket-a", "bucket-b", "other"]
    assert [k.name for k in manager.list_keys("bucket-*")] == ["bucket-a", "bucket-b"]
    assert manager.list_keys("nothing*") == []


def test_status(manager):
    manager.create_key("k", CALLER)
    status = manager.status(CALLER)
    assert (status.version, status.keystore, status.key_count, status.caller_identity) == ("0.1.0", "mem", 1, CALLER)
    assert status.uptime_seconds >= 0
