"""KeyManager logic over the in-memory keystore (no gRPC)."""
from __future__ import annotations

import pytest

from sealstore import errors
from services.kms.local_backend import MemoryKeyStore
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
    assert "plaintext" not in repr(dek) and dek.version == 1
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


# ------------------------------------------------------------------ versions and scheduled deletion

class Clock:
    """Wall-clock time the test moves by hand (days pass in a test)."""

    def __init__(self) -> None:
        self.now_ns = 1_800_000_000 * 10**9

    def __call__(self) -> int:
        return self.now_ns


def test_rotate_min_version_and_rewrap(manager):
    manager.create_key("k", CALLER)
    old = manager.generate_key("k", b"ctx")
    info = manager.rotate_key("k", CALLER)
    assert (info.version, info.min_version) == (2, 1)
    assert manager.decrypt_versioned("k", old.ciphertext, b"ctx").version == 1
    rewrapped = manager.rewrap("k", old.ciphertext, b"ctx")
    assert rewrapped.version == 2 and rewrapped.plaintext == b""
    assert manager.set_min_version("k", 2, CALLER).min_version == 2
    with pytest.raises(errors.KMSInvalidCiphertext) as refused:
        manager.decrypt("k", old.ciphertext, b"ctx")
    assert "minimum version 2" in refused.value.message
    assert manager.decrypt("k", rewrapped.ciphertext, b"ctx") == old.plaintext


def test_scheduled_deletion_window_and_purge():
    clock = Clock()
    manager = KeyManager(MemoryKeyStore(), clock_ns=clock)
    manager.create_key("k", CALLER)
    manager.create_key("keep", CALLER)
    for days in (1, 6, 31):
        with pytest.raises(errors.InvalidArgument):
            manager.delete_key("k", CALLER, pending_window_days=days)
    info = manager.delete_key("k", CALLER, pending_window_days=7)
    assert info.deletion_ns == clock.now_ns + 7 * 86_400 * 10**9 and info.enabled is False
    with pytest.raises(errors.KMSPendingDeletion):
        manager.generate_key("k", b"")
    clock.now_ns += 7 * 86_400 * 10**9 - 1
    assert manager.purge_due_deletions() == []
    assert manager.describe_key("k").deletion_ns > 0
    clock.now_ns += 1
    assert manager.purge_due_deletions() == ["k"]
    with pytest.raises(errors.KMSNotFound):
        manager.describe_key("k")
    assert [k.name for k in manager.list_keys()] == ["keep"]


def test_cancelled_deletion_is_never_purged():
    clock = Clock()
    manager = KeyManager(MemoryKeyStore(), clock_ns=clock)
    manager.create_key("k", CALLER)
    manager.delete_key("k", CALLER, pending_window_days=30)
    assert manager.cancel_key_deletion("k", CALLER).enabled is False
    clock.now_ns += 31 * 86_400 * 10**9
    assert manager.purge_due_deletions() == []
    assert manager.enable_key("k", CALLER).enabled is True
