"""The SSE-KMS key hierarchy: frozen known answers, the spec recomputed, and negative cases."""
from __future__ import annotations

import hashlib
import hmac

import pytest

from sealstore import errors
from services.crypto import dare, keys

DEK = bytes(range(32))
RANDOM = bytes(range(32, 64))
IV = bytes(range(64, 96))
NONCE = bytes(range(96, 108))
CTX = keys.SealContext("mybucket", "dir/obj", IV)

# Computed once with this implementation and frozen; test_*_matches_spec recompute them
# from docs/crypto.md with nothing but hmac.
OEK_KAT = "558fed483ef9f978fbb4a14db4aab0e488b4c05da4edbc185d437f75a97e950d"
KEK_KAT = "001e3c1ca9fe6ac06b7b0fa1377d6eca5cdb57c68979856140313a2539bc65cd"
SEALED_AES_KAT = ("20001f00e06162636465666768696a6b61d8249a5bd62440fdd5226914b7a473"
                  "b9d8f134c1c380c64264b905ab6eb5e5bb9158146f6a9405ffe15bd2940d0fb0")
SEALED_CHACHA_KAT = ("20011f00e06162636465666768696a6b9076c9e143154d417b6e1fd6028ca0fe"
                     "7116a8a9b94c72d3bcb4442ec6af244659c00fb47a3e4d81692141f19bdb0955")


def test_oek_known_answer_matches_spec():
    oek = keys.generate_oek(DEK, RANDOM)
    assert oek.hex() == OEK_KAT
    assert bytes(oek) == hmac.new(DEK, b"object-encryption-key generation" + RANDOM, hashlib.sha256).digest()


def test_kek_known_answer_matches_spec():
    kek = keys.derive_kek(DEK, CTX)
    assert kek.hex() == KEK_KAT
    assert bytes(kek) == hmac.new(DEK, IV + b"SSE-KMS" + b"DAREv2-HMAC-SHA256" + b"mybucket/dir/obj",
                                  hashlib.sha256).digest()


@pytest.mark.parametrize("cipher,expected", [(dare.AES_256_GCM, SEALED_AES_KAT),
                                             (dare.CHACHA20_POLY1305, SEALED_CHACHA_KAT)])
def test_sealed_oek_known_answer(cipher, expected):
    sealed = keys.seal_oek(DEK, bytes.fromhex(OEK_KAT), CTX, cipher=cipher, random_value=NONCE)
    assert sealed.hex() == expected
    assert len(sealed) == 64
    # It is exactly one final DARE 2.0 package of the OEK under the KEK.
    plain, final = dare.open_package(bytes.fromhex(KEK_KAT), sealed)
    assert final and plain.hex() == OEK_KAT
    assert bytes(keys.unseal_oek(DEK, sealed, CTX)).hex() == OEK_KAT


def test_random_generation():
    assert len(keys.generate_iv()) == 32 and keys.generate_iv() != keys.generate_iv()
    assert keys.generate_oek(DEK) != keys.generate_oek(DEK)
    a = keys.seal_oek(DEK, bytes(32), CTX)
    assert a != keys.seal_oek(DEK, bytes(32), CTX), "each seal draws a fresh DARE random value"


@pytest.mark.parametrize("ctx", [
    keys.SealContext("otherbucket", "dir/obj", IV),
    keys.SealContext("mybucket", "dir/obj2", IV),
    keys.SealContext("mybucket", "dir/obj", bytes(32)),
    keys.SealContext("mybucket", "dir/obj", IV, domain="SSE-S3"),
])
def test_unseal_with_wrong_binding_fails_typed(ctx):
    sealed = bytes.fromhex(SEALED_AES_KAT)
    with pytest.raises(errors.ObjectTampered) as info:
        keys.unseal_oek(DEK, sealed, ctx)
    assert OEK_KAT not in str(info.value) and DEK.hex() not in str(info.value)


def test_unseal_with_wrong_dek_or_damaged_key_fails_typed():
    sealed = bytes.fromhex(SEALED_AES_KAT)
    with pytest.raises(errors.ObjectTampered):
        keys.unseal_oek(bytes(32), sealed, CTX)
    with pytest.raises(errors.ObjectTampered):
        keys.unseal_oek(DEK, sealed[:-1], CTX)
    bad = bytearray(sealed)
    bad[20] ^= 1
    with pytest.raises(errors.ObjectTampered):
        keys.unseal_oek(DEK, bytes(bad), CTX)


# (bucket, key) pairs that Go's path.Join (the binding before issue 7) folded into one path,
# while storage kept them apart (the key is hashed raw on disk).
ALIASES = [
    (("mybucket", "a/../c"), ("mybucket", "c")),
    (("mybucket", "a//b"), ("mybucket", "a/b")),
    (("mybucket", "./x"), ("mybucket", "x")),
    (("mybucket", "dir/"), ("mybucket", "dir")),
    (("mybucket", "/o"), ("mybucket", "o")),
    (("b1", "../b2/B"), ("b2", "B")),
]


@pytest.mark.parametrize("first,second", ALIASES)
def test_distinct_names_never_share_a_binding(first, second):
    assert keys.object_path(*first) != keys.object_path(*second)
    assert keys.kms_context(*first, {}) != keys.kms_context(*second, {})
    assert keys.derive_kek(DEK, keys.SealContext(*first, IV)) != keys.derive_kek(DEK, keys.SealContext(*second, IV))


@pytest.mark.parametrize("first,second", ALIASES)
def test_a_key_sealed_for_one_name_does_not_unseal_for_another(first, second):
    sealed = keys.seal_oek(DEK, bytes.fromhex(OEK_KAT), keys.SealContext(*first, IV))
    assert bytes(keys.unseal_oek(DEK, sealed, keys.SealContext(*first, IV))).hex() == OEK_KAT
    with pytest.raises(errors.ObjectTampered):
        keys.unseal_oek(DEK, sealed, keys.SealContext(*second, IV))


@pytest.mark.parametrize("bucket,obj,expected", [
    ("b", "o", "b/o"), ("b", "a/b/c", "b/a/b/c"), ("b", "a//b", "b/a//b"), ("b", "a/./b/", "b/a/./b/"),
    ("b", "a/../c", "b/a/../c"), ("b", "../../x", "b/../../x"), ("b", "/o", "b//o"), ("b", "é/ü", "b/é/ü"),
])
def test_object_path_is_the_names_as_sent(bucket, obj, expected):
    assert keys.object_path(bucket, obj) == expected


def test_clean_names_bind_as_before():
    """Objects written before issue 7 under clean names keep their binding: the frozen KEK above
    and this one (computed with Go's path.Join) still match."""
    old_kek = hmac.new(DEK, IV + b"SSE-KMS" + b"DAREv2-HMAC-SHA256" + b"mybucket/dir/sub/obj", hashlib.sha256).digest()
    assert bytes(keys.derive_kek(DEK, keys.SealContext("mybucket", "dir/sub/obj", IV))) == old_kek


@pytest.mark.parametrize("bucket", ["", "b1/..", "a/b"])
def test_a_bucket_that_could_hide_a_slash_is_refused(bucket):
    with pytest.raises(errors.InvalidBucketName):
        keys.object_path(bucket, "o")


def test_kms_context_adds_bucket_entry():
    assert keys.kms_context("mybucket", "dir/obj", {}) == b'{"mybucket":"mybucket/dir/obj"}'
    assert keys.kms_context("mybucket", "o", {"z": "1", "a": "2"}) == b'{"a":"2","mybucket":"mybucket/o","z":"1"}'
    # The client's own entry for the bucket wins.
    assert keys.kms_context("mybucket", "o", {"mybucket": "x"}) == b'{"mybucket":"x"}'


def test_canonical_context_json_is_go_compatible():
    assert keys.canonical_context_json({"b": "<&>", "a": "é", "c": "\u2028"}) == \
        '{"a":"é","b":"\\u003c\\u0026\\u003e","c":"\\u2028"}'
    assert keys.canonical_context_json({}) == "{}"
    assert keys.parse_context_json('{"k": "v"}') == {"k": "v"}
    assert keys.parse_context_json("") == {}


@pytest.mark.parametrize("bad", ['{"k": 1}', "[1]", "not json", '{"k": {"x": "y"}}'])
def test_bad_context_is_invalid_argument(bad):
    with pytest.raises(errors.InvalidArgument):
        keys.parse_context_json(bad)


def test_bad_key_sizes_are_refused():
    with pytest.raises(ValueError):
        keys.generate_oek(bytes(16))
    with pytest.raises(ValueError):
        keys.SealContext("b", "o", bytes(16))
    with pytest.raises(errors.InvalidArgument):
        keys.SealContext("b", "o", IV, algorithm="DARE-SHA256")


def test_zero_overwrites_bytearray():
    buf = bytearray(b"\x01" * 32)
    keys.zero(buf)
    assert buf == bytearray(32)
