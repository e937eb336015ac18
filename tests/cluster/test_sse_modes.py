"""SSE-S3, encryption by default, SSE-C over HTTPS and key ids as named, end to end: boto3 against
a real cluster, over the gateway's HTTPS endpoint (trusting only the cluster's dev CA) and HTTP."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import ssl
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import minio
import minio.sse
import pytest
import urllib3
from botocore.exceptions import ClientError
from google.protobuf import json_format

from sealstore import sigv4
from sealstore.v1 import types_pb2
from tests.cluster.harness import start_cluster, stop_cluster, unique

ARN_OF = "arn:aws:kms:us-east-1:123456789012:key/{}"


def stored_meta(data: Path, bucket: str, key: str) -> types_pb2.ObjectMeta:
    for path in (data / "drives").rglob("meta.json"):
        raw = json.loads(path.read_text())
        if raw.get("bucket") == bucket and raw.get("key") == key:
            return json_format.ParseDict(raw, types_pb2.ObjectMeta(), ignore_unknown_fields=True)
    raise AssertionError(f"no meta.json for {bucket}/{key} on any drive")


def drive_bytes(data: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (data / "drives").rglob("*") if p.is_file())


def status_and_code(call) -> tuple[int, str]:
    try:
        call()
    except ClientError as e:
        return e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"]
    return 200, ""


def absent(s3, bucket: str, key: str) -> bool:
    return status_and_code(lambda: s3.head_object(Bucket=bucket, Key=key))[0] == 404


@pytest.fixture
def https(cluster):
    assert cluster.https_endpoint.startswith("https://127.0.0.1:")
    return cluster.s3(https=True)


def ssec(key: bytes) -> dict:
    return {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": key}  # boto3 adds the key's MD5


def ssec_with_md5(key: bytes, md5: bytes) -> dict:
    """As the client sends it, MD5 given (boto3 then sends both as they are)."""
    return {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": base64.b64encode(key).decode(),
            "SSECustomerKeyMD5": base64.b64encode(md5).decode()}


# -- HTTPS -----------------------------------------------------------------------------------------

def test_https_endpoint_is_trusted_through_the_dev_ca_only(cluster, https):
    bucket = unique("tls")
    https.create_bucket(Bucket=bucket)
    assert https.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    # A client that trusts only the system CAs refuses the certificate: it comes from the dev CA.
    with pytest.raises(Exception) as exc:
        urllib.request.urlopen(cluster.https_endpoint + "/", timeout=10)
    assert "CERTIFICATE_VERIFY_FAILED" in repr(exc.value)
    # The same CA file makes it trusted, for both names in the certificate.
    context = ssl.create_default_context(cafile=cluster.ca_bundle)
    for host in ("127.0.0.1", "localhost"):
        url = cluster.https_endpoint.replace("127.0.0.1", host) + "/"
        with pytest.raises(urllib.error.HTTPError) as denied:  # anonymous: S3's 403, over verified TLS
            urllib.request.urlopen(url, timeout=10, context=context)
        assert denied.value.code == 403


# -- SSE-S3 and encryption by default -----------------------------------------------------------

def test_sse_s3_round_trip(cluster, https):
    bucket = unique("sse-s3")
    https.create_bucket(Bucket=bucket)
    body = os.urandom(300_000)
    put = https.put_object(Bucket=bucket, Key="o", Body=body, ServerSideEncryption="AES256")
    assert put["ServerSideEncryption"] == "AES256" and "SSEKMSKeyId" not in put
    assert put["ETag"].strip('"') == hashlib.md5(body).hexdigest()  # AWS: SSE-S3 ETags are the MD5
    got = https.get_object(Bucket=bucket, Key="o")
    assert got["Body"].read() == body and got["ServerSideEncryption"] == "AES256"
    ranged = https.get_object(Bucket=bucket, Key="o", Range="bytes=70000-70009")
    assert ranged["Body"].read() == body[70000:70010]
    assert https.head_object(Bucket=bucket, Key="o")["ServerSideEncryption"] == "AES256"
    enc = stored_meta(cluster.data, bucket, "o").encryption
    assert (enc.domain, enc.kms_key_name, enc.context_json) == ("SSE-S3", "sealstore-sse-s3", "")
    assert body[100_000:100_064] not in drive_bytes(cluster.data)


def test_bucket_default_aes256(cluster, s3):
    bucket = unique("default-aes")
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [
        {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
    rule = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}
    assert s3.put_object(Bucket=bucket, Key="o", Body=b"x")["ServerSideEncryption"] == "AES256"
    assert stored_meta(cluster.data, bucket, "o").encryption.domain == "SSE-S3"


def test_no_header_into_a_bucket_without_default_is_stored_with_sse_s3(cluster, s3):
    bucket = unique("by-default")
    s3.create_bucket(Bucket=bucket)
    canary = b"BY-DEFAULT-CANARY-" + uuid.uuid4().hex.encode()
    body = b"".join(canary + os.urandom(1000) for _ in range(400))  # a shard file, not inline
    put = s3.put_object(Bucket=bucket, Key="plain-request", Body=body)
    assert put["ServerSideEncryption"] == "AES256"
    # Inline in meta.json (base64 there, so only the envelope below tells it is encrypted).
    small = s3.put_object(Bucket=bucket, Key="small", Body=canary)
    assert small["ServerSideEncryption"] == "AES256"
    assert s3.get_object(Bucket=bucket, Key="plain-request")["Body"].read() == body
    assert s3.get_object(Bucket=bucket, Key="small")["Body"].read() == canary
    for key in ("plain-request", "small"):
        assert stored_meta(cluster.data, bucket, key).encryption.domain == "SSE-S3"
    assert canary not in drive_bytes(cluster.data)


def test_encryption_by_default_can_be_turned_off(tmp_path_factory):
    running = start_cluster(tmp_path_factory.mktemp("plain"), {"SEALSTORE_ENCRYPT_BY_DEFAULT": "0",
                                                             "SEALSTORE_GATEWAY_HTTPS_ADDR": "off"})
    try:
        assert running.https_endpoint == ""
        s3 = running.s3()
        s3.create_bucket(Bucket="plain")
        canary = b"PLAIN-CANARY-" + uuid.uuid4().hex.encode()
        put = s3.put_object(Bucket="plain", Key="o", Body=canary * 10_000)  # shard files, not inline
        assert "ServerSideEncryption" not in put
        assert not stored_meta(running.data, "plain", "o").HasField("encryption")
        assert canary in drive_bytes(running.data)  # the scan above would have seen plaintext
        assert s3.put_object(Bucket="plain", Key="asked", Body=b"x",
                             ServerSideEncryption="AES256")["ServerSideEncryption"] == "AES256"
    finally:
        stop_cluster(running)


# -- key ids as named, aws:kms without a key id ---------------------------------------------------

def test_key_id_comes_back_as_named(cluster, s3):
    key, bucket = unique("as-named"), unique("as-named")
    cluster.cli("key", "create", key)
    s3.create_bucket(Bucket=bucket)
    for key_id in (key, ARN_OF.format(key), f"arn:aws:kms:{key}"):
        put = s3.put_object(Bucket=bucket, Key=key_id, Body=b"x", ServerSideEncryption="aws:kms", SSEKMSKeyId=key_id)
        assert put["SSEKMSKeyId"] == key_id
        assert s3.head_object(Bucket=bucket, Key=key_id)["SSEKMSKeyId"] == key_id
        assert s3.get_object(Bucket=bucket, Key=key_id)["SSEKMSKeyId"] == key_id
        assert stored_meta(cluster.data, bucket, key_id).encryption.kms_key_name == key
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [
        {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": ARN_OF.format(key)}}]})
    assert s3.put_object(Bucket=bucket, Key="default", Body=b"x")["SSEKMSKeyId"] == ARN_OF.format(key)
    # aws:kms without a key id takes the bucket default's key, as the bucket names it.
    put = s3.put_object(Bucket=bucket, Key="no-id", Body=b"x", ServerSideEncryption="aws:kms")
    assert put["SSEKMSKeyId"] == ARN_OF.format(key)


def test_aws_kms_without_key_id_uses_the_deployment_key(cluster, s3):
    bucket = unique("no-key-id")
    s3.create_bucket(Bucket=bucket)
    put = s3.put_object(Bucket=bucket, Key="o", Body=b"x", ServerSideEncryption="aws:kms")
    assert (put["ServerSideEncryption"], put["SSEKMSKeyId"]) == ("aws:kms", "sealstore-default")
    assert s3.get_object(Bucket=bucket, Key="o")["Body"].read() == b"x"
    # A bucket default of aws:kms naming no key means the same key.
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [
        {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms"}}]})
    assert s3.put_object(Bucket=bucket, Key="d", Body=b"y")["SSEKMSKeyId"] == "sealstore-default"


# -- SSE-C -------------------------------------------------------------------------------------------

def test_sse_c_put_get_head_with_right_wrong_and_missing_key(cluster, https):
    bucket = unique("sse-c")
    https.create_bucket(Bucket=bucket)
    customer_key, other_key = os.urandom(32), os.urandom(32)
    md5 = base64.b64encode(hashlib.md5(customer_key).digest()).decode()
    body = os.urandom(200_000)
    put = https.put_object(Bucket=bucket, Key="c", Body=body, **ssec(customer_key))
    assert (put["SSECustomerAlgorithm"], put["SSECustomerKeyMD5"]) == ("AES256", md5)
    assert "ServerSideEncryption" not in put
    assert put["ETag"].strip('"') != hashlib.md5(body).hexdigest()  # AWS: no MD5 ETag for SSE-C

    got = https.get_object(Bucket=bucket, Key="c", **ssec(customer_key))
    assert got["Body"].read() == body
    assert (got["SSECustomerAlgorithm"], got["SSECustomerKeyMD5"]) == ("AES256", md5)
    ranged = https.get_object(Bucket=bucket, Key="c", Range="bytes=-100", **ssec(customer_key))
    assert ranged["Body"].read() == body[-100:]
    head = https.head_object(Bucket=bucket, Key="c", **ssec(customer_key))
    assert head["ContentLength"] == len(body) and head["SSECustomerKeyMD5"] == md5

    for call in (https.get_object, https.head_object):
        assert status_and_code(lambda: call(Bucket=bucket, Key="c", **ssec(other_key)))[0] == 403
        assert status_and_code(lambda: call(Bucket=bucket, Key="c"))[0] == 400
    assert status_and_code(lambda: https.get_object(Bucket=bucket, Key="c", **ssec(other_key))) == (403, "AccessDenied")
    assert status_and_code(lambda: https.get_object(Bucket=bucket, Key="c")) == (400, "InvalidRequest")

    # SSE-C parameters on an object that is not SSE-C.
    https.put_object(Bucket=bucket, Key="s3", Body=b"x", ServerSideEncryption="AES256")
    assert status_and_code(lambda: https.get_object(Bucket=bucket, Key="s3", **ssec(customer_key))) \
        == (400, "InvalidRequest")

    enc = stored_meta(cluster.data, bucket, "c").encryption
    assert enc.domain == "SSE-C" and not enc.kms_key_name and len(enc.customer_key_check) == 32
    on_disk = drive_bytes(cluster.data)
    assert body[50_000:50_064] not in on_disk and customer_key not in on_disk


def test_sse_c_over_plain_http_is_refused_and_nothing_written(cluster, https, s3):
    bucket = unique("sse-c-http")
    https.create_bucket(Bucket=bucket)
    customer_key = os.urandom(32)
    status, code = status_and_code(lambda: s3.put_object(Bucket=bucket, Key="c", Body=b"x", **ssec(customer_key)))
    assert (status, code) == (400, "InvalidRequest")
    assert absent(s3, bucket, "c")
    # Also the read of an SSE-C object, and a forged X-Forwarded-Proto changes nothing.
    https.put_object(Bucket=bucket, Key="c2", Body=b"y", **ssec(customer_key))
    assert status_and_code(lambda: s3.get_object(Bucket=bucket, Key="c2", **ssec(customer_key))) \
        == (400, "InvalidRequest")
    url = f"{cluster.endpoint}/{bucket}/c3"
    md5 = base64.b64encode(hashlib.md5(customer_key).digest()).decode()
    headers = {"x-forwarded-proto": "https", "x-amz-server-side-encryption-customer-algorithm": "AES256",
               "x-amz-server-side-encryption-customer-key": base64.b64encode(customer_key).decode(),
               "x-amz-server-side-encryption-customer-key-md5": md5}
    signed = sigv4.sign_request("PUT", url, headers, hashlib.sha256(b"z").hexdigest(),
                                cluster.access_key, cluster.secret_key)
    signed.pop("host")
    request = urllib.request.Request(url, data=b"z", method="PUT", headers=signed)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400 and b"secure connection" in refused.value.read()
    assert absent(s3, bucket, "c3")


@pytest.mark.parametrize("extra", [
    {"ServerSideEncryption": "aws:kms"},
    {"ServerSideEncryption": "AES256"},
    {"SSEKMSKeyId": "some-key"},
])
def test_sse_c_with_another_mode_is_invalid_argument(https, extra):
    bucket = unique("contra")
    https.create_bucket(Bucket=bucket)
    status = status_and_code(lambda: https.put_object(Bucket=bucket, Key="c", Body=b"x",
                                                      **ssec(os.urandom(32)), **extra))
    assert status == (400, "InvalidArgument")
    assert absent(https, bucket, "c")


@pytest.mark.parametrize("params", [
    {"SSEKMSKeyId": "some-key"},                                     # a key id without aws:kms
    {"SSEKMSEncryptionContext": base64.b64encode(b'{"a":"b"}').decode()},  # a context without aws:kms
    {"ServerSideEncryption": "AES256", "SSEKMSKeyId": "some-key"},   # AES256 with a key id
    {"ServerSideEncryption": "rot13"},                               # an unknown algorithm
])
def test_contradictory_headers_are_invalid_argument(s3, params):
    bucket = unique("contra")
    s3.create_bucket(Bucket=bucket)
    assert status_and_code(lambda: s3.put_object(Bucket=bucket, Key="c", Body=b"x", **params)) \
        == (400, "InvalidArgument")
    assert absent(s3, bucket, "c")


def test_bad_customer_key_headers(https):
    bucket = unique("bad-ssec")
    https.create_bucket(Bucket=bucket)
    key = os.urandom(32)
    cases = [
        (ssec_with_md5(key, hashlib.md5(b"other").digest()), (400, "InvalidArgument")),
        (ssec(os.urandom(16)), (400, "InvalidArgument")),
        ({**ssec(key), "SSECustomerAlgorithm": "AES128"}, (400, "InvalidEncryptionAlgorithmError")),
    ]
    for params, expected in cases:
        assert status_and_code(lambda: https.put_object(Bucket=bucket, Key="c", Body=b"x", **params)) == expected
    assert absent(https, bucket, "c")


def test_customer_key_never_reaches_a_log_or_a_drive(cluster, https):
    bucket = unique("ssec-logs")
    https.create_bucket(Bucket=bucket)
    customer_key = os.urandom(32)
    https.put_object(Bucket=bucket, Key="c", Body=os.urandom(5000), **ssec(customer_key))
    https.get_object(Bucket=bucket, Key="c", **ssec(customer_key))["Body"].read()
    # Failures log their one refusal line: a wrong key and a mismatched MD5 must not put it there either.
    status_and_code(lambda: https.get_object(Bucket=bucket, Key="c", **ssec(os.urandom(32))))
    assert status_and_code(lambda: https.put_object(Bucket=bucket, Key="d", Body=b"x",
                                                    **ssec_with_md5(customer_key, b"0" * 16)))[0] == 400
    needles = [customer_key, customer_key.hex().encode(), base64.b64encode(customer_key)]
    files = [p for p in cluster.data.rglob("*") if p.is_file() and "certs" not in p.parts]
    assert any(p.suffix == ".log" for p in files)
    for path in [*files, cluster.output]:
        content = path.read_bytes()
        for needle in needles:
            assert needle not in content, f"the customer key is in {path}"


def test_aws_cli_and_minio_py_over_https_with_the_readme_settings(cluster, https, tmp_path):
    """The client settings the README gives: the AWS CLI with --ca-bundle (SSE-C from a key file),
    minio-py with an HTTP client that trusts the CA."""
    bucket = unique("cli-tls")
    https.create_bucket(Bucket=bucket)
    key_file, src, dst = tmp_path / "customer.key", tmp_path / "src.bin", tmp_path / "dst.bin"
    customer_key, body = os.urandom(32), os.urandom(100_000)
    key_file.write_bytes(customer_key)
    src.write_bytes(body)
    env = {**cluster.env, "AWS_ACCESS_KEY_ID": cluster.access_key, "AWS_SECRET_ACCESS_KEY": cluster.secret_key,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}

    def aws(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(Path(sys.executable).parent / "aws"), "--endpoint-url", cluster.https_endpoint,
                               "--ca-bundle", cluster.ca_bundle, *args], env=env, capture_output=True, timeout=120)

    sse_c = ["--sse-c", "AES256", "--sse-c-key", f"fileb://{key_file}"]
    put = aws("s3", "cp", str(src), f"s3://{bucket}/c.bin", *sse_c)
    assert put.returncode == 0, put.stderr
    got = aws("s3", "cp", f"s3://{bucket}/c.bin", str(dst), *sse_c)
    assert got.returncode == 0, got.stderr
    assert dst.read_bytes() == body
    missing = aws("s3", "cp", f"s3://{bucket}/c.bin", str(tmp_path / "no.bin"))
    assert missing.returncode != 0 and not (tmp_path / "no.bin").exists()
    assert stored_meta(cluster.data, bucket, "c.bin").encryption.domain == "SSE-C"

    http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=cluster.ca_bundle)
    client = minio.Minio(cluster.https_endpoint.removeprefix("https://"), access_key=cluster.access_key,
                         secret_key=cluster.secret_key, secure=True, http_client=http)
    customer = minio.sse.SseCustomerKey(customer_key)
    client.put_object(bucket, "m.bin", io.BytesIO(body), len(body), sse=customer)
    assert client.get_object(bucket, "m.bin", ssec=customer).read() == body
    assert client.stat_object(bucket, "m.bin", ssec=customer).size == len(body)
