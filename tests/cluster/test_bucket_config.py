"""SigV2, bucket policies, browser POST uploads, ACLs, tagging and versioning answers, against a
real cluster with real clients (boto3 in its default settings, the AWS CLI, requests)."""
from __future__ import annotations

import json
import os

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.cluster.harness import error_code, unique


def _xml_code(response) -> str:
    import xml.etree.ElementTree as ET
    return ET.fromstring(response.content).findtext("Code")


@pytest.fixture
def bucket(s3):
    name = unique("cfg")
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def kms_key(cluster):
    name = unique("key")
    cluster.cli("key", "create", name)
    return name


def _default_client(cluster, **config):
    """boto3 as a user gets it: no signature version configured (presigning then uses SigV2)."""
    return boto3.client("s3", endpoint_url=cluster.endpoint, region_name="us-east-1",
                        aws_access_key_id=cluster.access_key, aws_secret_access_key=cluster.secret_key,
                        config=Config(retries={"max_attempts": 1}, **config))


# -- SigV2 -------------------------------------------------------------------------------------

def test_sigv2_presigned_urls_from_boto3_defaults(cluster, s3, bucket, kms_key):
    client = _default_client(cluster)
    body = os.urandom(100_000)
    put_url = client.generate_presigned_url("put_object", Params={
        "Bucket": bucket, "Key": "v2/file one.bin", "ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key})
    assert "AWSAccessKeyId=" in put_url and "Signature=" in put_url
    put = requests.put(put_url, data=body, timeout=30)
    assert put.status_code == 200, put.text
    # The SSE parameters the URL carried in its query were applied.
    head = s3.head_object(Bucket=bucket, Key="v2/file one.bin")
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == kms_key
    get_url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "v2/file one.bin"})
    got = requests.get(get_url, timeout=30)
    assert got.status_code == 200 and got.content == body
    # Tampering: another key with the same signature.
    other = requests.get(get_url.replace("file%20one", "file%20two"), timeout=30)
    assert other.status_code == 403 and _xml_code(other) == "SignatureDoesNotMatch"
    expired = client.generate_presigned_url("get_object", ExpiresIn=-10,
                                            Params={"Bucket": bucket, "Key": "v2/file one.bin"})
    gone = requests.get(expired, timeout=30)
    assert gone.status_code == 403 and "expired" in gone.text


def test_aws_cli_presign_default_is_fetchable(cluster, s3, bucket):
    s3.put_object(Bucket=bucket, Key="cli/obj", Body=b"presigned by the cli")
    url = cluster.aws("s3", "presign", f"s3://{bucket}/cli/obj").stdout.decode().strip()
    got = requests.get(url, timeout=30)
    assert got.status_code == 200 and got.content == b"presigned by the cli", (url, got.text)


def test_sigv2_header_signing_client(cluster, bucket):
    v2 = _default_client(cluster, signature_version="s3")
    v2.put_object(Bucket=bucket, Key="hdr/a b+c", Body=b"v2 header", Metadata={"colour": "blue"})
    got = v2.get_object(Bucket=bucket, Key="hdr/a b+c")
    assert got["Body"].read() == b"v2 header" and got["Metadata"] == {"colour": "blue"}
    listed = v2.list_objects_v2(Bucket=bucket, Prefix="hdr/")
    assert [o["Key"] for o in listed["Contents"]] == ["hdr/a b+c"]
    bad = boto3.client("s3", endpoint_url=cluster.endpoint, region_name="us-east-1",
                       aws_access_key_id=cluster.access_key, aws_secret_access_key="wrong",
                       config=Config(signature_version="s3", retries={"max_attempts": 1}))
    with pytest.raises(ClientError) as exc:
        bad.get_object(Bucket=bucket, Key="hdr/a b+c")
    assert error_code(exc.value) == "SignatureDoesNotMatch"


# -- bucket policies ---------------------------------------------------------------------------

def _deny_unencrypted(bucket: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Sid": "DenyUnencrypted", "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
        "Resource": f"arn:aws:s3:::{bucket}/*",
        "Condition": {"Null": {"s3:x-amz-server-side-encryption": "true"}}}]})


def test_policy_crud_and_errors(s3, bucket):
    with pytest.raises(ClientError) as exc:
        s3.get_bucket_policy(Bucket=bucket)
    assert error_code(exc.value) == "NoSuchBucketPolicy"
    document = _deny_unencrypted(bucket)
    s3.put_bucket_policy(Bucket=bucket, Policy=document)
    assert json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"]) == json.loads(document)
    for bad in ("not json", json.dumps({"Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:*",
                                                        "Resource": "arn:aws:s3:::another-bucket/*"}]})):
        with pytest.raises(ClientError) as exc:
            s3.put_bucket_policy(Bucket=bucket, Policy=bad)
        assert error_code(exc.value) == "MalformedPolicy"
    assert json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"]) == json.loads(document)  # unchanged
    s3.delete_bucket_policy(Bucket=bucket)
    with pytest.raises(ClientError) as exc:
        s3.get_bucket_policy(Bucket=bucket)
    assert error_code(exc.value) == "NoSuchBucketPolicy"


def test_policy_denies_unencrypted_puts_on_every_write_path(cluster, s3, bucket, kms_key):
    s3.put_object(Bucket=bucket, Key="source", Body=b"source")
    s3.put_bucket_policy(Bucket=bucket, Policy=_deny_unencrypted(bucket))
    # PUT without the header: denied, even though encryption by default would encrypt it (AWS
    # evaluates the request's headers), and nothing is stored.
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="plain", Body=b"x")
    assert error_code(exc.value) == "AccessDenied"
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="plain")
    assert exc.value.response["Error"]["Code"] in ("404", "NoSuchKey")
    s3.put_object(Bucket=bucket, Key="sse-s3", Body=b"x", ServerSideEncryption="AES256")
    s3.put_object(Bucket=bucket, Key="sse-kms", Body=b"x", ServerSideEncryption="aws:kms", SSEKMSKeyId=kms_key)
    # CopyObject destination and CreateMultipartUpload are PutObject too.
    with pytest.raises(ClientError) as exc:
        s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "source"})
    assert error_code(exc.value) == "AccessDenied"
    s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "source"},
                   ServerSideEncryption="AES256")
    with pytest.raises(ClientError) as exc:
        s3.create_multipart_upload(Bucket=bucket, Key="mpu")
    assert error_code(exc.value) == "AccessDenied"
    # With the header at creation, the parts (which carry none) and the completion go through.
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mpu", ServerSideEncryption="AES256")["UploadId"]
    part = s3.upload_part(Bucket=bucket, Key="mpu", UploadId=upload, PartNumber=1, Body=b"p" * 100)
    s3.complete_multipart_upload(Bucket=bucket, Key="mpu", UploadId=upload,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    assert s3.get_object(Bucket=bucket, Key="mpu")["Body"].read() == b"p" * 100
    # Reads are not denied; the policy can always be removed by the owner.
    assert s3.get_object(Bucket=bucket, Key="source")["Body"].read() == b"source"
    s3.delete_bucket_policy(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="plain", Body=b"x")


def test_policy_only_key_k(s3, bucket, kms_key, cluster):
    other = unique("key")
    cluster.cli("key", "create", other)
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "OnlyKms", "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
         "Resource": f"arn:aws:s3:::{bucket}/*",
         "Condition": {"StringNotEquals": {"s3:x-amz-server-side-encryption": "aws:kms"}}},
        {"Sid": "OnlyKeyK", "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
         "Resource": f"arn:aws:s3:::{bucket}/*",
         "Condition": {"StringNotEquals": {"s3:x-amz-server-side-encryption-aws-kms-key-id": kms_key}}}]}))
    for extra in ({}, {"ServerSideEncryption": "AES256"},
                  {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": other}):
        with pytest.raises(ClientError) as exc:
            s3.put_object(Bucket=bucket, Key="k", Body=b"x", **extra)
        assert error_code(exc.value) == "AccessDenied", extra
    s3.put_object(Bucket=bucket, Key="k", Body=b"x", ServerSideEncryption="aws:kms", SSEKMSKeyId=kms_key)
    assert s3.head_object(Bucket=bucket, Key="k")["SSEKMSKeyId"] == kms_key


def test_policy_denies_deletes_per_key(s3, bucket):
    for key in ("keep/a", "tmp/b"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Statement": [{
        "Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "s3:DeleteObject",
        "Resource": f"arn:aws:s3:::{bucket}/keep/*"}]}))
    result = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "keep/a"}, {"Key": "tmp/b"}]})
    assert [d["Key"] for d in result.get("Deleted", [])] == ["tmp/b"]
    assert [(e["Key"], e["Code"]) for e in result["Errors"]] == [("keep/a", "AccessDenied")]
    with pytest.raises(ClientError) as exc:
        s3.delete_object(Bucket=bucket, Key="keep/a")
    assert error_code(exc.value) == "AccessDenied"
    assert s3.get_object(Bucket=bucket, Key="keep/a")["Body"].read() == b"x"


# -- browser POST uploads ----------------------------------------------------------------------

@pytest.mark.parametrize("v4", [True, False])
def test_post_upload_with_sse_kms_fields(cluster, s3, bucket, kms_key, v4):
    client = cluster.s3() if v4 else _default_client(cluster)
    fields = {"x-amz-server-side-encryption": "aws:kms", "x-amz-server-side-encryption-aws-kms-key-id": kms_key,
              "Content-Type": "text/plain", "x-amz-meta-origin": "browser", "success_action_status": "201"}
    post = client.generate_presigned_post(bucket, "forms/${filename}", Fields=fields, Conditions=[
        {"x-amz-server-side-encryption": "aws:kms"}, {"x-amz-server-side-encryption-aws-kms-key-id": kms_key},
        ["starts-with", "$Content-Type", "text/"], {"x-amz-meta-origin": "browser"},
        {"success_action_status": "201"}, ["content-length-range", 1, 10 << 20]])
    body = os.urandom(3 << 20)
    answer = requests.post(post["url"], data=post["fields"], files={"file": ("report.txt", body)}, timeout=60)
    assert answer.status_code == 201, answer.text
    assert b"<Key>forms/report.txt</Key>" in answer.content
    head = s3.head_object(Bucket=bucket, Key="forms/report.txt")
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == kms_key
    assert head["ContentType"] == "text/plain" and head["Metadata"] == {"origin": "browser"}
    assert s3.get_object(Bucket=bucket, Key="forms/report.txt")["Body"].read() == body
    # The bytes on the drives are not the plaintext.
    needle = body[1000:1032]
    for path in cluster.data.rglob("*"):
        if path.is_file() and path.stat().st_size < (64 << 20):
            assert needle not in path.read_bytes(), path


def test_post_upload_refusals(cluster, s3, bucket):
    client = cluster.s3()
    post = client.generate_presigned_post(bucket, "limited", Conditions=[["content-length-range", 10, 1000]])
    too_big = requests.post(post["url"], data=post["fields"], files={"file": ("f", b"x" * 5000)}, timeout=30)
    assert too_big.status_code == 400 and _xml_code(too_big) == "EntityTooLarge"
    too_small = requests.post(post["url"], data=post["fields"], files={"file": ("f", b"x")}, timeout=30)
    assert too_small.status_code == 400 and _xml_code(too_small) == "EntityTooSmall"
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="limited")  # nothing left behind
    ok = requests.post(post["url"], data=post["fields"], files={"file": ("f", b"x" * 100)}, timeout=30)
    assert ok.status_code == 204
    # A field the policy does not allow, a tampered policy, no signature, no file.
    extra = requests.post(post["url"], data={**post["fields"], "x-amz-meta-sneaky": "1"},
                          files={"file": ("f", b"x" * 100)}, timeout=30)
    assert extra.status_code == 403 and _xml_code(extra) == "AccessDenied"
    other_key = requests.post(post["url"], data={**post["fields"], "key": "elsewhere"},
                              files={"file": ("f", b"x" * 100)}, timeout=30)
    assert other_key.status_code == 403 and _xml_code(other_key) == "AccessDenied"
    tampered = dict(post["fields"], policy=post["fields"]["policy"][:-4] + "AAA=")
    bad_sig = requests.post(post["url"], data=tampered, files={"file": ("f", b"x" * 100)}, timeout=30)
    assert bad_sig.status_code in (400, 403) and _xml_code(bad_sig) in ("SignatureDoesNotMatch", "InvalidPolicyDocument")
    anonymous = requests.post(post["url"], data={"key": "anon"}, files={"file": ("f", b"x")}, timeout=30)
    assert anonymous.status_code == 403 and _xml_code(anonymous) == "AccessDenied"
    no_file = requests.post(post["url"], files={k: (None, v) for k, v in post["fields"].items()}, timeout=30)
    assert no_file.status_code == 400 and _xml_code(no_file) == "InvalidArgument"
    broken = requests.post(post["url"], data=b"--xx\r\nnot a form", timeout=30,
                           headers={"Content-Type": "multipart/form-data; boundary=yy"})
    assert broken.status_code == 400 and _xml_code(broken) in ("MalformedPOSTRequest", "InvalidArgument")


def test_post_upload_under_a_deny_unencrypted_policy(cluster, s3, bucket):
    s3.put_bucket_policy(Bucket=bucket, Policy=_deny_unencrypted(bucket))
    client = cluster.s3()
    plain = client.generate_presigned_post(bucket, "p")
    denied = requests.post(plain["url"], data=plain["fields"], files={"file": ("f", b"data")}, timeout=30)
    assert denied.status_code == 403 and _xml_code(denied) == "AccessDenied"
    sse = client.generate_presigned_post(bucket, "p", Fields={"x-amz-server-side-encryption": "AES256"},
                                         Conditions=[{"x-amz-server-side-encryption": "AES256"}])
    allowed = requests.post(sse["url"], data=sse["fields"], files={"file": ("f", b"data")}, timeout=30)
    assert allowed.status_code == 204, allowed.text
    assert s3.head_object(Bucket=bucket, Key="p")["ServerSideEncryption"] == "AES256"


# -- ACLs, tagging, versioning -----------------------------------------------------------------

def test_acls(s3, bucket):
    acl = s3.get_bucket_acl(Bucket=bucket)
    assert [g["Permission"] for g in acl["Grants"]] == ["FULL_CONTROL"]
    assert acl["Grants"][0]["Grantee"]["ID"] == acl["Owner"]["ID"]
    s3.put_object(Bucket=bucket, Key="o", Body=b"x", ACL="private")
    assert s3.get_object_acl(Bucket=bucket, Key="o")["Grants"][0]["Permission"] == "FULL_CONTROL"
    s3.put_bucket_acl(Bucket=bucket, ACL="private")
    s3.put_object_acl(Bucket=bucket, Key="o", ACL="bucket-owner-full-control")
    for call in (lambda: s3.put_object(Bucket=bucket, Key="pub", Body=b"x", ACL="public-read"),
                 lambda: s3.put_bucket_acl(Bucket=bucket, ACL="public-read-write"),
                 lambda: s3.put_object_acl(Bucket=bucket, Key="o", ACL="authenticated-read"),
                 lambda: s3.create_bucket(Bucket=unique("pub"), ACL="public-read")):
        with pytest.raises(ClientError) as exc:
            call()
        assert error_code(exc.value) == "AccessControlListNotSupported"
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="pub")
    with pytest.raises(ClientError) as exc:
        s3.get_object_acl(Bucket=bucket, Key="missing")
    assert error_code(exc.value) == "NoSuchKey"


def test_object_and_bucket_tagging(s3, bucket):
    s3.put_object(Bucket=bucket, Key="t", Body=b"x", Tagging="project=blue%20sky&owner=ops")
    tags = s3.get_object_tagging(Bucket=bucket, Key="t")["TagSet"]
    assert {t["Key"]: t["Value"] for t in tags} == {"project": "blue sky", "owner": "ops"}
    assert s3.head_object(Bucket=bucket, Key="t")["ResponseMetadata"]["HTTPHeaders"]["x-amz-tagging-count"] == "2"
    assert s3.get_object(Bucket=bucket, Key="t")["TagCount"] == 2
    s3.put_object_tagging(Bucket=bucket, Key="t", Tagging={"TagSet": [{"Key": "only", "Value": "one"}]})
    assert s3.get_object_tagging(Bucket=bucket, Key="t")["TagSet"] == [{"Key": "only", "Value": "one"}]
    assert s3.get_object(Bucket=bucket, Key="t")["Body"].read() == b"x"  # the data is untouched
    s3.delete_object_tagging(Bucket=bucket, Key="t")
    assert s3.get_object_tagging(Bucket=bucket, Key="t")["TagSet"] == []
    assert "x-amz-tagging-count" not in s3.head_object(Bucket=bucket, Key="t")["ResponseMetadata"]["HTTPHeaders"]
    with pytest.raises(ClientError) as exc:
        s3.put_object_tagging(Bucket=bucket, Key="t", Tagging={"TagSet": [
            {"Key": f"k{i}", "Value": "v"} for i in range(11)]})
    assert error_code(exc.value) == "BadRequest"
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="bad", Body=b"x", Tagging="a=1&a=2")
    assert error_code(exc.value) == "InvalidTag"
    with pytest.raises(ClientError) as exc:
        s3.put_object_tagging(Bucket=bucket, Key="missing", Tagging={"TagSet": []})
    assert error_code(exc.value) == "NoSuchKey"

    with pytest.raises(ClientError) as exc:
        s3.get_bucket_tagging(Bucket=bucket)
    assert error_code(exc.value) == "NoSuchTagSet"
    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [{"Key": "team", "Value": "finance"}]})
    assert s3.get_bucket_tagging(Bucket=bucket)["TagSet"] == [{"Key": "team", "Value": "finance"}]
    s3.delete_bucket_tagging(Bucket=bucket)
    with pytest.raises(ClientError) as exc:
        s3.get_bucket_tagging(Bucket=bucket)
    assert error_code(exc.value) == "NoSuchTagSet"
    with pytest.raises(ClientError) as exc:
        s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [{"Key": "aws:reserved", "Value": "x"}]})
    assert error_code(exc.value) == "InvalidTag"


def test_versioning_answers_and_list_object_versions(s3, bucket):
    assert "Status" not in s3.get_bucket_versioning(Bucket=bucket)
    for status in ("Enabled", "Suspended"):
        with pytest.raises(ClientError) as exc:
            s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": status})
        assert error_code(exc.value) == "NotImplemented"
    keys = ["a", "dir/b", "dir/c", "e f", "z"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    listed = s3.list_object_versions(Bucket=bucket)
    assert [v["Key"] for v in listed["Versions"]] == keys
    assert all(v["VersionId"] == "null" and v["IsLatest"] for v in listed["Versions"])
    by_dir = s3.list_object_versions(Bucket=bucket, Delimiter="/")
    assert [v["Key"] for v in by_dir["Versions"]] == ["a", "e f", "z"]
    assert [p["Prefix"] for p in by_dir["CommonPrefixes"]] == ["dir/"]
    pages = s3.get_paginator("list_object_versions").paginate(Bucket=bucket, PaginationConfig={"PageSize": 2})
    assert [v["Key"] for page in pages for v in page.get("Versions", [])] == keys
    assert [v["Key"] for v in s3.list_object_versions(Bucket=bucket, Prefix="dir/")["Versions"]] == ["dir/b", "dir/c"]
    # versionId=null names the one version; any other id was never issued.
    assert s3.get_object(Bucket=bucket, Key="a", VersionId="null")["Body"].read() == b"a"
    s3.head_object(Bucket=bucket, Key="a", VersionId="null")
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="a", VersionId="3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY")
    assert error_code(exc.value) == "InvalidArgument"
    s3.delete_object(Bucket=bucket, Key="a", VersionId="null")
    # Emptying a bucket the way common tools do: every version listed, then deleted.
    versions = s3.list_object_versions(Bucket=bucket)["Versions"]
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": v["Key"], "VersionId": v["VersionId"]}
                                                         for v in versions]})
    assert "Versions" not in s3.list_object_versions(Bucket=bucket)
    # A version id that was never issued deletes nothing.
    s3.put_object(Bucket=bucket, Key="kept", Body=b"k")
    result = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "kept", "VersionId": "not-a-version"}]})
    assert [(e["Key"], e["Code"]) for e in result["Errors"]] == [("kept", "InvalidArgument")]
    with pytest.raises(ClientError) as exc:
        s3.delete_object(Bucket=bucket, Key="kept", VersionId="not-a-version")
    assert error_code(exc.value) == "InvalidArgument"
    assert s3.get_object(Bucket=bucket, Key="kept")["Body"].read() == b"k"
    s3.delete_object(Bucket=bucket, Key="kept")
    s3.delete_bucket(Bucket=bucket)


def test_bad_xml_bodies(s3, bucket, cluster):
    import hashlib

    from sealstore import sigv4
    for query, body in (("tagging", b"<Tagging><TagSet><Tag><Key>a</Key></Tag>"),
                        ("tagging", b'<!DOCTYPE t [<!ENTITY x "y">]><Tagging><TagSet/></Tagging>'),
                        ("versioning", b"<VersioningConfiguration><Status>Maybe</Status></VersioningConfiguration>"),
                        ("acl", b"<AccessControlPolicy>")):
        url = f"{cluster.endpoint}/{bucket}?{query}"
        headers = sigv4.sign_request("PUT", url, {"Content-Length": str(len(body))},
                                     hashlib.sha256(body).hexdigest(), cluster.access_key, cluster.secret_key)
        answer = requests.put(url, data=body, headers=headers, timeout=30)
        assert answer.status_code == 400 and _xml_code(answer) == "MalformedXML", (query, answer.text)


def test_policy_tls_only(cluster, s3, bucket):
    assert cluster.https_endpoint, "the local cluster serves HTTPS"
    s3.put_object(Bucket=bucket, Key="o", Body=b"x")
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Statement": [{
        "Sid": "TlsOnly", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}))
    for call in (lambda: s3.get_object(Bucket=bucket, Key="o"), lambda: s3.list_objects_v2(Bucket=bucket),
                 lambda: s3.put_object(Bucket=bucket, Key="p", Body=b"y")):
        with pytest.raises(ClientError) as exc:
            call()
        assert error_code(exc.value) == "AccessDenied"
    # A forged X-Forwarded-Proto does not make plain HTTP secure.
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "o"})
    forged = requests.get(url, headers={"X-Forwarded-Proto": "https"}, timeout=30)
    assert forged.status_code == 403
    tls = cluster.s3(https=True)
    assert tls.get_object(Bucket=bucket, Key="o")["Body"].read() == b"x"
    tls.put_object(Bucket=bucket, Key="p", Body=b"y")
    s3.delete_bucket_policy(Bucket=bucket)  # the owner can always manage the policy
