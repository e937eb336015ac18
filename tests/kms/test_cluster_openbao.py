"""A whole cluster (`sealstore run`) whose kms keeps its keys in OpenBao transit, used with boto3."""
from __future__ import annotations

import uuid

import botocore.exceptions
import pytest

from tests.cluster.harness import start_cluster, stop_cluster


@pytest.fixture(scope="module")
def transit_cluster(openbao_dev, tmp_path_factory):
    cluster = start_cluster(tmp_path_factory.mktemp("cluster-transit"), extra_env=openbao_dev.kms_env("openbao-transit"))
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


def s3_error_code(call) -> str:
    with pytest.raises(botocore.exceptions.ClientError) as info:
        call()
    return info.value.response["Error"]["Code"]


def test_bucket_default_key_on_transit_locks_unlocks_and_rotates(transit_cluster, openbao_dev):
    key, bucket = f"transit-{uuid.uuid4().hex[:8]}", f"transit-{uuid.uuid4().hex[:8]}"
    transit_cluster.cli("key", "create", key)
    # The key really lives in OpenBao transit, derived (context-bound).
    described = openbao_dev.client().secrets.transit.read_key(key, mount_point="transit")["data"]
    assert described["derived"] is True and described["latest_version"] == 1
    s3 = transit_cluster.s3()
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [
        {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key}}]})
    body = b"transit-protected " * 5000
    put = s3.put_object(Bucket=bucket, Key="old.bin", Body=body)
    assert put["ServerSideEncryption"] == "aws:kms" and put["SSEKMSKeyId"].endswith(key)
    assert s3.get_object(Bucket=bucket, Key="old.bin")["Body"].read() == body

    transit_cluster.cli("key", "disable", key)
    assert s3_error_code(lambda: s3.get_object(Bucket=bucket, Key="old.bin")) == "KMS.DisabledException"
    transit_cluster.cli("key", "enable", key)
    assert s3.get_object(Bucket=bucket, Key="old.bin")["Body"].read() == body

    out = transit_cluster.cli("key", "rotate", key).stdout.decode()
    assert "version 2" in out
    s3.put_object(Bucket=bucket, Key="new.bin", Body=b"after rotation")
    assert s3.get_object(Bucket=bucket, Key="new.bin")["Body"].read() == b"after rotation"
    assert s3.get_object(Bucket=bucket, Key="old.bin")["Body"].read() == body  # version 1 still reads

    refused = transit_cluster.cli("key", "delete", key, check=False)
    assert refused.returncode != 0 and b"--force" in refused.stderr
    transit_cluster.cli("key", "delete", key, "--force", "--schedule", "7")
    assert s3_error_code(lambda: s3.get_object(Bucket=bucket, Key="old.bin")) == "KMS.KMSInvalidStateException"
    assert b"PENDING-DELETION" in transit_cluster.cli("key", "list", key).stdout
    transit_cluster.cli("key", "cancel-deletion", key)
    transit_cluster.cli("key", "enable", key)
    assert s3.get_object(Bucket=bucket, Key="old.bin")["Body"].read() == body
