"""The worker fails fast: a PUT naming an unusable key is answered without reading its body,
and a conditional GET is answered 304/412 from metadata, without a kms call (kms stopped).
Real worker, kms and storage processes (tests/crypto/conftest.py)."""
from __future__ import annotations

import os
import signal
import threading
import time

import grpc
import pytest

from sealstore import errors
from sealstore.v1 import crypto_pb2, kms_pb2

MiB = 1 << 20
BODY_MESSAGES = 200
"""200 MiB offered in 1 MiB messages: far more than gRPC's flow-control windows can hold."""
FAST_KEY = "fail-fast-key"
FAST_DISABLED = "fail-fast-disabled"


def typed(info) -> errors.SealstoreError:
    return errors.from_rpc_error(info.value)


@pytest.fixture(scope="module")
def worker(cluster):
    kms = cluster.admin_kms()
    for name in (FAST_KEY, FAST_DISABLED):
        kms.CreateKey(kms_pb2.CreateKeyRequest(name=name), timeout=10)
    kms.DisableKey(kms_pb2.KeyRequest(name=FAST_DISABLED), timeout=10)

    async def make(store):
        await store.make_bucket("fastbkt")
    cluster.run_store(make)
    return cluster.worker()


class CountingBody:
    """A PutObject request stream of 200 MiB, generated lazily (never held in memory),
    counting the data messages gRPC pulled from it."""

    def __init__(self, key_name: str):
        self.key_name = key_name
        self.pulled = 0
        self._chunk = os.urandom(MiB)

    def __iter__(self):
        header = crypto_pb2.PutObjectHeader(bucket="fastbkt", key="big", content_length=BODY_MESSAGES * MiB)
        header.sse_kms.CopyFrom(crypto_pb2.SseKmsRequest(key_name=self.key_name))
        yield crypto_pb2.PutObjectRequest(header=header)
        for _ in range(BODY_MESSAGES):
            self.pulled += 1
            yield crypto_pb2.PutObjectRequest(data=self._chunk)
        yield crypto_pb2.PutObjectRequest(end=crypto_pb2.PutObjectEnd(size=BODY_MESSAGES * MiB))


@pytest.mark.parametrize("key_name, expected", [("no-such-fail-fast-key", errors.KMSNotFound),
                                                (FAST_DISABLED, errors.KMSDisabled)])
def test_put_with_unusable_key_is_answered_without_reading_the_body(worker, key_name, expected):
    body = CountingBody(key_name)
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        worker.PutObject(iter(body), timeout=60)
    elapsed = time.monotonic() - start
    assert isinstance(typed(info), expected)
    # Only what the transport buffers before the answer arrives, never the whole body (the old
    # worker drained all 200 MiB before answering).
    assert body.pulled * MiB < 48 * MiB, f"the worker let {body.pulled} MiB be sent"
    assert elapsed < 5, elapsed


def _put_small(worker, key: str, data: bytes) -> crypto_pb2.ObjectMeta:
    def requests():
        header = crypto_pb2.PutObjectHeader(bucket="fastbkt", key=key, content_length=len(data))
        header.sse_kms.CopyFrom(crypto_pb2.SseKmsRequest(key_name=FAST_KEY))
        yield crypto_pb2.PutObjectRequest(header=header)
        yield crypto_pb2.PutObjectRequest(data=data)
        yield crypto_pb2.PutObjectRequest(end=crypto_pb2.PutObjectEnd(size=len(data)))
    return worker.PutObject(requests(), timeout=30).meta


def _get(worker, key: str, timeout: float, **conditions):
    request = crypto_pb2.GetObjectRequest(bucket="fastbkt", key=key)
    if conditions:
        request.conditions.CopyFrom(crypto_pb2.ObjectConditions(**conditions))
    messages = list(worker.GetObject(request, timeout=timeout))
    return messages[0].head, b"".join(m.data for m in messages[1:])


class StoppedKms:
    """SIGSTOP on the kms process: it holds its port but answers nothing, so any kms call
    hangs until its deadline. (Stopped rather than killed: nothing restarts it meanwhile.)"""

    def __init__(self, process):
        self.process = process

    def __enter__(self):
        os.kill(self.process.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc):
        os.kill(self.process.pid, signal.SIGCONT)


def test_conditional_get_answers_from_metadata_without_the_kms(worker, cluster):
    data = os.urandom(300_000)
    meta = _put_small(worker, "cond", data)
    etag, modified = meta.etag, meta.mtime_ns // 1_000_000_000
    with StoppedKms(cluster.kms.process):
        head, body = _get(worker, "cond", 5, if_none_match=f'"{etag}"')
        assert head.not_modified and body == b"" and head.meta.etag == etag
        head, body = _get(worker, "cond", 5, if_modified_since=modified + 10)
        assert head.not_modified and body == b""
        for conditions in ({"if_match": '"0123"'}, {"if_unmodified_since": modified - 10}):
            with pytest.raises(grpc.RpcError) as info:
                _get(worker, "cond", 5, **conditions)
            assert isinstance(typed(info), errors.PreconditionFailed), conditions
        # The proof that the kms is really out of reach: a read that needs the key hangs.
        with pytest.raises(grpc.RpcError) as info:
            _get(worker, "cond", 2, if_none_match='"other"')
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    head, body = _get(worker, "cond", 30, if_match=f'"{etag}"', if_none_match='"other"')
    assert not head.not_modified and body == data


def test_put_answer_is_not_delayed_by_a_slow_sender(worker):
    """The worker answers as soon as the key fails even while the sender is idle mid-body."""
    answered = threading.Event()

    def requests():
        header = crypto_pb2.PutObjectHeader(bucket="fastbkt", key="slow", content_length=10 * MiB)
        header.sse_kms.CopyFrom(crypto_pb2.SseKmsRequest(key_name=FAST_DISABLED))
        yield crypto_pb2.PutObjectRequest(header=header)
        yield crypto_pb2.PutObjectRequest(data=b"x" * 1000)
        answered.wait(20)  # a client that pauses: the old worker waited for the rest
    start = time.monotonic()
    try:
        with pytest.raises(grpc.RpcError) as info:
            worker.PutObject(requests(), timeout=15)
    finally:
        answered.set()
    assert isinstance(typed(info), errors.KMSDisabled)
    assert time.monotonic() - start < 5
