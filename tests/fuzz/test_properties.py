"""Property-based tests (hypothesis) over everything the gateway parses from a client: SigV4
headers and presigned queries, aws-chunked bodies, XML bodies, ranges, object names and query
strings. Hostile input may only ever raise the typed S3 errors; well-formed input round-trips.
Kept to a few seconds: moderate max_examples, no deadline (a loaded CI machine is slow)."""
from __future__ import annotations

import asyncio
import datetime
import hashlib
from urllib.parse import quote, urlencode

from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealstore import errors, sigv4
from services.gateway import s3xml
from services.gateway.auth import Authenticator, Credentials
from services.gateway.body import MAX_CHUNK_SIZE, Body, ChunkChain, PayloadChecks
from services.gateway.s3api import INT64_MAX, parse_range, validate_key

NOW = datetime.datetime(2026, 3, 4, 5, 6, 7, tzinfo=datetime.timezone.utc)
AK, SK = "AKIDFUZZ", "fuzz/secret+key="
HOST = "127.0.0.1:9000"
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
AUTH = Authenticator(Credentials(access_key=AK, secret_key=SK), clock=lambda: NOW.timestamp())

header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=300)
key_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60)
query_pairs = st.lists(st.tuples(st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=12),
                                 st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=12)),
                       max_size=4)


def _only_typed_errors(fn, *args):
    try:
        return fn(*args)
    except errors.SealstoreError:
        return None


# -- SigV4 --------------------------------------------------------------------------------------


@FAST
@given(header_text)
def test_parse_authorization_raises_only_value_error(text):
    try:
        sigv4.parse_authorization(text)
    except ValueError:
        pass


@FAST
@given(authorization=header_text, amz_date=header_text, sha=header_text, path=st.text(max_size=80),
       query=st.text(max_size=120))
def test_authenticate_hostile_headers_raises_only_typed_errors(authorization, amz_date, sha, path, query):
    headers = [("host", HOST), ("authorization", "AWS4-HMAC-SHA256 " + authorization),
               ("x-amz-date", amz_date), ("x-amz-content-sha256", sha)]
    _only_typed_errors(AUTH.authenticate, "GET", "/" + path, query, headers)


@FAST
@given(st.lists(st.sampled_from(["X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Credential=", "X-Amz-Signature=",
                                 "X-Amz-Date=", "X-Amz-Expires=", "X-Amz-SignedHeaders=", "X-Amz-Content-Sha256="]),
                min_size=1, max_size=8), st.lists(header_text, min_size=8, max_size=8))
def test_authenticate_hostile_presigned_query_raises_only_typed_errors(names, values):
    query = "&".join(name + quote(value, safe="") for name, value in zip(names, values))
    _only_typed_errors(AUTH.authenticate, "GET", "/b/k", query, [("host", HOST)])


def _frozen_botocore(sign):
    import botocore.auth as a
    original = a.get_current_datetime
    a.get_current_datetime = lambda *args, **kw: NOW.replace(tzinfo=None)
    try:
        return sign()
    finally:
        a.get_current_datetime = original


@FAST
@given(key=key_text, pairs=query_pairs, meta=header_text)
def test_botocore_header_signature_verifies(key, pairs, meta):
    url = f"http://{HOST}/bucket/{quote(key, safe='/~')}" + ("?" + urlencode(pairs, quote_via=quote) if pairs else "")
    body = b"payload"
    request = AWSRequest(method="PUT", url=url, data=body, headers={"x-amz-meta-note": meta})
    request.headers["x-amz-content-sha256"] = hashlib.sha256(body).hexdigest()
    _frozen_botocore(lambda: S3SigV4Auth(BotoCredentials(AK, SK), "s3", "us-east-1").add_auth(request))
    path, _, raw_query = url[len("http://" + HOST):].partition("?")
    headers = [("host", HOST)] + list(request.headers.items())
    identity = AUTH.authenticate("PUT", path, raw_query, headers)
    assert identity.access_key == AK and identity.payload_hash == hashlib.sha256(body).hexdigest()
    tampered = [(k, v + "x") if k.lower() == "x-amz-meta-note" else (k, v) for k, v in headers]
    try:
        AUTH.authenticate("PUT", path, raw_query, tampered)
        raise AssertionError("a changed signed header was accepted")
    except errors.SignatureDoesNotMatch:
        pass


@FAST
@given(key=key_text)
def test_botocore_presigned_url_verifies_and_refuses_added_amz_headers(key):
    url = f"http://{HOST}/bucket/{quote(key, safe='/~')}"
    request = AWSRequest(method="GET", url=url)
    _frozen_botocore(lambda: S3SigV4QueryAuth(BotoCredentials(AK, SK), "s3", "us-east-1", expires=600).add_auth(request))
    path, _, raw_query = request.url[len("http://" + HOST):].partition("?")
    assert AUTH.authenticate("GET", path, raw_query, [("host", HOST)]).presigned
    try:
        AUTH.authenticate("GET", path, raw_query, [("host", HOST), ("x-amz-server-side-encryption", "aws:kms")])
        raise AssertionError("an unsigned x-amz-* header was accepted on a presigned URL")
    except errors.AccessDenied:
        pass


# -- aws-chunked --------------------------------------------------------------------------------


def _decode(raw: bytes, length: int, chain: ChunkChain | None, timeout: float = 1.0) -> bytes:
    async def go():
        reader = asyncio.StreamReader(limit=1 << 16)
        reader.feed_data(raw)
        reader.feed_eof()
        body = Body(reader, length=length, checks=PayloadChecks(), chunked=True, chain=chain, read_timeout=timeout)
        out = bytearray()
        async for piece in body.pieces():
            out += piece
        body.finish()
        return bytes(out)
    return asyncio.run(asyncio.wait_for(go(), 5))


def _chain():
    key = sigv4.signing_key(SK, "20260304", "us-east-1")
    return ChunkChain(key, "20260304T050607Z", sigv4.scope("20260304", "us-east-1"), "0" * 64)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=6))
def test_signed_chunks_round_trip(chunks):
    chain = _chain()
    raw = sigv4.encode_signed_chunks(chunks, chain.key, chain.amz_date, chain.scope, chain.previous)
    data = b"".join(chunks)
    assert _decode(raw, len(data), _chain()) == data


@settings(max_examples=120, deadline=None)
@given(chunks=st.lists(st.binary(min_size=1, max_size=200), max_size=4), cut=st.integers(0, 10_000),
       splice=st.binary(max_size=30), signed=st.booleans(), lie=st.integers(-3, 3))
def test_mangled_chunked_bodies_raise_only_typed_errors(chunks, cut, splice, signed, lie):
    chain = _chain()
    raw = sigv4.encode_signed_chunks(chunks, chain.key, chain.amz_date, chain.scope, chain.previous)
    at = cut % (len(raw) + 1)
    mangled = raw[:at] + splice + raw[at + len(splice) // 2:]
    length = max(0, sum(map(len, chunks)) + lie)
    try:
        _decode(mangled, length, _chain() if signed else None)
    except errors.SealstoreError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.text(st.characters(min_codepoint=0, max_codepoint=0x7FF), max_size=24))
def test_any_chunk_size_line_is_refused_or_exact(size_line):
    raw = size_line.encode("utf-8") + b"\r\n" + b"x" * 10 + b"\r\n0\r\n\r\n"
    try:
        out = _decode(raw, 10, None)
    except errors.SealstoreError as e:
        assert e.http_status == 400
        return
    assert out == b"x" * 10 and int(size_line, 16) == 10 and len(size_line) <= 16


def test_chunk_size_minus_one_and_oversize_are_refused():
    for line in (b"-1", b"-0", b"+a", b"0x10", b" a", b"1_0", b"zz", b"%x" % (MAX_CHUNK_SIZE + 1), b"f" * 17):
        try:
            _decode(line + b"\r\n" + b"x" * 10 + b"\r\n0\r\n\r\n", 10, None)
            raise AssertionError(f"chunk size {line!r} was accepted")
        except errors.SealstoreError as e:
            assert e.http_status == 400, line


def test_chunk_framing_errors_are_refused():
    chain = _chain()
    good = sigv4.encode_signed_chunks([b"hello"], chain.key, chain.amz_date, chain.scope, chain.previous)
    cases = {
        "missing signature": good.replace(b";chunk-signature=", b";", 1),
        "no extension": good.split(b";", 1)[0] + good[good.index(b"\r\n"):],
        "missing CRLF after data": good.replace(b"hello\r\n", b"hello", 1),
        "trailing garbage": good + b"GARBAGE",
        "ends early": good[:-5],
        "longer than declared": good,
    }
    for name, raw in cases.items():
        try:
            _decode(raw, 4 if name == "longer than declared" else 5, _chain())
            raise AssertionError(f"{name} was accepted")
        except errors.SealstoreError as e:
            assert e.http_status in (400, 403), name


# -- XML, ranges, names, queries ----------------------------------------------------------------


@FAST
@given(st.binary(max_size=400) | st.text(max_size=200).map(lambda t: ("<Delete>" + t + "</Delete>").encode()))
def test_xml_parsers_raise_only_typed_errors(body):
    for parse in (s3xml.parse_delete_objects, s3xml.parse_bucket_encryption, s3xml.parse_create_bucket):
        _only_typed_errors(parse, body)


xml_key = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xD7FF, blacklist_characters="\r"), min_size=1,
                  max_size=40)


@FAST
@given(st.lists(xml_key, min_size=1, max_size=20), st.booleans())
def test_delete_objects_round_trip(keys, quiet):
    from xml.sax.saxutils import escape
    body = ("<Delete>" + ("<Quiet>true</Quiet>" if quiet else "") +
            "".join(f"<Object><Key>{escape(k)}</Key></Object>" for k in keys) + "</Delete>").encode()
    assert s3xml.parse_delete_objects(body) == (keys, quiet)


def test_xml_with_a_dtd_is_refused():
    bomb = (b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
            b"<Delete><Object><Key>&b;</Key></Object></Delete>")
    external = b'<?xml version="1.0"?><!DOCTYPE d SYSTEM "file:///etc/passwd"><Delete/>'
    for body in (bomb, external):
        try:
            s3xml.parse_delete_objects(body)
            raise AssertionError("a DTD was accepted")
        except errors.MalformedXML:
            pass


@FAST
@given(st.text(max_size=60))
def test_parse_range_never_raises(value):
    r = parse_range(value)
    if r is not None:
        assert 0 <= r.first <= INT64_MAX and -1 <= r.last <= INT64_MAX and 0 <= r.suffix_length <= INT64_MAX


@FAST
@given(st.integers(0, 1 << 80), st.integers(0, 1 << 80) | st.none())
def test_parse_range_round_trip(first, last):
    value = f"bytes={first}-{'' if last is None else last}"
    r = parse_range(value)
    if last is not None and last < first:
        assert r is None
        return
    assert r.first == min(first, INT64_MAX)
    assert r.last == (-1 if last is None else min(last, INT64_MAX))


@FAST
@given(st.text(max_size=1100))
def test_object_names_and_queries_raise_only_typed_errors(text):
    _only_typed_errors(validate_key, text)
    pairs = sigv4.parse_query(text)
    sigv4.canonical_query(pairs)
    sigv4.canonical_uri_from_raw("/" + text)
