"""The S3 surface through boto3 and raw signed requests: buckets, objects, listings, errors."""
from __future__ import annotations

import hashlib
import os
import urllib.request
import urllib.error
from xml.etree import ElementTree

import boto3
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.cluster.harness import error_code, unique


def signed_request(cluster, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    """A raw SigV4-signed request (botocore's signer), for bodies boto3 would not send."""
    url = cluster.endpoint + path
    request = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    request.headers["x-amz-content-sha256"] = hashlib.sha256(body).hexdigest()
    S3SigV4Auth(Credentials(cluster.access_key, cluster.secret_key), "s3", "us-east-1").add_auth(request)
    prepared = urllib.request.Request(url, data=body or None, method=method, headers=dict(request.headers.items()))
    try:
        with urllib.request.urlopen(prepared, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_bucket_lifecycle(s3):
    bucket = unique("life")
    s3.create_bucket(Bucket=bucket)
    assert bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    s3.head_bucket(Bucket=bucket)
    with pytest.raises(ClientError) as exc:
        s3.create_bucket(Bucket=bucket)
    assert error_code(exc.value) == "BucketAlreadyOwnedByYou"
    s3.put_object(Bucket=bucket, Key="k", Body=b"v")
    with pytest.raises(ClientError) as exc:
        s3.delete_bucket(Bucket=bucket)
    assert error_code(exc.value) == "BucketNotEmpty"
    s3.delete_object(Bucket=bucket, Key="k")
    s3.delete_bucket(Bucket=bucket)
    with pytest.raises(ClientError) as exc:
        s3.head_bucket(Bucket=bucket)
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as exc:
        s3.create_bucket(Bucket="Bad_Name")
    assert error_code(exc.value) == "InvalidBucketName"


def test_missing_bucket_and_key(s3):
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=unique("nope"), Key="k", Body=b"v")
    assert error_code(exc.value) == "NoSuchBucket"
    bucket = unique("missing")
    s3.create_bucket(Bucket=bucket)
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="absent")
    assert error_code(exc.value) == "NoSuchKey"
    s3.delete_object(Bucket=bucket, Key="absent")  # S3 answers 204 for a missing key


def test_plain_objects_and_listing(s3):
    bucket = unique("list")
    s3.create_bucket(Bucket=bucket)
    names = ["a.txt", "dir/b.txt", "dir/c.txt", "dir/sub/d.txt", "e e/ü.txt", "z"]
    for name in names:
        s3.put_object(Bucket=bucket, Key=name, Body=name.encode(), ContentType="text/plain",
                      Metadata={"origin": "test"})
    got = s3.get_object(Bucket=bucket, Key="e e/ü.txt")
    assert got["Body"].read() == "e e/ü.txt".encode()
    assert got["ContentType"] == "text/plain" and got["Metadata"] == {"origin": "test"}
    assert got["ETag"].strip('"') == hashlib.md5("e e/ü.txt".encode()).hexdigest()
    everything = s3.list_objects_v2(Bucket=bucket)
    assert [o["Key"] for o in everything["Contents"]] == sorted(names)
    top = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [o["Key"] for o in top["Contents"]] == ["a.txt", "z"]
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["dir/", "e e/"]
    sub = s3.list_objects_v2(Bucket=bucket, Prefix="dir/", Delimiter="/")
    assert [o["Key"] for o in sub["Contents"]] == ["dir/b.txt", "dir/c.txt"]
    assert [p["Prefix"] for p in sub["CommonPrefixes"]] == ["dir/sub/"]
    pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, PaginationConfig={"PageSize": 2}))
    assert len(pages) == 3
    assert [o["Key"] for p in pages for o in p["Contents"]] == sorted(names)
    # Overwrite replaces; delete removes.
    s3.put_object(Bucket=bucket, Key="z", Body=b"new")
    assert s3.get_object(Bucket=bucket, Key="z")["Body"].read() == b"new"
    s3.delete_object(Bucket=bucket, Key="z")
    assert "z" not in [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]


def test_empty_object(s3):
    bucket = unique("empty")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="nothing", Body=b"")
    assert s3.get_object(Bucket=bucket, Key="nothing")["Body"].read() == b""
    assert s3.head_object(Bucket=bucket, Key="nothing")["ContentLength"] == 0


def test_bad_signature_is_refused_and_stores_nothing(cluster, s3):
    bucket = unique("sig")
    s3.create_bucket(Bucket=bucket)
    forger = boto3.client("s3", endpoint_url=cluster.endpoint, region_name="us-east-1",
                          aws_access_key_id=cluster.access_key, aws_secret_access_key="wrong-secret",
                          config=Config(signature_version="s3v4", retries={"max_attempts": 1}))
    with pytest.raises(ClientError) as exc:
        forger.put_object(Bucket=bucket, Key="forged", Body=b"evil")
    assert error_code(exc.value) == "SignatureDoesNotMatch"
    stranger = boto3.client("s3", endpoint_url=cluster.endpoint, region_name="us-east-1",
                            aws_access_key_id="nobody", aws_secret_access_key="x",
                            config=Config(signature_version="s3v4", retries={"max_attempts": 1}))
    with pytest.raises(ClientError) as exc:
        stranger.list_buckets()
    assert error_code(exc.value) == "InvalidAccessKeyId"
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    # Anonymous requests are denied.
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(f"{cluster.endpoint}/{bucket}", timeout=10)
    assert http.value.code == 403
    assert ElementTree.fromstring(http.value.read()).findtext("Code") == "AccessDenied"


def test_payload_hash_mismatch_stores_nothing(cluster, s3):
    bucket = unique("hash")
    s3.create_bucket(Bucket=bucket)
    signed_body, sent_body = b"the real body", b"the fake body"  # same length, other bytes
    url_path = f"/{bucket}/tampered"
    request = AWSRequest(method="PUT", url=cluster.endpoint + url_path, data=signed_body)
    S3SigV4Auth(Credentials(cluster.access_key, cluster.secret_key), "s3", "us-east-1").add_auth(request)
    assert request.headers["x-amz-content-sha256"] == hashlib.sha256(signed_body).hexdigest()
    prepared = urllib.request.Request(cluster.endpoint + url_path, data=sent_body, method="PUT",
                                      headers=dict(request.headers.items()))
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(prepared, timeout=10)
    assert http.value.code == 400
    assert ElementTree.fromstring(http.value.read()).findtext("Code") == "XAmzContentSHA256Mismatch"
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_malformed_encryption_xml(cluster, s3):
    bucket, key = unique("xml"), unique("xml-key")
    cluster.cli("key", "create", key)
    s3.create_bucket(Bucket=bucket)
    cluster.cli("encrypt", "set", "sse-kms", key, bucket)
    for body in (b"<not-xml", b"<ServerSideEncryptionConfiguration><Rule></Rule></ServerSideEncryptionConfiguration>",
                 b"<ServerSideEncryptionConfiguration><Rule><ApplyServerSideEncryptionByDefault>"
                 b"<SSEAlgorithm>rot13</SSEAlgorithm></ApplyServerSideEncryptionByDefault></Rule>"
                 b"</ServerSideEncryptionConfiguration>"):
        status, reply = signed_request(cluster, "PUT", f"/{bucket}?encryption=", body,
                                       {"Content-Type": "application/xml"})
        assert status == 400, reply
        assert ElementTree.fromstring(reply).findtext("Code") in ("MalformedXML", "InvalidArgument")
    # The earlier configuration is untouched.
    rule = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["KMSMasterKeyID"] == key
    cluster.cli("encrypt", "clear", bucket)
    with pytest.raises(ClientError) as exc:
        s3.get_bucket_encryption(Bucket=bucket)
    assert error_code(exc.value) == "ServerSideEncryptionConfigurationNotFoundError"


def test_presigned_get(cluster, s3):
    bucket = unique("presign")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="p", Body=b"presigned body")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "p"}, ExpiresIn=300)
    assert "X-Amz-Signature=" in url
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"presigned body"
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(url.replace("X-Amz-Signature=", "X-Amz-Signature=0"), timeout=10)
    assert http.value.code == 403
