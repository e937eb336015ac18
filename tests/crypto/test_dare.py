"""DARE 2.0: sio's golden vectors, stream chunking, ranges, and tamper detection."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from sealstore import errors
from services.crypto import dare

# minio/sio golden vectors (provenance: tests/crypto/vectors/PROVENANCE.md).
VECTORS = json.loads((Path(__file__).resolve().parent / "vectors" / "dare-v20.json").read_text())
KEY = bytes.fromhex(VECTORS["key_hex"])
RANDOM = bytes.fromhex(VECTORS["random_value_hex"])
P = dare.MAX_PAYLOAD


@pytest.mark.parametrize("vector", VECTORS["golden"], ids=lambda v: f"seq{v['seq']}")
def test_golden_vector_opens_and_reseals_identically(vector):
    package = bytes.fromhex(vector["package_hex"])
    plain, final = dare.open_package(KEY, package, seq=vector["seq"])
    assert plain == bytes(len(package) - 32)
    assert final
    assert dare.seal_package(KEY, plain, cipher=vector["seq"] % 2, random_value=RANDOM,
                             seq=vector["seq"]) == package


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=lambda v: f"seq{v['seq']}-{v['why']}")
def test_invalid_vector_is_rejected(vector):
    with pytest.raises(errors.ObjectTampered):
        dare.open_package(KEY, bytes.fromhex(vector["package_hex"]), seq=vector["seq"])


def test_golden_vector_fails_with_wrong_sequence_number():
    package = bytes.fromhex(VECTORS["golden"][3]["package_hex"])
    with pytest.raises(errors.ObjectTampered):
        dare.open_package(KEY, package, seq=4)


def test_golden_vector_decrypts_through_the_stream_decoder_with_start_sequence():
    vector = VECTORS["golden"][7]
    dec = dare.DareDecryptor(KEY, seq=vector["seq"])
    out = b"".join(bytes(p) for p in dec.update(bytes.fromhex(vector["package_hex"])))
    dec.finish()
    assert out == bytes(8)


SIZES = [0, 1, P - 1, P, P + 1, 2 * P, (1 << 20) + 1]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("cipher", [dare.AES_256_GCM, dare.CHACHA20_POLY1305])
def test_round_trip_at_package_boundaries(size, cipher):
    data = os.urandom(size)
    ct = dare.encrypt(KEY, data, cipher=cipher)
    assert len(ct) == dare.encrypted_size(size)
    assert dare.decrypted_size(len(ct)) == size
    assert dare.decrypt(KEY, ct) == data
    packages = [ct[i:i + dare.MAX_PACKAGE] for i in range(0, len(ct), dare.MAX_PACKAGE)]
    assert len(packages) == dare.package_count(size)
    for i, pkg in enumerate(packages):
        assert pkg[0] == 0x20 and pkg[1] == cipher
        assert bool(pkg[4] & 0x80) == (i == len(packages) - 1), "only the last package is final"
        assert (pkg[4] & 0x7F, pkg[5:16]) == (packages[0][4] & 0x7F, packages[0][5:16])


def test_empty_plaintext_is_an_empty_stream():
    assert dare.encrypt(KEY, b"") == b""
    assert dare.decrypt(KEY, b"") == b""


def test_exact_multiple_ends_with_full_final_package():
    ct = dare.encrypt(KEY, bytes(2 * P), random_value=RANDOM)
    assert len(ct) == 2 * dare.MAX_PACKAGE
    last = ct[dare.MAX_PACKAGE:]
    assert last[4] & 0x80 and int.from_bytes(last[2:4], "little") == P - 1


@pytest.mark.parametrize("chunk", [1, 7, 4096, P - 1, P, P + 3, 300_000])
def test_encryption_is_independent_of_chunking(chunk):
    data = os.urandom(3 * P + 123)
    whole = dare.encrypt(KEY, data, random_value=RANDOM)
    chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    assert b"".join(dare.encrypt_stream(KEY, chunks, random_value=RANDOM)) == whole
    cchunks = [whole[i:i + chunk] for i in range(0, len(whole), chunk)]
    assert b"".join(dare.decrypt_stream(KEY, cchunks)) == data


def test_start_sequence_number_changes_ciphertext_and_must_match():
    data = os.urandom(P + 5)
    ct = dare.encrypt(KEY, data, random_value=RANDOM, seq=10)
    assert ct != dare.encrypt(KEY, data, random_value=RANDOM)
    assert dare.decrypt(KEY, ct, seq=10) == data
    with pytest.raises(errors.ObjectTampered):
        dare.decrypt(KEY, ct, seq=0)


def test_size_maths():
    assert dare.encrypted_size(0) == 0
    assert dare.encrypted_size(1) == 33
    assert dare.encrypted_size(P) == dare.MAX_PACKAGE
    assert dare.encrypted_size(P + 1) == dare.MAX_PACKAGE + 33
    for n in SIZES + [10 * P + 999]:
        assert dare.decrypted_size(dare.encrypted_size(n)) == n
    for bad in (1, 32, dare.MAX_PACKAGE + 32):
        with pytest.raises(errors.ObjectTampered):
            dare.decrypted_size(bad)


def _decrypt_range(ct: bytes, size: int, offset: int, length: int) -> bytes:
    r = dare.package_range(offset, length, size)
    dec = dare.DareDecryptor(KEY, seq=r.first_package, last_seq=dare.package_count(size) - 1)
    plain = b"".join(bytes(p) for p in dec.update(ct[r.ciphertext_offset:r.ciphertext_offset + r.ciphertext_length]))
    if r.last_package == dare.package_count(size) - 1:
        dec.finish()
    return plain[r.skip:r.skip + length]


@pytest.mark.parametrize("offset,length", [
    (0, 1), (0, P), (P - 1, 2), (P, 1), (P, P), (P + 1, P), (2 * P - 1, 1), (3 * P, 10), (3 * P + 9, 1),
    (5, 3 * P + 5), (0, 3 * P + 10)])
def test_ranged_decryption_at_boundaries(offset, length):
    size = 3 * P + 10
    data = os.urandom(size)
    ct = dare.encrypt(KEY, data)
    r = dare.package_range(offset, length, size)
    assert r.first_package == offset // P and r.skip == offset % P
    assert r.ciphertext_offset == r.first_package * dare.MAX_PACKAGE
    assert _decrypt_range(ct, size, offset, length) == data[offset:offset + length]


def test_ranged_decryption_does_not_need_the_first_package():
    data = os.urandom(4 * P)
    ct = dare.encrypt(KEY, data)
    tail = ct[2 * dare.MAX_PACKAGE:]
    dec = dare.DareDecryptor(KEY, seq=2)
    assert b"".join(bytes(p) for p in dec.update(tail)) == data[2 * P:]
    dec.finish()


def _packages(ct: bytes) -> list[bytes]:
    return [ct[i:i + dare.MAX_PACKAGE] for i in range(0, len(ct), dare.MAX_PACKAGE)]


def test_truncation_at_package_boundary_is_detected():
    ct = dare.encrypt(KEY, os.urandom(3 * P + 1))
    with pytest.raises(errors.ObjectTampered, match="EOF"):
        dare.decrypt(KEY, ct[:2 * dare.MAX_PACKAGE])


def test_truncation_inside_a_package_is_detected():
    ct = dare.encrypt(KEY, os.urandom(2 * P))
    with pytest.raises(errors.ObjectTampered):
        dare.decrypt(KEY, ct[:-1])


def test_reordered_packages_are_detected():
    pk = _packages(dare.encrypt(KEY, os.urandom(3 * P + 1)))
    with pytest.raises(errors.ObjectTampered):
        dare.decrypt(KEY, pk[1] + pk[0] + pk[2] + pk[3])


def test_data_after_final_package_is_detected():
    ct = dare.encrypt(KEY, os.urandom(10))
    with pytest.raises(errors.ObjectTampered, match="after final"):
        dare.decrypt(KEY, ct + ct)


def test_package_from_another_stream_under_the_same_key_is_detected():
    a = _packages(dare.encrypt(KEY, os.urandom(2 * P + 1)))
    b = _packages(dare.encrypt(KEY, os.urandom(2 * P + 1)))
    with pytest.raises(errors.ObjectTampered, match="nonce"):
        dare.decrypt(KEY, a[0] + b[1] + a[2])


def test_cipher_change_within_stream_is_detected():
    a = _packages(dare.encrypt(KEY, os.urandom(P + 1), random_value=RANDOM))
    b = _packages(dare.encrypt(KEY, os.urandom(P + 1), random_value=RANDOM, cipher=dare.CHACHA20_POLY1305))
    with pytest.raises(errors.ObjectTampered, match="cipher"):
        dare.decrypt(KEY, a[0] + b[1])


def test_short_non_final_package_is_rejected():
    ct = dare.seal_package(KEY, b"abc", random_value=RANDOM, final=True)
    forged = bytearray(ct)
    forged[4] &= 0x7F
    with pytest.raises(errors.ObjectTampered):
        dare.decrypt(KEY, bytes(forged))


def test_flipped_bits_anywhere_are_detected():
    ct = bytearray(dare.encrypt(KEY, os.urandom(P + 100)))
    rng = random.Random(1)
    for pos in [0, 1, 2, 3, 4, 10, 15, 16, 1000, dare.MAX_PACKAGE - 1, dare.MAX_PACKAGE + 20, len(ct) - 1] + \
            [rng.randrange(len(ct)) for _ in range(10)]:
        bad = bytearray(ct)
        bad[pos] ^= 0x01
        with pytest.raises(errors.ObjectTampered):
            dare.decrypt(KEY, bytes(bad))


def test_wrong_key_is_detected():
    ct = dare.encrypt(KEY, b"secret")
    with pytest.raises(errors.ObjectTampered):
        dare.decrypt(bytes(32), ct)


def test_misplaced_final_flag_is_detected_when_the_last_index_is_known():
    ct = dare.encrypt(KEY, os.urandom(P))  # one package, final, index 0
    dec = dare.DareDecryptor(KEY, seq=0, last_seq=2)
    with pytest.raises(errors.ObjectTampered, match="final flag"):
        list(dec.update(ct))


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        dare.DareEncryptor(bytes(16))
    with pytest.raises(ValueError):
        dare.seal_package(KEY, b"", random_value=RANDOM)
    with pytest.raises(ValueError):
        dare.seal_package(KEY, b"x", random_value=RANDOM, final=False)
    with pytest.raises(ValueError):
        dare.cipher_id("aes-128")
    assert dare.cipher_id("ChaCha20-Poly1305") == dare.CHACHA20_POLY1305
