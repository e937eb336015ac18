"""SigV2 (header and presigned query) in the gateway's Authenticator, against botocore's own signers."""
from __future__ import annotations

import time
from urllib.parse import quote, urlsplit

import boto3
import pytest
from botocore.auth import HmacV1Auth, HmacV1QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials as BotoCredentials

from sealstore import errors
from services.gateway.auth import Authenticator, Credentials, v2_resources

AK, SK = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
NOW = 1_790_000_000.0
KEYS = ["plain.txt", "dir/sub/file", "with space.bin", "ünïcödé/ファイル", "a+b=c&d", "tilde~star*",
        "percent%20literal", "x" * 300]
QUERIES = ["", "?acl", "?tagging", "?uploads", "?versionId=null", "?uploadId=abc&partNumber=3",
           "?list-type=2&prefix=a%2Fb&delimiter=%2F", "?response-content-type=text%2Fplain&x-id=GetObject"]


def _authenticator(clock=NOW) -> Authenticator:
    return Authenticator(Credentials(access_key=AK, secret_key=SK), clock=lambda: clock)


def _on_the_wire(request: AWSRequest):
    parts = urlsplit(request.url)
    headers = [("Host", parts.netloc)] + list(request.headers.items())
    return parts.path, parts.query, headers


def _header_signed(method, url, headers=None, body=b"", secret=SK, auth_path=None):
    request = AWSRequest(method=method, url=url, headers=dict(headers or {}), data=body)
    request.auth_path = auth_path
    signer = HmacV1Auth(BotoCredentials(AK, secret))
    signer._get_date = lambda: time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(NOW))
    signer.add_auth(request)
    return request


def _query_signed(method, url, headers=None, expires=3600, secret=SK):
    request = AWSRequest(method=method, url=url, headers=dict(headers or {}))
    request.auth_path = None
    signer = HmacV1QueryAuth(BotoCredentials(AK, secret), expires=expires)
    signer._get_date = lambda: str(int(NOW + expires))
    signer.add_auth(request)
    return request


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("query", QUERIES)
def test_header_signature_from_botocore_verifies(key, query):
    url = f"http://127.0.0.1:9000/bucket/{quote(key, safe='/~')}{query}"
    request = _header_signed("PUT", url, {"Content-Type": "text/plain", "x-amz-meta-Color": " blue ",
                                          "X-Amz-Server-Side-Encryption": "aws:kms"})
    path, raw_query, headers = _on_the_wire(request)
    identity = _authenticator().authenticate("PUT", path, raw_query, headers)
    assert identity.access_key == AK and not identity.presigned and identity.chain is None


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("query", QUERIES)
def test_presigned_query_from_botocore_verifies(key, query):
    url = f"http://127.0.0.1:9000/bucket/{quote(key, safe='/~')}{query}"
    request = _query_signed("GET", url)
    path, raw_query, _ = _on_the_wire(request)
    identity = _authenticator().authenticate("GET", path, raw_query, [("Host", "127.0.0.1:9000")])
    assert identity.presigned and identity.access_key == AK


def test_boto3_generate_presigned_url_defaults_to_v2_and_verifies():
    client = boto3.client("s3", endpoint_url="http://127.0.0.1:9000", region_name="us-east-1",
                          aws_access_key_id=AK, aws_secret_access_key=SK)
    url = client.generate_presigned_url("put_object", ExpiresIn=600, Params={
        "Bucket": "b", "Key": "dir/k y", "ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "finance-key"})
    parts = urlsplit(url)
    assert "AWSAccessKeyId=" in parts.query and "X-Amz-Signature" not in parts.query
    identity = _authenticator(clock=time.time()).authenticate("PUT", parts.path, parts.query,
                                                              [("Host", parts.netloc)])
    # The SSE parameters the URL signed are served as headers.
    assert dict(identity.query_headers) == {"x-amz-server-side-encryption": "aws:kms",
                                            "x-amz-server-side-encryption-aws-kms-key-id": "finance-key"}


def test_virtual_host_request_signs_the_bucket_in_the_resource():
    url = "http://bucket.localhost:9000/some/key"
    request = AWSRequest(method="GET", url=url, headers={})
    request.auth_path = "/bucket/some/key"
    signer = HmacV1Auth(BotoCredentials(AK, SK))
    signer._get_date = lambda: time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(NOW))
    signer.add_auth(request)
    path, raw_query, headers = _on_the_wire(request)
    auth = _authenticator()
    assert auth.authenticate("GET", path, raw_query, headers, vhost_bucket="bucket").access_key == AK
    with pytest.raises(errors.SignatureDoesNotMatch):
        auth.authenticate("GET", path, raw_query, headers, vhost_bucket="other")


def test_bucket_requests_as_botocore_signs_them():
    """botocore signs a bucket-level request's resource as `/bucket/`, path-style too."""
    request = _header_signed("GET", "http://127.0.0.1:9000/bucket?list-type=2&prefix=hdr%2F", auth_path="/bucket/")
    path, query, headers = _on_the_wire(request)
    assert path == "/bucket"
    assert _authenticator().authenticate("GET", path, query, headers).access_key == AK


def test_wrong_secret_tampered_header_or_path_fail():
    url = "http://127.0.0.1:9000/bucket/key"
    auth = _authenticator()
    bad = _header_signed("GET", url, secret="not the secret")
    with pytest.raises(errors.SignatureDoesNotMatch):
        auth.authenticate("GET", *_on_the_wire(bad))
    good = _header_signed("PUT", url, {"x-amz-server-side-encryption-aws-kms-key-id": "k1"})
    path, query, headers = _on_the_wire(good)
    tampered = [(n, "k2" if n.lower().endswith("key-id") else v) for n, v in headers]
    with pytest.raises(errors.SignatureDoesNotMatch):
        auth.authenticate("PUT", path, query, tampered)
    added = headers + [("x-amz-server-side-encryption", "AES256")]
    with pytest.raises(errors.SignatureDoesNotMatch):
        auth.authenticate("PUT", path, query, added)
    with pytest.raises(errors.SignatureDoesNotMatch):
        auth.authenticate("PUT", "/bucket/other", query, headers)
    with pytest.raises(errors.SignatureDoesNotMatch):
        auth.authenticate("DELETE", path, query, headers)
    # A signed sub-resource cannot be added or removed.
    with pytest.raises(errors.SignatureDoesNotMatch):
        auth.authenticate("PUT", path, "acl", headers)


def test_presigned_query_tampering_and_expiry():
    url = "http://127.0.0.1:9000/bucket/key"
    request = _query_signed("GET", url, expires=60)
    path, query, _ = _on_the_wire(request)
    host = [("Host", "127.0.0.1:9000")]
    with pytest.raises(errors.ExpiredToken):
        _authenticator(clock=NOW + 61).authenticate("GET", path, query, host)
    assert _authenticator(clock=NOW + 59).authenticate("GET", path, query, host).presigned
    with pytest.raises(errors.SignatureDoesNotMatch):
        _authenticator().authenticate("GET", path, query.replace("Expires=", "Expires=9"), host)
    with pytest.raises(errors.SignatureDoesNotMatch):
        _authenticator().authenticate("GET", path, query + "&x-amz-server-side-encryption=AES256", host)
    with pytest.raises(errors.SignatureDoesNotMatch):
        _authenticator().authenticate("PUT", path, query, host)
    # A `+` of the signature sent unencoded still verifies (it reached us as a space).
    raw = query.replace("%2B", "+")
    assert _authenticator().authenticate("GET", path, raw, host).presigned


def test_malformed_v2_input_gets_aws_codes():
    auth = _authenticator()
    date = [("Date", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(NOW)))]
    for header in ("AWS ", "AWS AKIDEXAMPLE", "AWS :sig", "AWS AKIDEXAMPLE:"):
        with pytest.raises(errors.InvalidArgument):
            auth.authenticate("GET", "/b/k", "", [("Authorization", header)] + date)
    with pytest.raises(errors.InvalidAccessKeyId):
        auth.authenticate("GET", "/b/k", "", [("Authorization", "AWS nobody:c2ln")] + date)
    with pytest.raises(errors.AccessDenied):  # no date at all
        auth.authenticate("GET", "/b/k", "", [("Authorization", f"AWS {AK}:c2ln")])
    with pytest.raises(errors.AccessDenied):
        auth.authenticate("GET", "/b/k", "", [("Authorization", f"AWS {AK}:c2ln"), ("Date", "yesterday")])
    skewed = [("Date", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(NOW - 3600)))]
    with pytest.raises(errors.RequestTimeTooSkewed):
        auth.authenticate("GET", "/b/k", "", [("Authorization", f"AWS {AK}:c2ln")] + skewed)
    for query in ("AWSAccessKeyId=AKIDEXAMPLE&Signature=x", "Signature=x&Expires=1",
                  f"AWSAccessKeyId={AK}&Signature=x&Expires=soon"):
        with pytest.raises(errors.AccessDenied):
            auth.authenticate("GET", "/b/k", query, [])
    with pytest.raises(errors.InvalidArgument):  # two mechanisms at once
        auth.authenticate("GET", "/b/k", f"AWSAccessKeyId={AK}&Signature=x&Expires=1",
                          [("Authorization", f"AWS {AK}:c2ln")] + date)


def test_x_amz_date_replaces_the_date_line():
    """S3: with x-amz-date present, the Date line of the string to sign is empty."""
    from services.gateway.auth import v2_amz_headers, v2_signature, v2_string_to_sign
    stamp = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(NOW))
    hmap = {"x-amz-date": [stamp]}
    text = v2_string_to_sign("GET", "", "", "", v2_amz_headers(hmap, {}), "/b/k")
    assert text == f"GET\n\n\n\nx-amz-date:{stamp}\n/b/k"
    headers = [("x-amz-date", stamp), ("Date", "Thu, 01 Jan 1970 00:00:00 GMT"),
               ("Authorization", f"AWS {AK}:{v2_signature(SK, text)}")]
    assert _authenticator().authenticate("GET", "/b/k", "", headers).access_key == AK


def test_canonical_resource_keeps_only_signed_subresources_sorted():
    assert v2_resources("/b/k", "x-id=GetObject&versionId=null&acl") == ["/b/k?acl&versionId=null"]
    assert v2_resources("/b", "uploads=&prefix=p") == ["/b?uploads=", "/b?uploads", "/b/?uploads=", "/b/?uploads"]
    assert v2_resources("/k", "", "bucket") == ["/bucket/k"]


def test_failed_v2_authentications_are_throttled_like_sigv4():
    """The gateway's throttle counts SigV2 failures: after the burst, SlowDown before any signature work."""
    import asyncio

    from aiohttp.test_utils import make_mocked_request

    from services.gateway.limits import Limits
    from services.gateway.s3api import S3Api

    def no_backend():
        raise AssertionError("no backend needed")

    api = S3Api(_authenticator(clock=time.time()), no_backend, limits=Limits(auth_fail_burst=3, auth_fail_rate=0.001))
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
    codes = []
    for _ in range(5):
        request = make_mocked_request("GET", "/b/k", headers={"Authorization": f"AWS {AK}:c2ln", "Date": date})
        try:
            asyncio.run(api.handle(request))
        except errors.SealstoreError as e:
            codes.append(e.code)
    assert codes[:3] == ["SignatureDoesNotMatch"] * 3 and codes[3:] == ["SlowDown", "SlowDown"]
