"""Property-based tests (hypothesis) of what the gateway parses for bucket policies, browser POST
forms and their policy documents, tags and SigV2 headers: hostile input only ever raises the
typed S3 errors, well-formed input is accepted and means what it says."""
from __future__ import annotations

import asyncio
import base64
import json
from unittest import mock

from aiohttp import streams
from aiohttp.test_utils import make_mocked_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealstore import errors
from services.gateway import config_xml, policy, post_object
from services.gateway.auth import Authenticator, Credentials

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LOOP = asyncio.new_event_loop()
BUCKET = "fuzz-bucket"
AK, SK = "AKIDFUZZ", "fuzz/secret+key="

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20)
statement_keys = st.sampled_from(["Sid", "Effect", "Principal", "NotPrincipal", "Action", "NotAction", "Resource",
                                  "NotResource", "Condition", "Bogus"])
statement_values = st.one_of(
    st.sampled_from(["Allow", "Deny", "*", "s3:*", "s3:PutObject", f"arn:aws:s3:::{BUCKET}/*", "arn:aws:s3:::x"]),
    st.lists(st.sampled_from(["s3:Get*", "s3:PutObject", f"arn:aws:s3:::{BUCKET}", "*"]), max_size=3),
    st.just({"AWS": "*"}), st.just({"Null": {"s3:x-amz-server-side-encryption": "true"}}),
    st.just({"StringLikeIfExists": {"s3:x-amz-server-side-encryption-aws-kms-key-id": ["a*", "b?"]}}),
    st.just({"Bool": {"aws:SecureTransport": "false"}}), st.just({"DateLessThan": {"aws:CurrentTime": "x"}}),
    json_values)
statements = st.dictionaries(statement_keys, statement_values, max_size=9)
documents = st.one_of(
    json_values,
    st.fixed_dictionaries({"Statement": st.one_of(statements, st.lists(statements, max_size=3))},
                          optional={"Version": st.sampled_from(["2012-10-17", "2008-10-17", "bogus"]),
                                    "Id": json_values}))
requests = st.builds(
    lambda action, key, sse, kms, secure: policy.Request(
        action, BUCKET, key, AK,
        {k: v for k, v in {"s3:x-amz-server-side-encryption": sse,
                           "s3:x-amz-server-side-encryption-aws-kms-key-id": kms,
                           "aws:securetransport": secure}.items() if v is not None}),
    st.sampled_from(["s3:PutObject", "s3:GetObject", "s3:ListBucket", "s3:DeleteObject"]),
    st.text(max_size=20), st.sampled_from([None, "AES256", "aws:kms"]), st.sampled_from([None, "k", "bk"]),
    st.sampled_from(["true", "false"]))


@FAST
@given(documents, requests)
def test_policy_parser_and_engine_only_raise_malformed_policy(document, request):
    try:
        parsed = policy.parse(json.dumps(document), BUCKET)
    except errors.MalformedPolicy:
        return
    # A policy that parsed can be evaluated against any request, and only its Deny statements deny.
    hit = policy.denying_statement(parsed, request)
    assert hit is None or hit.deny


@FAST
@given(st.binary(max_size=300))
def test_policy_parser_on_raw_bytes(raw):
    try:
        policy.parse(raw, BUCKET)
    except errors.MalformedPolicy:
        pass


@FAST
@given(requests, st.sampled_from(["s3:*", "s3:Put*", "*"]))
def test_unconditional_deny_denies_what_it_names(request, action):
    document = {"Statement": [{"Effect": "Deny", "Principal": "*", "Action": action,
                               "Resource": [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"]}]}
    parsed = policy.parse(json.dumps(document), BUCKET)
    named = action != "s3:Put*" or request.action.startswith("s3:Put")
    assert (policy.denying_statement(parsed, request) is not None) == named


@FAST
@given(st.one_of(json_values, st.fixed_dictionaries({"expiration": json_values, "conditions": json_values})),
       st.dictionaries(st.sampled_from(["key", "bucket", "acl", "content-type", "x-amz-meta-a", "x-ignore-b"]),
                       st.text(max_size=10), max_size=4))
def test_post_policy_parser_and_conditions_only_raise_typed_errors(document, fields):
    try:
        parsed = post_object.parse_policy(base64.b64encode(json.dumps(document).encode()).decode())
    except errors.InvalidPolicyDocument:
        return
    try:
        post_object.check_conditions(parsed, fields, BUCKET, 0.0)
    except errors.AccessDenied:
        pass


def _form_request(body: bytes, boundary: str):
    payload = streams.StreamReader(mock.Mock(_reading_paused=False), 2 ** 16, loop=LOOP)
    payload.feed_data(body)
    payload.feed_eof()
    return make_mocked_request("POST", f"/{BUCKET}", headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"}, payload=payload)


parts = st.lists(st.tuples(st.sampled_from(["key", "policy", "file", "x-amz-meta-a", "", "KEY"]),
                           st.binary(max_size=40), st.booleans()), max_size=5)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts, st.binary(max_size=60), st.sampled_from(["b0undary", "x"]))
def test_form_reader_only_raises_typed_errors(form_parts, junk, boundary):
    body = bytearray()
    for name, value, with_filename in form_parts:
        filename = '; filename="f.txt"' if with_filename else ""
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"{filename}\r\n\r\n").encode()
        body += value + b"\r\n"
    body += junk + f"--{boundary}--\r\n".encode()

    async def go():
        request = _form_request(bytes(body), boundary)
        try:
            form = await post_object.read_form(request, read_timeout=5)
        except errors.SealstoreError:
            return
        assert all(name == name.lower() for name in form.fields)
        assert "file" not in form.fields
        async for _ in post_object.FormFile(form.file_part, min_size=0, max_size=1 << 20, read_timeout=5).pieces():
            pass

    LOOP.run_until_complete(go())


@FAST
@given(st.text(max_size=200))
def test_tagging_header_only_raises_typed_errors(value):
    try:
        tags = config_xml.parse_tagging_header(value)
    except (errors.InvalidTag, errors.InvalidArgument, errors.BadRequest):
        return
    assert len(tags) <= config_xml.MAX_OBJECT_TAGS


@FAST
@given(st.binary(max_size=300))
def test_tagging_xml_only_raises_typed_errors(body):
    try:
        config_xml.parse_tagging(body)
    except (errors.MalformedXML, errors.InvalidTag, errors.BadRequest):
        pass


AUTH = Authenticator(Credentials(access_key=AK, secret_key=SK), clock=lambda: 1_790_000_000.0)


@FAST
@given(st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=80),
       st.sampled_from(["", "Thu, 01 Jan 2026 00:00:00 GMT", "garbage"]),
       st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60))
def test_sigv2_header_and_query_only_raise_typed_errors(authorization, date, query):
    headers = [("Authorization", "AWS " + authorization)] + ([("Date", date)] if date else [])
    for attempt in (lambda: AUTH.authenticate("GET", "/b/k", "", headers),
                    lambda: AUTH.authenticate("GET", "/b/k", "AWSAccessKeyId=" + query, [])):
        try:
            attempt()
        except errors.SealstoreError:
            pass
