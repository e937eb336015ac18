"""SSE request headers (services/gateway/sse.py): modes, contradictions, SSE-C key checks,
which key a write uses, and the response headers."""
from __future__ import annotations

import base64
import hashlib
import json
import os

import pytest

from sealstore import errors, ssec
from sealstore.v1 import crypto_pb2, types_pb2
from services.gateway import sse

KEY = bytes(range(32))


def ctx(obj) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


def ssec_headers(key: bytes = KEY, *, algorithm="AES256", md5: bytes | None = None, prefix: str = "") -> dict:
    md5 = hashlib.md5(key).digest() if md5 is None else md5
    return {prefix + sse.H_SSEC_ALGORITHM: algorithm, prefix + sse.H_SSEC_KEY: base64.b64encode(key).decode(),
            prefix + sse.H_SSEC_KEY_MD5: base64.b64encode(md5).decode()}


@pytest.fixture(autouse=True)
def deployment_settings(monkeypatch):
    for name in ("SEALSTORE_ENCRYPT_BY_DEFAULT", "SEALSTORE_DEFAULT_KMS_KEY", "SEALSTORE_SSE_S3_KEY"):
        monkeypatch.delenv(name, raising=False)


# -- key ids and context ----------------------------------------------------------------------

@pytest.mark.parametrize("raw,name", [
    ("k1", "k1"), ("arn:aws:kms:k1", "k1"), ("arn:aws:kms:us-east-1:123456789012:key/my-key", "my-key"),
    ("arn:aws:kms:eu:1:key/a/key/b", "b")])
def test_key_id_names_the_key_and_is_kept_as_given(raw, name):
    got = sse.requested_encryption({sse.H_SSE: "aws:kms", sse.H_KEY_ID: raw})
    assert (got.mode, got.key_name, got.key_id) == (sse.SSE_KMS, name, raw)
    header = crypto_pb2.PutObjectHeader()
    got.apply_to(header)
    assert (header.sse_kms.key_name, header.sse_kms.key_id) == (name, raw)


def test_key_id_with_spaces_rejected():
    with pytest.raises(errors.InvalidArgument):
        sse.requested_encryption({sse.H_SSE: "aws:kms", sse.H_KEY_ID: " k1"})


def test_context_canonicalised():
    got = sse.requested_encryption({sse.H_SSE: "aws:kms", sse.H_KEY_ID: "k", sse.H_CONTEXT: ctx({"z": "1", "a": "<&>"})})
    assert got.context_json == '{"a":"\\u003c\\u0026\\u003e","z":"1"}'


@pytest.mark.parametrize("value", ["not base64!", ctx([1, 2]), ctx({"a": 1}), base64.b64encode(b"{bad").decode()])
def test_bad_context_rejected(value):
    with pytest.raises(errors.InvalidArgument):
        sse.requested_encryption({sse.H_SSE: "aws:kms", sse.H_KEY_ID: "k", sse.H_CONTEXT: value})


# -- modes and contradictions ------------------------------------------------------------------

def test_modes():
    assert sse.requested_encryption({}) is None
    assert sse.requested_encryption({sse.H_SSE: "AES256"}).mode == sse.SSE_S3
    kms = sse.requested_encryption({sse.H_SSE: "aws:kms"})
    assert (kms.mode, kms.key_name) == (sse.SSE_KMS, "")  # the key is picked with the bucket default
    customer = sse.requested_encryption(ssec_headers(), secure=True)
    assert customer.mode == sse.SSE_C and customer.customer.key == KEY
    with pytest.raises(errors.NotImplementedS3):
        sse.requested_encryption({sse.H_SSE: "aws:kms:dsse"})


@pytest.mark.parametrize("headers", [
    {**ssec_headers(), sse.H_SSE: "aws:kms"},
    {**ssec_headers(), sse.H_SSE: "AES256"},
    {**ssec_headers(), sse.H_KEY_ID: "k"},
    {sse.H_KEY_ID: "k"},                                  # a key id without aws:kms
    {sse.H_CONTEXT: ctx({"a": "b"})},                     # a context without aws:kms
    {sse.H_SSE: "AES256", sse.H_KEY_ID: "k"},             # AES256 with a key id
    {sse.H_SSE: "AES256", sse.H_CONTEXT: ctx({"a": "b"})},
    {sse.H_SSE: "aws:kms", sse.H_KEY_ID: "arn:aws:kms:"},  # names no key
    {sse.H_SSE: "rot13"},                                 # unknown algorithm
    {sse.H_SSE: ""},
])
def test_contradictions_are_invalid_argument(headers):
    with pytest.raises(errors.InvalidArgument):
        sse.requested_encryption(headers, secure=True)


# -- SSE-C headers -------------------------------------------------------------------------------

def test_ssec_refused_over_plain_http_before_anything_else():
    for headers in (ssec_headers(), {sse.H_SSEC_KEY: "junk"}, {**ssec_headers(), sse.H_SSE: "aws:kms"}):
        with pytest.raises(errors.InvalidRequest) as err:
            sse.requested_encryption(headers, secure=False)
        assert "secure connection" in err.value.message
        with pytest.raises(errors.InvalidRequest):
            sse.customer_key(headers, secure=False)


def test_ssec_key_parsed_with_its_md5():
    got = sse.customer_key(ssec_headers(), secure=True)
    assert got.key == KEY and got.key_md5 == base64.b64encode(hashlib.md5(KEY).digest()).decode()
    assert repr(KEY) not in repr(got) and base64.b64encode(KEY).decode() not in repr(got)
    assert sse.customer_key({}, secure=True) is None


@pytest.mark.parametrize("headers,error,words", [
    (ssec_headers(md5=hashlib.md5(b"other").digest()), errors.InvalidArgument, "MD5"),
    (ssec_headers(key=KEY[:16]), errors.InvalidArgument, "secret key was invalid"),
    ({**ssec_headers(), sse.H_SSEC_KEY: "!!!"}, errors.InvalidArgument, "secret key was invalid"),
    (ssec_headers(algorithm="AES128"), errors.InvalidEncryptionAlgorithmError, "AES256"),
    ({k: v for k, v in ssec_headers().items() if k != sse.H_SSEC_ALGORITHM}, errors.InvalidArgument, "algorithm"),
    ({k: v for k, v in ssec_headers().items() if k != sse.H_SSEC_KEY}, errors.InvalidArgument, "secret key"),
    ({k: v for k, v in ssec_headers().items() if k != sse.H_SSEC_KEY_MD5}, errors.InvalidArgument, "MD5"),
])
def test_ssec_bad_headers(headers, error, words):
    with pytest.raises(error) as err:
        sse.customer_key(headers, secure=True)
    assert words in err.value.message
    assert err.value.http_status == 400


def test_copy_source_customer_key_is_separate():
    # AWS's names (what botocore sends): x-amz-copy-source-server-side-encryption-customer-*.
    assert sse.COPY_SOURCE_SSEC_HEADERS[0] == "x-amz-copy-source-server-side-encryption-customer-algorithm"
    headers = {**dict(zip(sse.COPY_SOURCE_SSEC_HEADERS, ssec_headers().values())), **ssec_headers(key=KEY[::-1])}
    assert sse.copy_source_customer_key(headers, secure=True).key == KEY
    assert sse.customer_key(headers, secure=True).key == KEY[::-1]
    assert sse.copy_source_customer_key(ssec_headers(), secure=True) is None
    with pytest.raises(errors.InvalidRequest):
        sse.copy_source_customer_key(headers, secure=False)


def test_head_checks_the_customer_key_against_the_stored_check_value():
    iv = os.urandom(32)
    meta = types_pb2.ObjectMeta(encryption=types_pb2.EncryptionEnvelope(
        domain="SSE-C", iv=iv, customer_key_check=ssec.customer_key_check(KEY, iv)))
    right = sse.customer_key(ssec_headers(), secure=True)
    wrong = sse.customer_key(ssec_headers(key=os.urandom(32)), secure=True)
    sse.check_customer_key(meta, right)
    with pytest.raises(errors.CustomerKeyMismatch) as err:
        sse.check_customer_key(meta, wrong)
    assert (err.value.http_status, err.value.code) == (403, "AccessDenied")
    with pytest.raises(errors.InvalidRequest):
        sse.check_customer_key(meta, None)
    kms_meta = types_pb2.ObjectMeta(encryption=types_pb2.EncryptionEnvelope(domain="SSE-KMS", kms_key_name="k"))
    for other in (kms_meta, types_pb2.ObjectMeta()):
        sse.check_customer_key(other, None)
        with pytest.raises(errors.InvalidRequest) as err:
            sse.check_customer_key(other, right)
        assert "not applicable" in err.value.message


def test_check_value_is_bound_to_the_iv_and_the_key():
    iv = os.urandom(32)
    check = ssec.customer_key_check(KEY, iv)
    assert ssec.customer_key_matches(KEY, iv, check)
    assert not ssec.customer_key_matches(KEY, os.urandom(32), check)
    assert not ssec.customer_key_matches(KEY[::-1], iv, check)
    assert KEY not in check and hashlib.sha256(KEY).digest() != check


# -- which key a write uses ----------------------------------------------------------------------

def kms_default(key_id: str = "arn:aws:kms:bucket-key") -> types_pb2.BucketEncryption:
    return types_pb2.BucketEncryption(sse_algorithm="aws:kms", kms_master_key_id=key_id)


def test_request_wins_over_bucket_default():
    got = sse.resolve_write_encryption({}, kms_default())
    assert (got.mode, got.key_name, got.key_id) == (sse.SSE_KMS, "bucket-key", "arn:aws:kms:bucket-key")
    got = sse.resolve_write_encryption({sse.H_SSE: "aws:kms", sse.H_KEY_ID: "mine"}, kms_default())
    assert (got.key_name, got.key_id) == ("mine", "mine")
    assert sse.resolve_write_encryption({sse.H_SSE: "AES256"}, kms_default()).mode == sse.SSE_S3
    got = sse.resolve_write_encryption(ssec_headers(), kms_default(), secure=True)
    assert got.mode == sse.SSE_C


def test_aws_kms_without_key_id_takes_the_bucket_key_else_the_deployment_key(monkeypatch):
    got = sse.resolve_write_encryption({sse.H_SSE: "aws:kms", sse.H_CONTEXT: ctx({"a": "b"})}, kms_default())
    assert (got.key_name, got.key_id, got.context_json) == ("bucket-key", "arn:aws:kms:bucket-key", '{"a":"b"}')
    aes_default = types_pb2.BucketEncryption(sse_algorithm="AES256")
    for default in (None, aes_default, kms_default("")):
        got = sse.resolve_write_encryption({sse.H_SSE: "aws:kms"}, default)
        assert (got.mode, got.key_name, got.key_id) == (sse.SSE_KMS, "sealstore-default", "sealstore-default")
    monkeypatch.setenv("SEALSTORE_DEFAULT_KMS_KEY", "site-key")
    assert sse.resolve_write_encryption({sse.H_SSE: "aws:kms"}, None).key_name == "site-key"


def test_encrypted_by_default_unless_turned_off(monkeypatch):
    assert sse.resolve_write_encryption({}, None).mode == sse.SSE_S3
    assert sse.resolve_write_encryption({}, types_pb2.BucketEncryption()).mode == sse.SSE_S3
    assert sse.resolve_write_encryption({}, types_pb2.BucketEncryption(sse_algorithm="AES256")).mode == sse.SSE_S3
    monkeypatch.setenv("SEALSTORE_ENCRYPT_BY_DEFAULT", "0")
    got = sse.resolve_write_encryption({}, None)
    assert got == sse.PLAIN and not got.encrypted
    header = crypto_pb2.PutObjectHeader()
    got.apply_to(header)
    assert not header.HasField("sse_kms") and not header.sse_s3 and not header.sse_customer_key
    # A bucket default still applies with the deployment default off.
    assert sse.resolve_write_encryption({}, types_pb2.BucketEncryption(sse_algorithm="AES256")).mode == sse.SSE_S3


# -- response headers ------------------------------------------------------------------------------

def test_response_headers_per_mode():
    env = types_pb2.EncryptionEnvelope(domain="SSE-KMS", kms_key_name="k1", context_json='{"a":"b"}')
    headers = sse.response_headers(env)
    assert headers[sse.H_SSE] == "aws:kms" and headers[sse.H_KEY_ID] == "k1"  # the name, as named
    assert json.loads(base64.b64decode(headers[sse.H_CONTEXT])) == {"a": "b"}
    arn = "arn:aws:kms:us-east-1:123456789012:key/k1"
    assert sse.response_headers(types_pb2.EncryptionEnvelope(domain="SSE-KMS", kms_key_name="k1",
                                                             kms_key_id=arn))[sse.H_KEY_ID] == arn
    assert sse.response_headers(None) == {}
    assert sse.response_headers(types_pb2.EncryptionEnvelope(domain="SSE-S3", kms_key_name="sealstore-sse-s3")) \
        == {sse.H_SSE: "AES256"}
    customer = sse.customer_key(ssec_headers(), secure=True)
    assert sse.response_headers(types_pb2.EncryptionEnvelope(domain="SSE-C"), customer) == {
        sse.H_SSEC_ALGORITHM: "AES256", sse.H_SSEC_KEY_MD5: customer.key_md5}
    # Objects written before the domain and key id were recorded: SSE-KMS under their key name.
    legacy = sse.response_headers(types_pb2.EncryptionEnvelope(kms_key_name="old"))
    assert legacy == {sse.H_SSE: "aws:kms", sse.H_KEY_ID: "old"}
