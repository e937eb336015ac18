"""sealstore.sigv4 against botocore's own S3 signers."""
from __future__ import annotations

import datetime
import hashlib
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from sealstore import sigv4

NOW = datetime.datetime(2026, 3, 4, 5, 6, 7, tzinfo=datetime.timezone.utc)
AK, SK = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"

KEYS = ["plain.txt", "dir/sub/file", "with space.bin", "ünïcödé/ファイル", "a+b=c&d", "tilde~star*", "semi;colon,comma",
        "percent%20literal", "x" * 300, "trailing/", "quote\"s'and(parens)!", "ümlaut space/ok"]
QUERIES = ["", "?encryption=", "?list-type=2&prefix=a%2Fb&delimiter=%2F",
           "?list-type=2&start-after=k%20with%20space&max-keys=7", "?prefix=%C3%BC&encoding-type=url",
           "?uploads=", "?b=2&a=1&a=0"]


def _botocore_signed(method, url, headers, body, region="us-east-1"):
    request = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    with _frozen_time():
        S3SigV4Auth(Credentials(AK, SK), "s3", region).add_auth(request)
    return request


class _frozen_time:
    """Pins botocore's clock (botocore.auth.get_current_datetime) to NOW."""

    def __enter__(self):
        import botocore.auth as a
        self._orig = a.get_current_datetime
        a.get_current_datetime = lambda *args, **kw: NOW.replace(tzinfo=None)
        return self

    def __exit__(self, *exc):
        import botocore.auth as a
        a.get_current_datetime = self._orig


def _canonical_from_wire(method, url, headers, payload_hash):
    parts = urlsplit(url)
    hmap = {"host": [parts.netloc]}  # what the HTTP client adds on the wire
    for k, v in headers.items():
        hmap.setdefault(k.lower(), []).append(v)
    auth = sigv4.parse_authorization(headers["Authorization"])
    return auth, sigv4.canonical_request(method, sigv4.canonical_uri_from_raw(parts.path),
                                         sigv4.canonical_query(sigv4.parse_query(parts.query)),
                                         hmap, auth.signed_headers, payload_hash)


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("query", QUERIES)
def test_header_signature_matches_botocore(key, query):
    url = f"http://127.0.0.1:9000/bucket/{quote(key, safe='/~')}{query}"
    body = b"hello " + key.encode()
    req = _botocore_signed("PUT", url, {"Content-Type": "text/plain", "x-amz-meta-Note": "  two   spaces "}, body)
    headers = dict(req.headers.items())
    payload = headers["X-Amz-Content-SHA256"]
    assert payload == hashlib.sha256(body).hexdigest()
    auth, canonical = _canonical_from_wire("PUT", url, headers, payload)
    cred = auth.credential
    assert (cred.access_key, cred.date, cred.region, cred.service) == (AK, "20260304", "us-east-1", "s3")
    key_bytes = sigv4.signing_key(SK, cred.date, cred.region)
    ours = sigv4.signature(key_bytes, sigv4.string_to_sign(headers["X-Amz-Date"], cred.scope, canonical))
    assert ours == auth.signature


@pytest.mark.parametrize("region", ["us-east-1", "eu-central-1", "sealstore"])
@pytest.mark.parametrize("key", KEYS[:6])
def test_sign_request_is_accepted_like_botocore(region, key):
    url = f"http://localhost:9000/b/{quote(key, safe='/~')}?list-type=2&prefix=x%20y"
    ours = sigv4.sign_request("GET", url, {}, sigv4.EMPTY_SHA256, AK, SK, region=region, now=NOW)
    theirs = _botocore_signed("GET", url, {}, b"", region=region)
    assert ours["Authorization"] == theirs.headers["Authorization"]
    assert ours["x-amz-date"] == theirs.headers["X-Amz-Date"]


@pytest.mark.parametrize("key", KEYS)
def test_presigned_url_matches_botocore(key):
    url = f"http://127.0.0.1:9000/bucket/{quote(key, safe='/~')}"
    request = AWSRequest(method="GET", url=url, headers={})
    with _frozen_time():
        S3SigV4QueryAuth(Credentials(AK, SK), "s3", "us-east-1", expires=900).add_auth(request)
    parts = urlsplit(request.url)
    pairs = sigv4.parse_query(parts.query)
    q = dict(pairs)
    assert q["X-Amz-Expires"] == "900"
    canonical = sigv4.canonical_request(
        "GET", sigv4.canonical_uri_from_raw(parts.path),
        sigv4.canonical_query([(k, v) for k, v in pairs if k != "X-Amz-Signature"]),
        {"host": [parts.netloc]}, q["X-Amz-SignedHeaders"].split(";"), sigv4.UNSIGNED_PAYLOAD)
    cred = sigv4.Credential.parse(q["X-Amz-Credential"])
    sig = sigv4.signature(sigv4.signing_key(SK, cred.date, cred.region),
                          sigv4.string_to_sign(q["X-Amz-Date"], cred.scope, canonical))
    assert sig == q["X-Amz-Signature"]
    # and our own presigner produces botocore's URL signature for the same inputs
    ours = sigv4.presign_url("GET", url, AK, SK, expires=900, now=NOW)
    assert dict(parse_qsl(urlsplit(ours).query))["X-Amz-Signature"] == q["X-Amz-Signature"]


def test_access_key_with_slash_parses():
    cred = sigv4.Credential.parse("AK/with/slash/20260304/us-east-1/s3/aws4_request")
    assert cred.access_key == "AK/with/slash" and cred.region == "us-east-1"


def test_malformed_authorization_rejected():
    for bad in ["AWS4-HMAC-SHA256 Credential=a/b", "AWS AKID:sig", "AWS4-HMAC-SHA256 Credential=AK/20260304/r/s3/"
                "aws4_request, SignedHeaders=host", "AWS4-HMAC-SHA256 garbage"]:
        with pytest.raises(ValueError):
            sigv4.parse_authorization(bad)


def test_chunk_signature_chain_against_aws_documented_example():
    """The worked STREAMING-AWS4-HMAC-SHA256-PAYLOAD example of the S3 docs (sigv4-streaming)."""
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    key = sigv4.signing_key(secret, "20130524", "us-east-1")
    scope = sigv4.scope("20130524", "us-east-1")
    amz_date = "20130524T000000Z"
    seed = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
    first = sigv4.chunk_signature(key, amz_date, scope, seed, b"a" * 65536)
    assert first == "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"
    second = sigv4.chunk_signature(key, amz_date, scope, first, b"a" * 1024)
    assert second == "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"
    final = sigv4.chunk_signature(key, amz_date, scope, second, b"")
    assert final == "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"


def test_seed_signature_of_aws_streaming_example():
    """The seed (header) signature of the same documented example, through our canonical request."""
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    headers = {
        "host": ["s3.amazonaws.com"], "x-amz-date": ["20130524T000000Z"], "x-amz-storage-class": ["REDUCED_REDUNDANCY"],
        "x-amz-content-sha256": [sigv4.STREAMING_PAYLOAD], "content-encoding": ["aws-chunked"],
        "x-amz-decoded-content-length": ["66560"], "content-length": ["66824"]}
    signed = sorted(headers)
    canonical = sigv4.canonical_request("PUT", "/examplebucket/chunkObject.txt", "", headers, signed,
                                        sigv4.STREAMING_PAYLOAD)
    sig = sigv4.signature(sigv4.signing_key(secret, "20130524", "us-east-1"),
                          sigv4.string_to_sign("20130524T000000Z", sigv4.scope("20130524", "us-east-1"), canonical))
    assert sig == "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"


def test_encode_signed_chunks_round_trip_layout():
    key = sigv4.signing_key(SK, "20260304", "us-east-1")
    body = sigv4.encode_signed_chunks([b"abc", b"de"], key, "20260304T050607Z", sigv4.scope("20260304", "us-east-1"),
                                      "0" * 64)
    lines = body.split(b"\r\n")
    assert lines[0].startswith(b"3;chunk-signature=") and lines[1] == b"abc"
    assert lines[2].startswith(b"2;chunk-signature=") and lines[3] == b"de"
    assert lines[4].startswith(b"0;chunk-signature=") and body.endswith(b"\r\n\r\n")
