"""KES-format data-key ciphertexts: known answers from KES's own tests, round trips, tampering."""
from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sealstore import errors
from services.kms import ciphertext

b64 = base64.b64decode

# minio/kes internal/crypto/key_test.go, secretKeyDecryptTests #5 and #6 (AES256, binary format).
KES_VECTORS = [
    dict(key=bytes(32), plaintext=bytes(16), context=b"",
         ciphertext=b64("zwdDgHeRlIFRnJ7+DIhs/ka7GFK2CFSfDELqg1VCyTQzZ58o7MAdupMLk3ZjlMo2ZUDwldL2o41nAWDc")),
    dict(key=b64("dDHbTWgo+Yh3u804SYB5OyVMy6RiLeJYBQth1f6KlEU="),
         plaintext=b64("CLcJoykFCWZDkEIiUq9bJRqwCwW9ZDvdgu8EMA=="), context=bytes(16),
         ciphertext=b64("s2gmfQHeGdlyL8x1yEWSACUV3GrSoz3t160hugMgzKWgyqesXDVUJ5Dw5Mt076rR1PNiU9X4YjLH14D8a81t2r2xsz4gVZac")),
]


@pytest.mark.parametrize("vector", KES_VECTORS, ids=["no-context", "with-context"])
def test_opens_kes_ciphertexts(vector):
    assert ciphertext.unseal(vector["key"], vector["ciphertext"], vector["context"]) == vector["plaintext"]


@pytest.mark.parametrize("vector", KES_VECTORS, ids=["no-context", "with-context"])
def test_seal_with_kes_iv_and_nonce_reproduces_kes_bytes(vector):
    ct = vector["ciphertext"]
    sealed = ciphertext.seal(vector["key"], vector["plaintext"], vector["context"], iv=ct[-28:-12], nonce=ct[-12:])
    assert sealed == ct


def test_layout_is_sealed_then_iv_then_nonce():
    key, dek, ctx = bytes(range(32)), bytes(range(100, 132)), b'{"b":"b/o"}'
    iv, nonce = bytes(range(16)), bytes(range(50, 62))
    ct = ciphertext.seal(key, dek, ctx, iv=iv, nonce=nonce)
    assert len(ct) == 76 == len(dek) + ciphertext.OVERHEAD
    assert ct[-28:-12] == iv and ct[-12:] == nonce
    per_ct_key = hmac.new(key, iv, hashlib.sha256).digest()
    assert AESGCM(per_ct_key).decrypt(nonce, ct[:48], ctx) == dek


def test_round_trip_uses_fresh_randomness():
    key, dek, ctx = bytes(32), bytes(range(32)), b"ctx"
    a, b = ciphertext.seal(key, dek, ctx), ciphertext.seal(key, dek, ctx)
    assert a != b
    assert ciphertext.unseal(key, a, ctx) == ciphertext.unseal(key, b, ctx) == dek


def test_wrong_context_is_refused():
    key = bytes(range(32))
    ct = ciphertext.seal(key, b"k" * 32, b'{"bucket":"bucket/a"}')
    with pytest.raises(errors.KMSInvalidCiphertext):
        ciphertext.unseal(key, ct, b'{"bucket":"bucket/b"}')
    with pytest.raises(errors.KMSInvalidCiphertext):
        ciphertext.unseal(key, ct, b"")


def test_wrong_key_is_refused():
    ct = ciphertext.seal(bytes(32), b"k" * 32, b"")
    with pytest.raises(errors.KMSInvalidCiphertext):
        ciphertext.unseal(b"\x01" * 32, ct, b"")


@pytest.mark.parametrize("position", [0, 31, 47, 48, 63, 64, 75])  # sealed, tag, iv, nonce
def test_any_flipped_bit_is_refused(position):
    key = bytes(range(32))
    ct = bytearray(ciphertext.seal(key, b"d" * 32, b"ctx"))
    ct[position] ^= 0x01
    with pytest.raises(errors.KMSInvalidCiphertext):
        ciphertext.unseal(key, bytes(ct), b"ctx")


def test_truncated_ciphertext_is_refused_without_key_bytes_in_message():
    key = bytes(range(32))
    ct = ciphertext.seal(key, b"d" * 32, b"ctx")
    for cut in (ct[:-1], ct[:43], b""):
        with pytest.raises(errors.KMSInvalidCiphertext) as info:
            ciphertext.unseal(key, cut, b"ctx", key_name="bucket-a")
        assert key.hex() not in info.value.message and "bucket-a" in info.value.message


def test_key_must_be_32_bytes():
    with pytest.raises(ValueError):
        ciphertext.seal(bytes(16), b"x", b"")
