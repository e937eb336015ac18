"""Fail fast (issue 8, item 5) on a real `sealstore run` cluster with real HTTP clients.

- A PUT naming a missing or disabled key (its own header or the bucket default) is refused
  before the body: with `Expect: 100-continue` the error comes instead of the 100.
- A 200 MiB PUT under a disabled key is refused after a few MiB at most, not 200 MiB, also
  when the key was disabled so recently that only the worker's GenerateKey knows.
- Conditional GETs answer 304/412 with the kms stopped (SIGSTOP): no kms call is made.
"""
from __future__ import annotations

import datetime
import os
import signal
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest
from botocore.exceptions import ClientError, ReadTimeoutError

from sealstore import config, rpc, sigv4
from sealstore.v1 import kms_pb2, kms_pb2_grpc
from tests.cluster.harness import error_code, unique

MiB = 1 << 20
BIG = 200 * MiB


def admin_kms(cluster) -> kms_pb2_grpc.KeyServiceStub:
    """The kms over gRPC as the admin (faster than the command line: the tests race a cache)."""
    channel = rpc.sync_channel(config.certs_dir(cluster.data), "admin", config.load_topology(cluster.data).kms,
                               server="kms")
    return kms_pb2_grpc.KeyServiceStub(channel)


def put_head(cluster, bucket: str, key: str, length: int, headers: dict) -> bytes:
    """A signed HTTP/1.1 PUT head (UNSIGNED-PAYLOAD body of `length` bytes)."""
    netloc = urlsplit(cluster.endpoint).netloc
    signed = sigv4.sign_request("PUT", f"{cluster.endpoint}/{bucket}/{key}",
                                {"host": netloc, "content-length": str(length), **headers},
                                "UNSIGNED-PAYLOAD", cluster.access_key, cluster.secret_key)
    lines = [f"PUT /{bucket}/{key} HTTP/1.1", *(f"{k}: {v}" for k, v in signed.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def connect(cluster) -> socket.socket:
    parts = urlsplit(cluster.endpoint)
    return socket.create_connection((parts.hostname, parts.port), timeout=30)


def read_response(sock: socket.socket) -> tuple[int, bytes, bytes]:
    """(status, head, body) of the next response, 100 Continue included."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            raise ConnectionError(f"closed after {data!r}")
        data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        piece = sock.recv(65536)
        if not piece:
            break
        rest += piece
    return status, head, rest


def kms_headers(key_name: str) -> dict:
    return {"x-amz-server-side-encryption": "aws:kms", "x-amz-server-side-encryption-aws-kms-key-id": key_name}


@pytest.fixture(scope="module")
def keys(cluster):
    """A usable key and a disabled one, and a bucket whose default is the disabled one."""
    usable, disabled = unique("ff-ok"), unique("ff-off")
    kms = admin_kms(cluster)
    for name in (usable, disabled):
        kms.CreateKey(kms_pb2.CreateKeyRequest(name=name), timeout=10)
    s3 = cluster.s3()
    bucket, default_bucket = unique("ff"), unique("ff-default")
    s3.create_bucket(Bucket=bucket)
    s3.create_bucket(Bucket=default_bucket)
    cluster.cli("encrypt", "set", "sse-kms", disabled, default_bucket)
    kms.DisableKey(kms_pb2.KeyRequest(name=disabled), timeout=10)
    return {"usable": usable, "disabled": disabled, "bucket": bucket, "default_bucket": default_bucket}


@pytest.mark.parametrize("case", ["missing", "disabled", "bucket-default-disabled"])
def test_unusable_key_is_refused_instead_of_100_continue(cluster, keys, case):
    bucket, headers, expected = keys["bucket"], {}, "KMS.DisabledException"
    if case == "missing":
        headers, expected = kms_headers(unique("no-such-key")), "KMS.NotFoundException"
    elif case == "disabled":
        headers = kms_headers(keys["disabled"])
    else:
        bucket = keys["default_bucket"]
    with connect(cluster) as sock:
        sock.sendall(put_head(cluster, bucket, "obj", BIG, {"expect": "100-continue", **headers}))
        status, head, body = read_response(sock)  # not one body byte sent
        # The announced body was never read: the gateway closes the connection (after its
        # short lingering time), as S3 does.
        sock.settimeout(10)
        assert sock.recv(1) == b""
    assert b"connection: close" in head.lower(), head
    assert status == 400, head
    assert f"<Code>{expected}</Code>".encode() in body, body
    assert "obj" not in [o["Key"] for o in cluster.s3().list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_usable_key_gets_100_continue(cluster, keys):
    with connect(cluster) as sock:
        sock.sendall(put_head(cluster, keys["bucket"], "ok", 5, {"expect": "100-continue",
                                                                 **kms_headers(keys["usable"])}))
        status, head, _ = read_response(sock)
        assert status == 100, head
        sock.sendall(b"hello")
        status, head, _ = read_response(sock)
    assert status == 200, head
    assert cluster.s3().get_object(Bucket=keys["bucket"], Key="ok")["Body"].read() == b"hello"


class StreamingPut:
    """Sends a PUT head and up to 200 MiB of body generated on the fly (never held in memory),
    while another thread waits for the answer; records how much body was sent by then."""

    def __init__(self, cluster, bucket: str, key: str, headers: dict, expect_continue: bool = False):
        self.sock = connect(cluster)
        self.head = put_head(cluster, bucket, key, BIG, {**headers, **({"expect": "100-continue"}
                                                                      if expect_continue else {})})
        self.expect_continue = expect_continue
        self.sent = 0
        self.answered_at_bytes: int | None = None
        self.answered = threading.Event()
        self.body_started = self.body_answered = 0.0

    def run(self) -> tuple[int, bytes]:
        self.sock.sendall(self.head)
        statuses = []
        if self.expect_continue:
            status, head, _ = read_response(self.sock)
            statuses.append(status)
            if status != 100:
                return status, head
        sender = threading.Thread(target=self._send, daemon=True)
        self.body_started = time.monotonic()
        sender.start()
        try:
            status, head, body = read_response(self.sock)
        finally:
            self.answered_at_bytes = self.sent
            self.body_answered = time.monotonic()
            self.answered.set()
            sender.join(10)
            self.sock.close()
        self.continued = statuses == [100]
        return status, body

    def _send(self) -> None:
        chunk = os.urandom(MiB)
        try:
            while self.sent < BIG and not self.answered.is_set():
                self.sock.sendall(chunk)
                self.sent += len(chunk)
        except OSError:
            pass  # the gateway closed the connection after its answer


def test_big_put_under_disabled_key_is_refused_before_the_body(cluster, keys):
    put = StreamingPut(cluster, keys["bucket"], "big", kms_headers(keys["disabled"]))
    status, body = put.run()
    assert status == 400 and b"KMS.DisabledException" in body, body
    assert put.answered_at_bytes < 32 * MiB, f"{put.answered_at_bytes / MiB:.0f} MiB sent before the answer"
    assert put.body_answered - put.body_started < 1.0


def test_key_disabled_after_the_gateway_checked_it_is_refused_by_the_worker_at_once(cluster, keys):
    """The gateway took the key as usable (its short cache); the worker's GenerateKey refuses,
    answers at once, and the gateway stops streaming and forgets the key."""
    kms, s3 = admin_kms(cluster), cluster.s3()
    key_name, bucket = unique("ff-late"), keys["bucket"]
    kms.CreateKey(kms_pb2.CreateKeyRequest(name=key_name), timeout=10)
    s3.put_object(Bucket=bucket, Key="warm", Body=b"x", ServerSideEncryption="aws:kms", SSEKMSKeyId=key_name)
    kms.DisableKey(kms_pb2.KeyRequest(name=key_name), timeout=10)
    put = StreamingPut(cluster, bucket, "late", kms_headers(key_name), expect_continue=True)
    status, body = put.run()
    assert put.continued, "the gateway's key cache had already expired: this test needs it fresh"
    assert status == 400 and b"KMS.DisabledException" in body, body
    assert put.answered_at_bytes < 64 * MiB, f"{put.answered_at_bytes / MiB:.0f} MiB sent before the answer"
    # The failed upload made the gateway forget the key: the next PUT is refused before its body.
    with connect(cluster) as sock:
        sock.sendall(put_head(cluster, bucket, "late", BIG, {"expect": "100-continue", **kms_headers(key_name)}))
        status, head, body = read_response(sock)
    assert status == 400 and b"KMS.DisabledException" in body, head
    assert "late" not in [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_small_put_under_a_key_disabled_after_the_gateway_checked_it(cluster, keys):
    """The whole body fits in one write, so the worker's refusal comes after the gateway sent
    everything: still the worker's typed error, not an internal one."""
    kms, s3 = admin_kms(cluster), cluster.s3()
    key_name, bucket = unique("ff-late-small"), keys["bucket"]
    kms.CreateKey(kms_pb2.CreateKeyRequest(name=key_name), timeout=10)
    s3.put_object(Bucket=bucket, Key="warm-small", Body=b"x", ServerSideEncryption="aws:kms", SSEKMSKeyId=key_name)
    kms.DisableKey(kms_pb2.KeyRequest(name=key_name), timeout=10)
    for _ in range(2):  # by the worker, then by the gateway's own check
        with pytest.raises(ClientError) as exc:
            s3.put_object(Bucket=bucket, Key="late-small", Body=b"y", ServerSideEncryption="aws:kms",
                          SSEKMSKeyId=key_name)
        assert error_code(exc.value) == "KMS.DisabledException"


class StoppedKms:
    """SIGSTOP on the cluster's kms: it keeps its port but answers nothing, so any kms call
    hangs (stopped rather than killed, so that no supervisor restarts it meanwhile)."""

    def __init__(self, cluster):
        self.pid = cluster.service("kms")["pid"]

    def __enter__(self):
        os.kill(self.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc):
        os.kill(self.pid, signal.SIGCONT)


def status_of(call) -> int:
    try:
        response = call()
    except ClientError as e:
        return e.response["ResponseMetadata"]["HTTPStatusCode"]
    return response["ResponseMetadata"]["HTTPStatusCode"]


def test_conditional_reads_need_no_kms(cluster, keys):
    s3, bucket = cluster.s3(), keys["bucket"]
    body = os.urandom(2 * MiB + 17)
    put = s3.put_object(Bucket=bucket, Key="cond", Body=body, ServerSideEncryption="aws:kms",
                        SSEKMSKeyId=keys["usable"])
    etag = put["ETag"]
    modified = s3.head_object(Bucket=bucket, Key="cond")["LastModified"]
    before, after = modified - datetime.timedelta(hours=1), modified + datetime.timedelta(hours=1)
    impatient = cluster.s3(read_timeout=3, connect_timeout=3)
    with StoppedKms(cluster):
        for method in (s3.get_object, s3.head_object):
            def read(**conditions):
                return status_of(lambda: method(Bucket=bucket, Key="cond", **conditions))
            assert read(IfNoneMatch=etag) == 304
            assert read(IfModifiedSince=after) == 304
            assert read(IfMatch='"not-the-etag"') == 412
            assert read(IfUnmodifiedSince=before) == 412
            # RFC 7232 order, as S3 documents it: If-None-Match decides over If-Modified-Since,
            # and a 412 wins over a 304.
            assert read(IfNoneMatch=etag, IfModifiedSince=before) == 304
            assert read(IfMatch='"not-the-etag"', IfNoneMatch=etag) == 412
            # HEAD needs no key at all, so it passes with the kms stopped.
            if method is s3.head_object:
                assert read(IfMatch=etag, IfUnmodifiedSince=before) == 200
                assert read(IfNoneMatch='"other"', IfModifiedSince=after) == 200
        # The proof that the kms is out of reach: a GET that must decrypt gets no answer.
        with pytest.raises(ReadTimeoutError):
            impatient.get_object(Bucket=bucket, Key="cond", IfNoneMatch='"other"')["Body"].read()
    # Back: conditions that hold return the object.
    got = s3.get_object(Bucket=bucket, Key="cond", IfMatch=etag, IfUnmodifiedSince=after,
                        IfNoneMatch='"other"', IfModifiedSince=before)
    assert got["Body"].read() == body
    got = s3.get_object(Bucket=bucket, Key="cond", IfMatch=etag, IfUnmodifiedSince=before)
    assert got["Body"].read() == body  # If-Match holds, so If-Unmodified-Since is not looked at


def test_304_carries_the_validators(cluster, keys):
    s3, bucket = cluster.s3(), keys["bucket"]
    etag = s3.put_object(Bucket=bucket, Key="validators", Body=b"v")["ETag"]
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="validators", IfNoneMatch=etag)
    headers = exc.value.response["ResponseMetadata"]["HTTPHeaders"]
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    assert headers["etag"] == etag and "last-modified" in headers
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="validators", IfMatch='"nope"')
    assert error_code(exc.value) == "PreconditionFailed"
