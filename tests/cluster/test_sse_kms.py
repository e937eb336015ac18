"""SSE-KMS end to end through real S3 clients against a real local cluster."""
from __future__ import annotations

import base64
import hashlib
import json
import os

import pytest
from botocore.exceptions import ClientError

from tests.cluster.harness import error_code, unique


@pytest.fixture
def bucket_with_key(cluster, s3):
    """A bucket whose default encryption is its own new external key."""
    key, bucket = unique("key"), unique("bucket")
    cluster.cli("key", "create", key)
    s3.create_bucket(Bucket=bucket)
    out = cluster.cli("encrypt", "set", "sse-kms", key, bucket).stdout.decode()
    assert key in out
    return bucket, key


def test_bucket_default_key_encrypts_and_reads_back(cluster, s3, bucket_with_key):
    bucket, key = bucket_with_key
    body = os.urandom(3 * 1024 * 1024 + 123)
    put = s3.put_object(Bucket=bucket, Key="dir/obj.bin", Body=body)
    assert put["ServerSideEncryption"] == "aws:kms"
    assert put["SSEKMSKeyId"] == key
    got = s3.get_object(Bucket=bucket, Key="dir/obj.bin")
    assert got["Body"].read() == body
    assert got["ServerSideEncryption"] == "aws:kms" and got["SSEKMSKeyId"] == key
    head = s3.head_object(Bucket=bucket, Key="dir/obj.bin")
    assert head["ContentLength"] == len(body)
    assert head["SSEKMSKeyId"] == key
    info = cluster.cli("encrypt", "info", bucket).stdout.decode()
    assert key in info and "sse-kms" in info
    enc = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
    rule = enc["Rules"][0]["ApplyServerSideEncryptionByDefault"]
    assert rule == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key}


def test_ranged_reads_cross_package_and_stripe_boundaries(cluster, s3, bucket_with_key):
    bucket, _ = bucket_with_key
    body = os.urandom(2 * 1024 * 1024 + 70000)
    s3.put_object(Bucket=bucket, Key="r", Body=body)
    for first, last in [(0, 0), (65535, 65536), (65536, 65536 + 10), (1048575, 1048577 + 65536),
                        (len(body) - 5, len(body) - 1), (100, len(body) + 1000)]:
        got = s3.get_object(Bucket=bucket, Key="r", Range=f"bytes={first}-{last}")
        assert got["Body"].read() == body[first:last + 1], (first, last)
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert s3.get_object(Bucket=bucket, Key="r", Range="bytes=-1000")["Body"].read() == body[-1000:]
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="r", Range=f"bytes={len(body) + 10}-")
    assert error_code(exc.value) == "InvalidRange"


def test_explicit_key_wins_over_bucket_default(cluster, s3, bucket_with_key):
    bucket, bucket_key = bucket_with_key
    own_key = unique("own")
    cluster.cli("key", "create", own_key)
    s3.put_object(Bucket=bucket, Key="mine", Body=b"explicit", ServerSideEncryption="aws:kms", SSEKMSKeyId=own_key)
    s3.put_object(Bucket=bucket, Key="default", Body=b"default")
    assert s3.head_object(Bucket=bucket, Key="mine")["SSEKMSKeyId"] == own_key
    assert s3.head_object(Bucket=bucket, Key="default")["SSEKMSKeyId"] == bucket_key
    # Locking the bucket's key leaves the object under the explicit key readable.
    cluster.cli("key", "disable", bucket_key)
    try:
        assert s3.get_object(Bucket=bucket, Key="mine")["Body"].read() == b"explicit"
        with pytest.raises(ClientError) as exc:
            s3.get_object(Bucket=bucket, Key="default")
        assert error_code(exc.value) == "KMS.DisabledException"
    finally:
        cluster.cli("key", "enable", bucket_key)


def test_context_round_trip(cluster, s3):
    key, bucket = unique("ctx"), unique("ctx-bucket")
    cluster.cli("key", "create", key)
    s3.create_bucket(Bucket=bucket)
    context = {"department": "finance", "project": "q4"}
    encoded = base64.b64encode(json.dumps(context).encode()).decode()
    s3.put_object(Bucket=bucket, Key="c", Body=b"with context", ServerSideEncryption="aws:kms",
                  SSEKMSKeyId=key, SSEKMSEncryptionContext=encoded)
    got = s3.get_object(Bucket=bucket, Key="c")
    assert got["Body"].read() == b"with context"
    returned = json.loads(base64.b64decode(got["ResponseMetadata"]["HTTPHeaders"]["x-amz-server-side-encryption-context"]))
    assert returned == context
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="bad-ctx", Body=b"x", ServerSideEncryption="aws:kms",
                      SSEKMSKeyId=key, SSEKMSEncryptionContext="not base64 json!")
    assert error_code(exc.value) == "InvalidArgument"
    assert "bad-ctx" not in [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_disable_enable_delete_locks_one_bucket_only(cluster, s3):
    key_a, key_b = unique("lock-a"), unique("lock-b")
    bucket_a, bucket_b = unique("locked"), unique("untouched")
    for key, bucket in ((key_a, bucket_a), (key_b, bucket_b)):
        cluster.cli("key", "create", key)
        s3.create_bucket(Bucket=bucket)
        cluster.cli("encrypt", "set", "sse-kms", key, bucket)
    body_a, body_b = os.urandom(1_500_000), os.urandom(700_000)
    s3.put_object(Bucket=bucket_a, Key="a", Body=body_a)
    s3.put_object(Bucket=bucket_b, Key="b", Body=body_b)

    cluster.cli("key", "disable", key_a)
    for kwargs in ({}, {"Range": "bytes=100-200"}, {"Range": "bytes=-10"}):
        with pytest.raises(ClientError) as exc:
            s3.get_object(Bucket=bucket_a, Key="a", **kwargs)
        assert error_code(exc.value) == "KMS.DisabledException"
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert s3.get_object(Bucket=bucket_b, Key="b")["Body"].read() == body_b
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket_a, Key="new-while-disabled", Body=b"x")
    assert error_code(exc.value) == "KMS.DisabledException"

    cluster.cli("key", "enable", key_a)
    assert s3.get_object(Bucket=bucket_a, Key="a")["Body"].read() == body_a
    assert s3.get_object(Bucket=bucket_a, Key="a", Range="bytes=100-200")["Body"].read() == body_a[100:201]

    cluster.cli("key", "delete", key_a, "--force")
    for _ in range(2):
        with pytest.raises(ClientError) as exc:
            s3.get_object(Bucket=bucket_a, Key="a")
        assert error_code(exc.value) == "KMS.NotFoundException"
    # Re-creating a key with the same name does not bring the data back: new key material.
    cluster.cli("key", "create", key_a)
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket_a, Key="a")
    assert error_code(exc.value) in ("KMS.InvalidCiphertextException", "AccessDenied")
    assert s3.get_object(Bucket=bucket_b, Key="b")["Body"].read() == body_b
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket_a).get("Contents", [])]
    assert keys == ["a"]


def test_put_naming_missing_or_disabled_key_creates_nothing(cluster, s3):
    bucket, disabled = unique("nokey"), unique("off")
    s3.create_bucket(Bucket=bucket)
    cluster.cli("key", "create", disabled)
    cluster.cli("key", "disable", disabled)
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="x", Body=b"data", ServerSideEncryption="aws:kms", SSEKMSKeyId="no-such-key")
    assert error_code(exc.value) == "KMS.NotFoundException"
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="y", Body=b"data", ServerSideEncryption="aws:kms", SSEKMSKeyId=disabled)
    assert error_code(exc.value) == "KMS.DisabledException"
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="x")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    # The bucket default cannot name a missing key either.
    with pytest.raises(ClientError) as exc:
        s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [
            {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "no-such-key"}}]})
    assert error_code(exc.value) == "KMS.NotFoundException"
    with pytest.raises(ClientError) as exc:
        s3.get_bucket_encryption(Bucket=bucket)
    assert error_code(exc.value) == "ServerSideEncryptionConfigurationNotFoundError"


def test_large_object_round_trip_with_aws_cli(cluster, tmp_path):
    """256 MiB through the AWS CLI (multi-threaded transfer manager, SSE-KMS), byte-identical."""
    key, bucket = unique("big"), unique("big-bucket")
    cluster.cli("key", "create", key)
    cluster.aws("s3", "mb", f"s3://{bucket}")
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    digest = hashlib.sha256()
    with open(src, "wb") as f:
        block = os.urandom(1 << 20)
        for i in range(256):
            chunk = block[i:] + block[:i]
            digest.update(chunk)
            f.write(chunk)
    # multipart_threshold high: this gateway does single PUTs (multipart comes later).
    cfg = tmp_path / "aws.cfg"
    cfg.write_text("[default]\ns3 =\n  multipart_threshold = 1GB\n  multipart_chunksize = 1GB\n")
    result = cluster.aws("s3", "cp", str(src), f"s3://{bucket}/big.bin", "--sse", "aws:kms",
                         "--sse-kms-key-id", key, config_file=str(cfg))
    assert b"upload" in result.stdout
    head = json.loads(cluster.aws("s3api", "head-object", "--bucket", bucket, "--key", "big.bin").stdout)
    assert head["ContentLength"] == 256 << 20
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == key
    cluster.aws("s3", "cp", f"s3://{bucket}/big.bin", str(dst), config_file=str(cfg))
    check = hashlib.sha256()
    with open(dst, "rb") as f:
        while chunk := f.read(1 << 20):
            check.update(chunk)
    assert check.hexdigest() == digest.hexdigest()


def test_aws_cli_s3api_put_with_kms_key(cluster, tmp_path):
    key, bucket = unique("cli"), unique("cli-bucket")
    cluster.cli("key", "create", key)
    cluster.aws("s3api", "create-bucket", "--bucket", bucket)
    src = tmp_path / "f.txt"
    src.write_bytes(b"hello from the aws cli\n" * 1000)
    put = json.loads(cluster.aws("s3api", "put-object", "--bucket", bucket, "--key", "f.txt", "--body", str(src),
                                 "--server-side-encryption", "aws:kms", "--ssekms-key-id", key).stdout)
    assert put["ServerSideEncryption"] == "aws:kms"
    listing = json.loads(cluster.aws("s3api", "list-objects-v2", "--bucket", bucket).stdout)
    assert [o["Key"] for o in listing["Contents"]] == ["f.txt"]
    out = tmp_path / "out.txt"
    cluster.aws("s3api", "get-object", "--bucket", bucket, "--key", "f.txt", str(out))
    assert out.read_bytes() == src.read_bytes()


def test_large_put_naming_missing_key_fails_cleanly(cluster, s3):
    """The worker refuses before it needs any data, while the gateway is still streaming."""
    bucket = unique("early")
    s3.create_bucket(Bucket=bucket)
    for _ in range(3):
        with pytest.raises(ClientError) as exc:
            s3.put_object(Bucket=bucket, Key="big", Body=os.urandom(24 << 20),
                          ServerSideEncryption="aws:kms", SSEKMSKeyId="no-such-key")
        assert error_code(exc.value) == "KMS.NotFoundException"
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
