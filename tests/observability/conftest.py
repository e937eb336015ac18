"""One real cluster for the metrics, log and grpcurl tests, and one round of S3 traffic through
it (SSE-KMS, SSE-S3, SSE-C over HTTPS, a presigned GET, a miss) whose ids and secrets the tests
then look for."""
from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass, field

import pytest

from tests.cluster.harness import RunningCluster, start_cluster, stop_cluster, unique


@pytest.fixture(scope="session")
def observed_cluster(tmp_path_factory):
    # A heal walk every second, so the heal counters move within the test.
    running = start_cluster(tmp_path_factory.mktemp("observed"),
                            {"SEALSTORE_HEAL_INTERVAL": "1", "SEALSTORE_HEAL_RATE": "200"})
    yield running
    stop_cluster(running)


@dataclass
class Traffic:
    bucket: str
    kms_key: str
    sizes: dict[str, int]
    request_ids: dict[str, str]
    """operation label -> the x-amz-request-id the gateway answered it with."""
    customer_key: bytes
    secrets: list[bytes] = field(default_factory=list)


def _request_id(response) -> str:
    return response["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]


@pytest.fixture(scope="session")
def traffic(observed_cluster: RunningCluster) -> Traffic:
    c = observed_cluster
    s3, s3s = c.s3(), c.s3(https=True)
    bucket, kms_key = unique("observed"), unique("obs-key")
    c.cli("key", "create", kms_key)
    s3.create_bucket(Bucket=bucket)
    customer_key = os.urandom(32)
    sizes = {"kms": 2 * 1024 * 1024 + 17, "s3": 700_000, "c": 1024 * 1024 + 5}
    ids = {}
    body = os.urandom(sizes["kms"])
    ids["put-kms"] = _request_id(s3.put_object(Bucket=bucket, Key="kms/object", Body=body,
                                               ServerSideEncryption="aws:kms", SSEKMSKeyId=kms_key))
    got = s3.get_object(Bucket=bucket, Key="kms/object")
    assert got["Body"].read() == body
    ids["get-kms"] = _request_id(got)
    ids["put-s3"] = _request_id(s3.put_object(Bucket=bucket, Key="s3/object", Body=os.urandom(sizes["s3"])))
    c_body = os.urandom(sizes["c"])
    ids["put-c"] = _request_id(s3s.put_object(Bucket=bucket, Key="c/object", Body=c_body,
                                              SSECustomerAlgorithm="AES256", SSECustomerKey=customer_key))
    got = s3s.get_object(Bucket=bucket, Key="c/object", SSECustomerAlgorithm="AES256", SSECustomerKey=customer_key)
    assert got["Body"].read() == c_body
    ids["get-c"] = _request_id(got)
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "s3/object"}, ExpiresIn=300)
    with urllib.request.urlopen(url, timeout=30) as response:
        assert len(response.read()) == sizes["s3"]
        ids["presigned-get"] = response.headers["x-amz-request-id"]
    try:
        s3.get_object(Bucket=bucket, Key="no/such/key")
    except s3.exceptions.NoSuchKey as exc:
        ids["get-missing"] = exc.response["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]
    c.cli("admin", "heal", "--status")  # one call on the heal service's own API
    signature = url.split("X-Amz-Signature=")[1].split("&")[0]
    secrets = [customer_key, c.secret_key.encode(), signature.encode(),
               hashlib.sha256(customer_key).digest()]
    return Traffic(bucket, kms_key, sizes, ids, customer_key, secrets)
