"""Hostile clients against a real cluster (`sealstore run`): issue 7 findings 4, 5 and 6 over the
wire, bucket encryption naming unusable keys, and a fuzz run of generated hostile requests."""
from __future__ import annotations

import asyncio
import os
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import pytest
from botocore.exceptions import ClientError

from sealstore import sigv4
from tests.cluster.harness import error_code, start_cluster, stop_cluster, unique
from tests.fuzz import hostile

FUZZ_REQUESTS = int(os.environ.get("SEALSTORE_FUZZ_REQUESTS", "3000"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # The fuzz run sends thousands of failing signatures from one address: a throttle that
    # answered SlowDown to all of them would leave the rest of the gateway unexercised.
    running = start_cluster(tmp_path_factory.mktemp("fuzz"), extra_env={
        "SEALSTORE_GATEWAY_AUTH_FAIL_BURST": "1000000", "SEALSTORE_GATEWAY_HEADER_TIMEOUT": "5",
        "SEALSTORE_GATEWAY_BODY_TIMEOUT": "5"})
    yield running
    stop_cluster(running)


@pytest.fixture
def s3(cluster):
    return cluster.s3()


def _raw(cluster, request: bytes, timeout: float = 10) -> tuple[bytes, float]:
    async def go():
        port = int(urlsplit(cluster.endpoint).port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        start = time.monotonic()
        try:
            writer.write(request)
            await writer.drain()
            async with asyncio.timeout(timeout):
                line = await reader.readline()
            return line, time.monotonic() - start
        finally:
            writer.close()
    return asyncio.run(go())


def _chunked_put(cluster, path: str, size_line: bytes) -> bytes:
    host = urlsplit(cluster.endpoint).netloc
    headers = {"host": host, "content-encoding": "aws-chunked", "x-amz-decoded-content-length": "10"}
    signed = sigv4.sign_request("PUT", cluster.endpoint + path, headers, sigv4.STREAMING_PAYLOAD,
                                cluster.access_key, cluster.secret_key)
    body = size_line + b";chunk-signature=" + b"0" * 64 + b"\r\n" + b"x" * 64
    signed["content-length"] = str(len(body) + 1000)  # the client "keeps sending"
    head = f"PUT {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in signed.items()) + "\r\n"
    return head.encode() + body


def test_chunk_size_minus_one_is_refused_at_once(cluster, s3):
    bucket = unique("chunk")
    s3.create_bucket(Bucket=bucket)
    for size_line in (b"-1", b"-0", b"0x10", b"zz", b"ffffffffffffffffff"):
        line, took = _raw(cluster, _chunked_put(cluster, f"/{bucket}/k", size_line))
        assert line.startswith(b"HTTP/1.1 400") or line.startswith(b"HTTP/1.1 403"), (size_line, line)
        assert took < 3, (size_line, took)
    assert s3.list_buckets()["Buckets"]  # still answering
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="k")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_presigned_put_with_an_added_kms_key_is_refused(cluster, s3):
    bucket = unique("presign")
    s3.create_bucket(Bucket=bucket)
    url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=300)
    request = urllib.request.Request(url, data=b"secret", method="PUT", headers={
        "x-amz-server-side-encryption": "aws:kms", "x-amz-server-side-encryption-aws-kms-key-id": "attacker"})
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(request, timeout=10)
    assert http.value.code == 403 and b"AccessDenied" in http.value.read()
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="k")
    plain = urllib.request.Request(url, data=b"fine", method="PUT")
    with urllib.request.urlopen(plain, timeout=10) as response:
        assert response.status == 200  # the same URL without the added header works


def test_range_beyond_int64_is_416_not_500(cluster, s3):
    bucket = unique("range")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="k", Body=b"0123456789")
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="k", Range="bytes=9223372036854775808-")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 416
    assert s3.get_object(Bucket=bucket, Key="k", Range="bytes=2-99999999999999999999999")["Body"].read() == b"23456789"


def test_bucket_encryption_refuses_a_missing_or_disabled_key(cluster, s3):
    bucket = unique("enc")
    s3.create_bucket(Bucket=bucket)

    def put(key_id):
        s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [
            {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_id}}]})
    with pytest.raises(ClientError) as exc:
        put("no-such-key-" + unique("k"))
    assert error_code(exc.value) == "KMS.NotFoundException"
    key = unique("disabled-key")
    cluster.cli("key", "create", key)
    cluster.cli("key", "disable", key)
    with pytest.raises(ClientError) as exc:
        put(key)
    assert error_code(exc.value) == "KMS.DisabledException"
    result = cluster.cli("encrypt", "set", "sse-kms", key, bucket, check=False)
    assert result.returncode != 0
    with pytest.raises(ClientError) as exc:
        s3.get_bucket_encryption(Bucket=bucket)
    assert error_code(exc.value) == "ServerSideEncryptionConfigurationNotFoundError"
    cluster.cli("key", "enable", key)
    put(key)  # the same key, usable again, is accepted


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_fuzz_run_gets_no_server_errors_and_no_hung_connections(cluster, s3):
    bucket = unique("fuzz")
    s3.create_bucket(Bucket=bucket)
    for i in range(5):
        s3.put_object(Bucket=bucket, Key=f"fuzz-{i}", Body=os.urandom(1000 * i))
    port = int(urlsplit(cluster.endpoint).port)
    target = hostile.Target("127.0.0.1", port, cluster.access_key, cluster.secret_key, bucket)
    tally = asyncio.run(hostile.run(target, FUZZ_REQUESTS, concurrency=8, seed=7, timeout=20))
    assert sum(tally.statuses.values()) + len(tally.hung) == FUZZ_REQUESTS
    assert tally.server_errors == [], tally.server_errors[:10]
    assert tally.hung == [], tally.hung[:10]
    assert sum(n for s, n in tally.statuses.items() if isinstance(s, int) and s < 300) > 0  # not all refused
    assert cluster.process.poll() is None
    assert all(_alive(svc["pid"]) for svc in cluster.cluster_json()["services"])
    for i in range(5):  # the gateway still serves, and the fuzzed objects are intact
        assert len(s3.get_object(Bucket=bucket, Key=f"fuzz-{i}")["Body"].read()) == 1000 * i
