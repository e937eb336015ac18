"""CopyObject and UploadPartCopy end to end with boto3 against real local clusters: every source
mode to every destination mode, fresh keys for every copy, key changes in place, directives,
conditions and AWS's errors."""
from __future__ import annotations

import datetime
import hashlib
import json
import os
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.cluster.harness import error_code, start_cluster, stop_cluster, unique

MiB = 1024 * 1024
BODY_SIZE = 3 * MiB + 4321  # several DARE packages and stripes, not inline


def drives(cluster) -> list[Path]:
    return [Path(d) for s in cluster.cluster_json()["services"] if s["role"] == "storage" for d in s["drives"]]


def envelopes(cluster, bucket: str, key: str) -> list[dict]:
    digest = hashlib.sha256(key.encode()).hexdigest()
    found = []
    for drive in drives(cluster):
        path = drive / "buckets" / bucket / "objects" / digest[:2] / digest / "meta.json"
        if path.exists():
            found.append(json.loads(path.read_text()).get("encryption", {}))
    return found


@pytest.fixture(scope="module")
def plain_cluster(tmp_path_factory):
    """A cluster that stores writes without SSE headers unencrypted (SEALSTORE_ENCRYPT_BY_DEFAULT=0),
    so that unencrypted sources and destinations exist."""
    running = start_cluster(tmp_path_factory.mktemp("copy-cluster"), extra_env={"SEALSTORE_ENCRYPT_BY_DEFAULT": "0"})
    yield running
    stop_cluster(running)


@pytest.fixture(scope="module")
def matrix(plain_cluster):
    s3 = plain_cluster.s3(https=True)  # SSE-C only over TLS
    kms_a, kms_b, bucket = unique("copy-a"), unique("copy-b"), unique("copym")
    plain_cluster.cli("key", "create", kms_a)
    plain_cluster.cli("key", "create", kms_b)
    s3.create_bucket(Bucket=bucket)
    return plain_cluster, s3, bucket, kms_a, kms_b


SOURCE_CUSTOMER_KEY, DESTINATION_CUSTOMER_KEY = os.urandom(32), os.urandom(32)


def sse_args(mode: str, kms_key: str, customer_key: bytes = DESTINATION_CUSTOMER_KEY) -> dict:
    return {"plain": {}, "sse-s3": {"ServerSideEncryption": "AES256"},
            "sse-kms": {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key},
            "sse-c": {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": customer_key}}[mode]


def read_args(mode: str, customer_key: bytes = DESTINATION_CUSTOMER_KEY) -> dict:
    return {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": customer_key} if mode == "sse-c" else {}


def check_mode(answer: dict, mode: str, kms_key: str) -> None:
    if mode == "plain":
        assert "ServerSideEncryption" not in answer and "SSECustomerAlgorithm" not in answer
    elif mode == "sse-c":
        assert answer["SSECustomerAlgorithm"] == "AES256" and "ServerSideEncryption" not in answer
    elif mode == "sse-s3":
        assert answer["ServerSideEncryption"] == "AES256" and "SSEKMSKeyId" not in answer
    else:
        assert answer["ServerSideEncryption"] == "aws:kms" and answer["SSEKMSKeyId"] == kms_key


MODES = ("plain", "sse-s3", "sse-kms", "sse-c")


@pytest.mark.parametrize("source_mode", MODES)
@pytest.mark.parametrize("destination_mode", MODES)
def test_copy_from_every_mode_to_every_mode(matrix, source_mode, destination_mode):
    cluster, s3, bucket, kms_a, kms_b = matrix
    body = os.urandom(BODY_SIZE)
    src, dst = f"src-{source_mode}-{destination_mode}", f"dst/{source_mode}/{destination_mode}"
    s3.put_object(Bucket=bucket, Key=src, Body=body, Metadata={"m": "1"},
                  **sse_args(source_mode, kms_a, SOURCE_CUSTOMER_KEY))
    source_key = {"CopySourceSSECustomerAlgorithm": "AES256", "CopySourceSSECustomerKey": SOURCE_CUSTOMER_KEY} \
        if source_mode == "sse-c" else {}
    answer = s3.copy_object(Bucket=bucket, Key=dst, CopySource={"Bucket": bucket, "Key": src},
                            **sse_args(destination_mode, kms_b), **source_key)
    check_mode(answer, destination_mode, kms_b)
    head = s3.head_object(Bucket=bucket, Key=dst, **read_args(destination_mode))
    check_mode(head, destination_mode, kms_b)
    assert head["ContentLength"] == BODY_SIZE and head["Metadata"] == {"m": "1"}
    assert head["ETag"] == answer["CopyObjectResult"]["ETag"]
    assert s3.get_object(Bucket=bucket, Key=dst, **read_args(destination_mode))["Body"].read() == body
    if source_mode == "sse-c":
        # The source's customer key is needed, and only the right one opens it.
        for wrong, code in (({}, "InvalidRequest"),
                            ({"CopySourceSSECustomerAlgorithm": "AES256", "CopySourceSSECustomerKey": os.urandom(32)},
                             "AccessDenied")):
            with pytest.raises(ClientError) as exc:
                s3.copy_object(Bucket=bucket, Key=dst + "-never", CopySource={"Bucket": bucket, "Key": src}, **wrong)
            assert error_code(exc.value) == code
    if destination_mode == "sse-c":
        with pytest.raises(ClientError) as exc:
            s3.get_object(Bucket=bucket, Key=dst, **read_args("sse-c", SOURCE_CUSTOMER_KEY))
        assert error_code(exc.value) == "AccessDenied"
    # A copy is sealed under fresh keys: no sealed key material is shared with the source.
    source_env, dest_env = envelopes(cluster, bucket, src)[0], envelopes(cluster, bucket, dst)[0]
    if destination_mode == "plain":
        assert dest_env == {}
    else:
        assert dest_env["iv"] and dest_env["sealed_oek"]
        for field in ("iv", "sealed_oek", "encrypted_dek", "customer_key_check"):
            if field in dest_env:  # SSE-C has no DEK, the others no customer key check
                assert dest_env[field] != source_env.get(field), field
    if source_mode == "plain" and destination_mode == "plain":
        assert head["ETag"] == '"' + hashlib.md5(body).hexdigest() + '"'


def test_copy_onto_itself_moves_the_object_to_another_key(matrix):
    cluster, s3, bucket, kms_a, kms_b = matrix
    body = os.urandom(MiB + 1)
    s3.put_object(Bucket=bucket, Key="rekey", Body=body, ServerSideEncryption="aws:kms", SSEKMSKeyId=kms_a,
                  ContentType="text/csv")
    before = envelopes(cluster, bucket, "rekey")[0]
    answer = s3.copy_object(Bucket=bucket, Key="rekey", CopySource={"Bucket": bucket, "Key": "rekey"},
                            ServerSideEncryption="aws:kms", SSEKMSKeyId=kms_b)
    assert answer["SSEKMSKeyId"] == kms_b
    after = envelopes(cluster, bucket, "rekey")
    assert {e["kms_key_name"] for e in after} == {kms_b} and after[0]["sealed_oek"] != before["sealed_oek"]
    head = s3.head_object(Bucket=bucket, Key="rekey")
    assert head["SSEKMSKeyId"] == kms_b and head["ContentType"] == "text/csv"
    # The old key no longer opens anything here: disabling it leaves the object readable.
    cluster.cli("key", "disable", kms_a)
    try:
        assert s3.get_object(Bucket=bucket, Key="rekey")["Body"].read() == body
    finally:
        cluster.cli("key", "enable", kms_a)


def test_copy_onto_itself_without_a_change_is_refused(s3):
    bucket = unique("self")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="k", Body=b"same", Metadata={"a": "1"})
    with pytest.raises(ClientError) as exc:
        s3.copy_object(Bucket=bucket, Key="k", CopySource={"Bucket": bucket, "Key": "k"})
    assert error_code(exc.value) == "InvalidRequest"
    # Replacing the metadata is a change.
    s3.copy_object(Bucket=bucket, Key="k", CopySource={"Bucket": bucket, "Key": "k"}, MetadataDirective="REPLACE",
                   Metadata={"a": "2"}, ContentType="text/plain")
    head = s3.head_object(Bucket=bucket, Key="k")
    assert head["Metadata"] == {"a": "2"} and head["ContentType"] == "text/plain"
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"same"


def test_metadata_directive_across_buckets_and_odd_keys(s3):
    src_bucket, dst_bucket = unique("srcb"), unique("dstb")
    s3.create_bucket(Bucket=src_bucket)
    s3.create_bucket(Bucket=dst_bucket)
    key = "dir/a b+c%ü?.txt"
    s3.put_object(Bucket=src_bucket, Key=key, Body=b"hello", ContentType="text/x-src", Metadata={"who": "src"},
                  CacheControl="max-age=5", Tagging="from=src")
    s3.copy_object(Bucket=dst_bucket, Key="kept", CopySource={"Bucket": src_bucket, "Key": key})
    kept = s3.head_object(Bucket=dst_bucket, Key="kept")
    assert kept["ContentType"] == "text/x-src" and kept["Metadata"] == {"who": "src"}
    assert kept["CacheControl"] == "max-age=5"
    assert s3.get_object_tagging(Bucket=dst_bucket, Key="kept")["TagSet"] == [{"Key": "from", "Value": "src"}]
    s3.copy_object(Bucket=dst_bucket, Key="retagged", CopySource={"Bucket": src_bucket, "Key": key},
                   TaggingDirective="REPLACE", Tagging="from=copy")
    assert s3.get_object_tagging(Bucket=dst_bucket, Key="retagged")["TagSet"] == [{"Key": "from", "Value": "copy"}]
    assert s3.head_object(Bucket=dst_bucket, Key="retagged")["Metadata"] == {"who": "src"}
    s3.copy_object(Bucket=dst_bucket, Key="replaced", CopySource=f"{src_bucket}/{key}?versionId=null",
                   MetadataDirective="REPLACE", Metadata={"who": "dst"}, ContentType="text/x-dst")
    replaced = s3.head_object(Bucket=dst_bucket, Key="replaced")
    assert replaced["ContentType"] == "text/x-dst" and replaced["Metadata"] == {"who": "dst"}
    assert "CacheControl" not in replaced
    assert s3.get_object(Bucket=dst_bucket, Key="replaced")["Body"].read() == b"hello"
    for source, code in (({"Bucket": src_bucket, "Key": "missing"}, "NoSuchKey"),
                         ({"Bucket": unique("nosuch"), "Key": "k"}, "NoSuchBucket")):
        with pytest.raises(ClientError) as exc:
            s3.copy_object(Bucket=dst_bucket, Key="never", CopySource=source)
        assert error_code(exc.value) == code
    with pytest.raises(ClientError) as exc:
        s3.copy_object(Bucket=dst_bucket, Key="never", CopySource={"Bucket": src_bucket, "Key": key},
                       MetadataDirective="MERGE")
    assert error_code(exc.value) == "InvalidArgument"
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=dst_bucket, Key="never")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_conditional_copy(s3):
    bucket = unique("cond")
    s3.create_bucket(Bucket=bucket)
    etag = s3.put_object(Bucket=bucket, Key="src", Body=b"conditional")["ETag"]
    source = {"Bucket": bucket, "Key": "src"}
    future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
    past = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
    for conditions in ({"CopySourceIfMatch": '"0123"'}, {"CopySourceIfNoneMatch": etag},
                       {"CopySourceIfModifiedSince": future}, {"CopySourceIfUnmodifiedSince": past}):
        with pytest.raises(ClientError) as exc:
            s3.copy_object(Bucket=bucket, Key="dst", CopySource=source, **conditions)
        assert error_code(exc.value) == "PreconditionFailed", conditions
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="dst")
    for conditions in ({"CopySourceIfMatch": etag}, {"CopySourceIfNoneMatch": '"other"'},
                       {"CopySourceIfModifiedSince": past}, {"CopySourceIfUnmodifiedSince": future},
                       {"CopySourceIfMatch": etag, "CopySourceIfUnmodifiedSince": past}):
        s3.copy_object(Bucket=bucket, Key="dst", CopySource=source, **conditions)
        assert s3.get_object(Bucket=bucket, Key="dst")["Body"].read() == b"conditional"


def test_upload_part_copy_with_ranges(s3):
    bucket = unique("partcopy")
    s3.create_bucket(Bucket=bucket)
    body = os.urandom(7 * MiB + 99)
    s3.put_object(Bucket=bucket, Key="src", Body=body)
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="dst")["UploadId"]
    source = {"Bucket": bucket, "Key": "src"}
    first = s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=upload_id, PartNumber=1, CopySource=source,
                                CopySourceRange=f"bytes=0-{5 * MiB - 1}")
    assert first["ServerSideEncryption"] == "AES256"
    second = s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=upload_id, PartNumber=2, CopySource=source)
    third = s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=upload_id, PartNumber=3, CopySource=source,
                                CopySourceRange=f"bytes={5 * MiB}-{len(body) - 1}")
    for bad_range in (f"bytes=0-{len(body)}", "bytes=10-5", "bytes=-5"):
        with pytest.raises(ClientError) as exc:
            s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=upload_id, PartNumber=4, CopySource=source,
                                CopySourceRange=bad_range)
        assert error_code(exc.value) == "InvalidArgument", bad_range
    with pytest.raises(ClientError) as exc:
        s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=upload_id, PartNumber=4, CopySource=source,
                            CopySourceIfMatch='"nope"')
    assert error_code(exc.value) == "PreconditionFailed"
    parts = [{"PartNumber": n, "ETag": r["CopyPartResult"]["ETag"]} for n, r in ((1, first), (2, second), (3, third))]
    listed = s3.list_parts(Bucket=bucket, Key="dst", UploadId=upload_id)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in listed] == [(1, 5 * MiB), (2, len(body)), (3, len(body) - 5 * MiB)]
    s3.complete_multipart_upload(Bucket=bucket, Key="dst", UploadId=upload_id, MultipartUpload={"Parts": parts})
    whole = body[:5 * MiB] + body + body[5 * MiB:]
    assert s3.get_object(Bucket=bucket, Key="dst")["Body"].read() == whole
    # A multipart source copies like any other (decrypted part by part, re-encrypted as one).
    s3.copy_object(Bucket=bucket, Key="dst-copy", CopySource={"Bucket": bucket, "Key": "dst"})
    assert s3.get_object(Bucket=bucket, Key="dst-copy")["Body"].read() == whole
