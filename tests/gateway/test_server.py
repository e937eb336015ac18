"""The gateway's HTTP layer over real loopback HTTP: authentication and error rendering.

Every request here is refused before any backend is needed; the backend factory fails loudly
if the gateway ever reaches for one, which proves the refusal happens first.
"""
from __future__ import annotations

import asyncio
import datetime
import hashlib
import xml.etree.ElementTree as ET

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from sealstore import sigv4
from services.gateway.auth import Authenticator, Credentials
from services.gateway.s3api import S3Api
from services.gateway.server import build_app

AK, SK = "gateway-test-ak", "gateway test secret/+="


def _no_backend():
    raise AssertionError("the gateway reached for a backend before refusing the request")


async def _with_server(fn):
    api = S3Api(Authenticator(Credentials(access_key=AK, secret_key=SK)), _no_backend)
    server = TestServer(build_app(api), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            return await fn(session, f"http://127.0.0.1:{server.port}")
    finally:
        await server.close()


def run(fn):
    return asyncio.run(_with_server(fn))


def _error(body: bytes) -> dict:
    root = ET.fromstring(body)
    assert root.tag == "Error"
    return {child.tag: child.text for child in root}


async def _send(session, base, method, path, *, body=b"", headers=None, payload=None, secret=SK, now=None):
    url = base + path
    payload = payload or hashlib.sha256(body).hexdigest()
    signed = sigv4.sign_request(method, url, dict(headers or {}), payload, AK, secret, now=now)
    signed.pop("host")
    async with session.request(method, url, data=body, headers=signed) as r:
        return r.status, dict(r.headers), await r.read()


def test_anonymous_request_denied_with_s3_error_xml():
    async def go(session, base):
        async with session.get(base + "/bucket/key") as r:
            return r.status, r.headers, await r.read()
    status, headers, body = run(go)
    err = _error(body)
    assert status == 403 and err["Code"] == "AccessDenied"
    assert err["Resource"] == "/bucket/key" and err["RequestId"] == headers["x-amz-request-id"]
    assert headers["Content-Type"].startswith("application/xml")


def test_wrong_secret_is_signature_does_not_match():
    status, _, body = run(lambda s, b: _send(s, b, "GET", "/", secret="not the secret"))
    assert status == 403 and _error(body)["Code"] == "SignatureDoesNotMatch"


def test_unknown_access_key():
    async def go(session, base):
        signed = sigv4.sign_request("GET", base + "/", {}, sigv4.EMPTY_SHA256, "someone-else", SK)
        signed.pop("host")
        async with session.get(base + "/", headers=signed) as r:
            return r.status, await r.read()
    status, body = run(go)
    assert status == 403 and _error(body)["Code"] == "InvalidAccessKeyId"


def test_clock_skew():
    old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=16)
    status, _, body = run(lambda s, b: _send(s, b, "GET", "/", now=old))
    assert status == 403 and _error(body)["Code"] == "RequestTimeTooSkewed"


def test_head_error_has_no_body():
    async def go(session, base):
        async with session.head(base + "/bucket/key") as r:
            return r.status, await r.read()
    status, body = run(go)
    assert status == 403 and body == b""


def test_malformed_authorization_header():
    async def go(session, base):
        async with session.get(base + "/", headers={"Authorization": "AWS4-HMAC-SHA256 Credential=x",
                                                    "x-amz-date": sigv4.format_amz_date(
                                                        datetime.datetime.now(datetime.timezone.utc))}) as r:
            return r.status, await r.read()
    status, body = run(go)
    assert status == 400 and _error(body)["Code"] == "AuthorizationHeaderMalformed"


def test_presigned_url_expired_and_tampered():
    async def go(session, base):
        past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=10)
        expired = sigv4.presign_url("GET", base + "/b/k", AK, SK, expires=60, now=past)
        async with session.get(expired) as r:
            first = (r.status, await r.read())
        fresh = sigv4.presign_url("GET", base + "/b/k", AK, SK, expires=60)
        async with session.get(fresh.replace("/b/k", "/b/other")) as r:
            second = (r.status, await r.read())
        too_long = sigv4.presign_url("GET", base + "/b/k", AK, SK, expires=700000)
        async with session.get(too_long) as r:
            third = (r.status, await r.read())
        return first, second, third
    (s1, b1), (s2, b2), (s3, b3) = run(go)
    assert s1 == 403 and _error(b1)["Code"] == "AccessDenied" and "expired" in _error(b1)["Message"]
    assert s2 == 403 and _error(b2)["Code"] == "SignatureDoesNotMatch"
    assert s3 == 400 and _error(b3)["Code"] == "AuthorizationQueryParametersError"


@pytest.mark.parametrize("headers,code,status", [
    # SSE-C over plain HTTP, whatever else the request says (the key crossed the network in clear).
    ({"x-amz-server-side-encryption-customer-algorithm": "AES256"}, "InvalidRequest", 400),
    ({"x-amz-server-side-encryption-customer-key": "a2V5", "x-forwarded-proto": "https"}, "InvalidRequest", 400),
    ({"x-amz-server-side-encryption": "AES256", "x-amz-server-side-encryption-aws-kms-key-id": "k"},
     "InvalidArgument", 400),
    ({"x-amz-server-side-encryption-aws-kms-key-id": "k"}, "InvalidArgument", 400),
    ({"x-amz-server-side-encryption": "rot13"}, "InvalidArgument", 400),
    ({"x-amz-server-side-encryption": "aws:kms", "x-amz-server-side-encryption-aws-kms-key-id": "arn:aws:kms:"}, "InvalidArgument", 400),
    ({"x-amz-server-side-encryption": "aws:kms", "x-amz-server-side-encryption-aws-kms-key-id": "k",
      "x-amz-server-side-encryption-context": "!!notbase64"}, "InvalidArgument", 400),
    ({"Content-MD5": "short"}, "InvalidDigest", 400),
])
def test_put_header_errors_before_any_backend_call(headers, code, status):
    got_status, _, body = run(lambda s, b: _send(s, b, "PUT", "/bucket/key", body=b"data", headers=headers))
    assert (got_status, _error(body)["Code"]) == (status, code)


def test_unsupported_subresource_is_not_implemented():
    status, _, body = run(lambda s, b: _send(s, b, "GET", "/bucket?website"))
    assert status == 501 and _error(body)["Code"] == "NotImplemented"


def test_invalid_bucket_name():
    status, _, body = run(lambda s, b: _send(s, b, "PUT", "/Bad_Bucket"))
    assert status == 400 and _error(body)["Code"] == "InvalidBucketName"


def test_key_too_long():
    status, _, body = run(lambda s, b: _send(s, b, "GET", "/bucket/" + "k" * 1025))
    assert status == 400 and _error(body)["Code"] == "KeyTooLongError"


def test_unexpected_exception_is_internal_error_xml():
    async def go(session, base):
        def broken():
            raise RuntimeError("boom")
        api = S3Api(Authenticator(Credentials(access_key=AK, secret_key=SK)), broken)
        server = TestServer(build_app(api), host="127.0.0.1")
        await server.start_server()
        try:
            return await _send(session, f"http://127.0.0.1:{server.port}", "GET", "/")
        finally:
            await server.close()
    status, _, body = run(go)
    assert status == 500 and _error(body)["Code"] == "InternalError" and b"boom" not in body
