"""The KeyBackend contract, one suite for every backend: memory, fs, and OpenBao KV and transit
against a real `bao server -dev`."""
from __future__ import annotations

import uuid

import pytest

from sealstore import errors
from services.kms.backend import KeyBackend
from services.kms.keystore import FileKeyStore
from services.kms.local_backend import MemoryKeyStore
from services.kms.openbao import OpenBaoSettings
from services.kms.openbao_kv import OpenBaoKVKeyStore
from services.kms.openbao_transit import OpenBaoTransitKeyStore

CALLER = "ab" * 32
CTX = b'{"bucket-a":"bucket-a/dir/obj"}'
OTHER_CTX = b'{"bucket-a":"bucket-a/other"}'
BACKENDS = ["mem", "fs", pytest.param("openbao-kv", marks=pytest.mark.process),
            pytest.param("openbao-transit", marks=pytest.mark.process)]  # OpenBao: a real server process


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path) -> KeyBackend:
    kind = request.param
    if kind == "mem":
        return MemoryKeyStore()
    if kind == "fs":
        return FileKeyStore(tmp_path / "kms")
    bao = request.getfixturevalue("openbao_dev")
    if kind == "openbao-kv":
        # A fresh prefix per test: the dev server lives for the whole session.
        return OpenBaoKVKeyStore(OpenBaoSettings(bao.address, bao.token, "secret", kv_prefix=f"t/{uuid.uuid4().hex}"))
    # Transit has one flat key namespace: tests use unique names (see `name`).
    return OpenBaoTransitKeyStore(OpenBaoSettings(bao.address, bao.token, "transit"), tmp_path)


@pytest.fixture
def name() -> str:
    return f"k-{uuid.uuid4().hex[:12]}"


def test_create_describe_and_exists(backend, name):
    meta = backend.create(name, CALLER)
    assert (meta.name, meta.created_by, meta.enabled, meta.version, meta.min_version, meta.deletion_ns) == \
           (name, CALLER, True, 1, 1, 0)
    assert meta.created_ns > 0
    assert backend.describe(name) == meta
    assert name in backend.list()
    with pytest.raises(errors.KMSKeyExists):
        backend.create(name, CALLER)


def test_missing_key_is_not_found_everywhere(backend, name):
    for call in (lambda: backend.describe(name), lambda: backend.delete(name),
                 lambda: backend.set_enabled(name, False), lambda: backend.rotate(name),
                 lambda: backend.generate_data_key(name, CTX)):
        with pytest.raises(errors.KMSNotFound):
            call()


def test_invalid_names_refused(backend):
    for bad in ("", "a/b", "-a", "x" * 81):
        with pytest.raises(errors.KMSInvalidKeyName):
            backend.create(bad, CALLER)
        with pytest.raises(errors.KMSInvalidKeyName):
            backend.generate_data_key(bad, CTX)


def test_data_key_round_trip_bound_to_context(backend, name):
    backend.create(name, CALLER)
    dek = backend.generate_data_key(name, CTX)
    assert len(dek.plaintext) == 32 and dek.version == 1
    assert "plaintext" not in repr(dek)
    opened = backend.decrypt(name, dek.ciphertext, CTX)
    assert (opened.plaintext, opened.version) == (dek.plaintext, 1)
    with pytest.raises(errors.KMSInvalidCiphertext):
        backend.decrypt(name, dek.ciphertext, OTHER_CTX)
    tampered = bytearray(dek.ciphertext)
    tampered[-3] ^= 1
    with pytest.raises(errors.KMSInvalidCiphertext):
        backend.decrypt(name, bytes(tampered), CTX)


def test_disable_locks_and_enable_unlocks(backend, name):
    backend.create(name, CALLER)
    dek = backend.generate_data_key(name, CTX)
    assert backend.set_enabled(name, False).enabled is False
    assert backend.describe(name).enabled is False
    with pytest.raises(errors.KMSDisabled):
        backend.generate_data_key(name, CTX)
    with pytest.raises(errors.KMSDisabled):
        backend.decrypt(name, dek.ciphertext, CTX)
    assert backend.set_enabled(name, True).enabled is True
    assert backend.decrypt(name, dek.ciphertext, CTX).plaintext == dek.plaintext


def test_delete_is_for_good(backend, name):
    backend.create(name, CALLER)
    dek = backend.generate_data_key(name, CTX)
    backend.delete(name)
    assert name not in backend.list()
    with pytest.raises(errors.KMSNotFound):
        backend.decrypt(name, dek.ciphertext, CTX)
    backend.create(name, CALLER)  # a new key under the old name opens nothing of the old one
    with pytest.raises(errors.KMSInvalidCiphertext):
        backend.decrypt(name, dek.ciphertext, CTX)


def test_rotation_keeps_old_versions_readable(backend, name):
    backend.create(name, CALLER)
    old = backend.generate_data_key(name, CTX)
    assert backend.rotate(name).version == 2
    assert backend.describe(name).version == 2
    new = backend.generate_data_key(name, CTX)
    assert new.version == 2 and new.ciphertext != old.ciphertext
    assert backend.decrypt(name, old.ciphertext, CTX).version == 1
    assert backend.decrypt(name, old.ciphertext, CTX).plaintext == old.plaintext
    assert backend.decrypt(name, new.ciphertext, CTX).plaintext == new.plaintext


def test_rewrap_moves_to_newest_version_without_plaintext(backend, name):
    backend.create(name, CALLER)
    old = backend.generate_data_key(name, CTX)
    backend.rotate(name)
    rewrapped = backend.rewrap(name, old.ciphertext, CTX)
    assert rewrapped.plaintext == b"" and rewrapped.version == 2
    assert backend.decrypt(name, rewrapped.ciphertext, CTX).plaintext == old.plaintext
    with pytest.raises(errors.KMSInvalidCiphertext):
        backend.rewrap(name, old.ciphertext, OTHER_CTX)


def test_min_version_retires_old_ciphertexts(backend, name):
    backend.create(name, CALLER)
    old = backend.generate_data_key(name, CTX)
    backend.rotate(name)
    rewrapped = backend.rewrap(name, old.ciphertext, CTX)
    with pytest.raises(errors.InvalidArgument):
        backend.set_min_version(name, 3)
    assert backend.set_min_version(name, 2).min_version == 2
    with pytest.raises(errors.KMSInvalidCiphertext):
        backend.decrypt(name, old.ciphertext, CTX)
    assert backend.decrypt(name, rewrapped.ciphertext, CTX).plaintext == old.plaintext
    assert backend.set_min_version(name, 1).min_version == 1  # versions are kept: lowering works
    assert backend.decrypt(name, old.ciphertext, CTX).plaintext == old.plaintext


def test_pending_deletion_refuses_then_cancel_recovers_disabled(backend, name):
    backend.create(name, CALLER)
    dek = backend.generate_data_key(name, CTX)
    meta = backend.schedule_deletion(name, 4_000_000_000 * 10**9)
    assert meta.deletion_ns == 4_000_000_000 * 10**9 and not meta.usable
    for call in (lambda: backend.generate_data_key(name, CTX), lambda: backend.decrypt(name, dek.ciphertext, CTX),
                 lambda: backend.set_enabled(name, True), lambda: backend.schedule_deletion(name, 1)):
        with pytest.raises(errors.KMSPendingDeletion):
            call()
    meta = backend.cancel_deletion(name)
    assert meta.deletion_ns == 0 and meta.enabled is False
    with pytest.raises(errors.InvalidRequest):
        backend.cancel_deletion(name)
    backend.set_enabled(name, True)
    assert backend.decrypt(name, dek.ciphertext, CTX).plaintext == dek.plaintext


def test_import(backend, name):
    material = bytes(range(32))
    if backend.kind == "openbao-transit":
        with pytest.raises(errors.NotImplementedS3):
            backend.import_key(name, material, CALLER)
        return
    with pytest.raises(errors.InvalidArgument):
        backend.import_key(name, b"x" * 31, CALLER)
    backend.import_key(name, material, CALLER)
    from services.kms import ciphertext
    foreign = ciphertext.seal(material, b"d" * 32, CTX)  # as KES itself would have sealed it
    assert backend.decrypt(name, foreign, CTX).plaintext == b"d" * 32
