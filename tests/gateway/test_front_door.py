"""Issue 7, findings 5 and 6 (gateway side): authentication as S3 does it and a front door that
holds against hostile clients, over real loopback sockets against the runner `serve` uses."""
from __future__ import annotations

import asyncio
import datetime
import logging
import time
import xml.etree.ElementTree as ET
from urllib.parse import urlsplit

import pytest

from sealstore import sigv4
from services.gateway.limits import FailedAuthThrottle, Limits
from services.gateway.s3api import INT64_MAX, parse_range

from .frontdoor import AK, SK, GatewayTestServer, raw_exchange, signed_head

FAST = Limits(header_timeout=3, idle_timeout=30, body_timeout=1.5, auth_fail_burst=1000, auth_fail_rate=1000)


def serve(limits: Limits, fn, domains=("localhost",)):
    async def main():
        server = GatewayTestServer(limits, domains)
        await server.start_server()
        try:
            return await fn(server.port)
        finally:
            await server.close()
    return asyncio.run(main())


def status_and_code(response: bytes) -> tuple[int, str]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    code = ""
    if body.strip().startswith(b"<?xml"):
        code = ET.fromstring(body.strip()).findtext("Code")
    return status, code


def with_header(request: bytes, line: str) -> bytes:
    head, _, rest = request.partition(b"\r\n\r\n")
    return head + f"\r\n{line}".encode() + b"\r\n\r\n" + rest


# -- finding 5: unsigned inputs ---------------------------------------------------------------


def test_header_auth_refuses_an_unsigned_sse_header():
    async def go(port):
        request = signed_head("PUT", port, "/bucket/key", {"content-length": "0"})
        return await raw_exchange(port, with_header(request, "x-amz-server-side-encryption-aws-kms-key-id: attacker"))
    status, code = status_and_code(serve(FAST, go))
    assert (status, code) == (403, "AccessDenied")


def test_header_auth_refuses_a_signature_that_leaves_out_host():
    """A signature made for one virtual-host bucket must not open another: host must be signed."""
    async def go(port):
        now = datetime.datetime.now(datetime.timezone.utc)
        amz_date = sigv4.format_amz_date(now)
        headers = {"x-amz-content-sha256": [sigv4.EMPTY_SHA256], "x-amz-date": [amz_date]}
        signed = ("x-amz-content-sha256", "x-amz-date")
        canonical = sigv4.canonical_request("GET", "/key", "", headers, signed, sigv4.EMPTY_SHA256)
        scope = sigv4.scope(amz_date[:8], "us-east-1")
        sig = sigv4.signature(sigv4.signing_key(SK, amz_date[:8], "us-east-1"),
                              sigv4.string_to_sign(amz_date, scope, canonical))
        auth = f"{sigv4.ALGORITHM} Credential={AK}/{scope}, SignedHeaders={';'.join(signed)}, Signature={sig}"
        request = (f"GET /key HTTP/1.1\r\nHost: other-bucket.localhost:{port}\r\nx-amz-date: {amz_date}\r\n"
                   f"x-amz-content-sha256: {sigv4.EMPTY_SHA256}\r\nAuthorization: {auth}\r\n\r\n")
        return await raw_exchange(port, request.encode())
    assert status_and_code(serve(FAST, go)) == (403, "AccessDenied")


def test_virtual_host_signature_is_bound_to_its_bucket():
    async def go(port):
        request = signed_head("GET", port, "/key", host=f"bucket-a.localhost:{port}")
        moved = request.replace(f"bucket-a.localhost:{port}".encode(), f"bucket-b.localhost:{port}".encode())
        return await raw_exchange(port, moved)
    assert status_and_code(serve(FAST, go)) == (403, "SignatureDoesNotMatch")


def test_header_auth_requires_x_amz_content_sha256():
    async def go(port):
        now = datetime.datetime.now(datetime.timezone.utc)
        amz_date = sigv4.format_amz_date(now)
        host = f"127.0.0.1:{port}"
        headers = {"host": [host], "x-amz-date": [amz_date]}
        signed = ("host", "x-amz-date")
        canonical = sigv4.canonical_request("GET", "/", "", headers, signed, sigv4.EMPTY_SHA256)
        scope = sigv4.scope(amz_date[:8], "us-east-1")
        sig = sigv4.signature(sigv4.signing_key(SK, amz_date[:8], "us-east-1"),
                              sigv4.string_to_sign(amz_date, scope, canonical))
        auth = f"{sigv4.ALGORITHM} Credential={AK}/{scope}, SignedHeaders=host;x-amz-date, Signature={sig}"
        return await raw_exchange(port, f"GET / HTTP/1.1\r\nHost: {host}\r\nx-amz-date: {amz_date}\r\n"
                                        f"Authorization: {auth}\r\n\r\n".encode())
    assert status_and_code(serve(FAST, go)) == (400, "InvalidRequest")


def test_presigned_put_refuses_an_added_kms_key_header():
    async def go(port):
        url = sigv4.presign_url("PUT", f"http://127.0.0.1:{port}/bucket/key", AK, SK)
        parts = urlsplit(url)
        request = (f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Length: 4\r\n"
                   "x-amz-server-side-encryption: aws:kms\r\n"
                   "x-amz-server-side-encryption-aws-kms-key-id: attacker-key\r\n\r\ndata")
        return await raw_exchange(port, request.encode())
    status, code = status_and_code(serve(FAST, go))
    assert (status, code) == (403, "AccessDenied")


def test_both_auth_mechanisms_at_once_are_refused():
    async def go(port):
        request = signed_head("GET", port, "/bucket/key?X-Amz-Signature=00")
        return await raw_exchange(port, request)
    assert status_and_code(serve(FAST, go))[0] == 400


def test_failed_auth_bursts_get_slowdown_and_one_log_line(caplog):
    limits = Limits(auth_fail_burst=5, auth_fail_rate=2)

    async def go(port):
        statuses = []
        for _ in range(30):
            request = signed_head("GET", port, "/bucket/key").replace(b"Signature=", b"Signature=0")
            statuses.append(status_and_code(await raw_exchange(port, request, timeout=2))[0])
        await asyncio.sleep(1.2)  # earns two tokens back
        good = signed_head("GET", port, "/bucket/key?website")
        return statuses, status_and_code(await raw_exchange(port, good, timeout=2))
    with caplog.at_level(logging.INFO):
        statuses, after = serve(limits, go)
    assert statuses[:5] == [403] * 5
    assert statuses[5:].count(503) >= 24  # SlowDown, without running the HMAC chain
    assert after == (501, "NotImplemented")  # a correct request gets through once the burst calmed
    auth_lines = [r for r in caplog.records if "failed authentication" in r.getMessage()]
    assert 1 <= len(auth_lines) <= 3, [r.getMessage() for r in auth_lines]


def test_throttle_is_per_address_and_refills():
    now = [0.0]
    throttle = FailedAuthThrottle(burst=3, rate=1, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.allow("10.0.0.1")
        throttle.failed("10.0.0.1", "SignatureDoesNotMatch")
    assert not throttle.allow("10.0.0.1")
    assert throttle.allow("10.0.0.2")
    now[0] += 1.0
    assert throttle.allow("10.0.0.1")


# -- finding 6: front door ---------------------------------------------------------------------


def test_range_beyond_int64_does_not_overflow():
    r = parse_range("bytes=9223372036854775808-")
    assert r.first == INT64_MAX and r.last == -1
    r = parse_range("bytes=0-99999999999999999999999")
    assert r.first == 0 and r.last == INT64_MAX
    assert parse_range("bytes=-99999999999999999999999").suffix_length == INT64_MAX
    assert parse_range("bytes=\u0661-\u0662") is None  # non-ASCII digits are invalid syntax: whole object


def test_oversized_declared_length_is_refused_before_any_body_byte():
    """5 GiB + 1: EntityTooLarge at once, no 100-continue, connection closed within seconds."""
    async def go(port):
        head = signed_head("PUT", port, "/bucket/key", {"content-length": str(5 * (1 << 30) + 1),
                                                        "expect": "100-continue"}, payload="UNSIGNED-PAYLOAD")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        start = time.monotonic()
        writer.write(head)
        first = await asyncio.wait_for(reader.readuntil(b"\r\n"), 3)
        answered = time.monotonic() - start

        async def keep_sending():
            try:
                while True:
                    writer.write(b"x" * 65536)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
        sender = asyncio.create_task(keep_sending())
        try:
            async with asyncio.timeout(8):
                while await reader.read(65536):
                    pass
        except ConnectionError:
            pass  # a reset is a close too
        finally:
            sender.cancel()
            writer.close()
        return first, answered, time.monotonic() - start
    first, answered, closed = serve(FAST, go)
    assert first.startswith(b"HTTP/1.1 400"), first
    assert answered < 1.0 and closed < 5.0, (answered, closed)


def test_malformed_requests_log_one_info_line_and_no_traceback(caplog):
    garbage = [
        b"GARBAGE\r\n\r\n",
        b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(150)) + b"\r\n",
        b"PUT /b/k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /b/k HTTP/1.1\r\nHost: x\r\nRange: bytes=9223372036854775808-\r\n\r\n",
    ]

    async def go(port):
        return [await raw_exchange(port, g, timeout=2) for g in garbage]
    with caplog.at_level(logging.DEBUG):
        answers = serve(FAST, go)
    for answer in answers:
        assert 400 <= status_and_code(answer)[0] < 500, answer[:200]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= logging.INFO]
    lines = [r for r in caplog.records if r.levelno == logging.INFO
             and (r.name.startswith("services.gateway") or r.name.startswith("aiohttp"))]
    assert len(lines) <= len(garbage) + 1, [r.getMessage() for r in lines]


def test_slow_loris_clients_are_disconnected_within_the_header_timeout():
    """200 clients trickling a request head one byte at a time are all cut at header_timeout."""
    limits = Limits(header_timeout=2, idle_timeout=60)
    clients = 200

    async def go(port):
        async def loris():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            start = time.monotonic()
            try:
                for byte in b"GET /bucket/key HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 100:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    try:
                        if not await asyncio.wait_for(reader.read(1), 1.0):
                            return time.monotonic() - start
                    except TimeoutError:
                        continue
                return None
            except (ConnectionError, OSError):
                return time.monotonic() - start
            finally:
                writer.close()
        return await asyncio.gather(*(loris() for _ in range(clients)))
    cut = serve(limits, go)
    assert all(t is not None for t in cut), "some slow clients were never disconnected"
    assert max(cut) < limits.header_timeout + 2.5, max(cut)


def test_idle_connection_is_closed_after_the_idle_timeout():
    limits = Limits(header_timeout=30, idle_timeout=1.5)

    async def go(port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        start = time.monotonic()
        try:
            data = await asyncio.wait_for(reader.read(1), 6)
        finally:
            writer.close()
        return data, time.monotonic() - start
    data, waited = serve(limits, go)
    assert data == b"" and waited < 4


def test_a_stalled_body_gets_request_timeout():
    """DeleteObjects reads its body before any backend call: stall it halfway."""
    async def go(port):
        body = b"<Delete><Object><Key>k</Key></Object></Delete>"
        head = signed_head("POST", port, "/bucket?delete", {"content-length": str(len(body))},
                           payload="UNSIGNED-PAYLOAD")
        start = time.monotonic()
        answer = await raw_exchange(port, head + body[:10], timeout=6)
        return answer, time.monotonic() - start
    answer, took = serve(FAST, go)
    assert status_and_code(answer) == (400, "RequestTimeout")
    assert took < FAST.body_timeout + 3


def test_xml_bodies_are_capped_before_reading():
    async def go(port):
        head = signed_head("PUT", port, "/bucket?encryption", {"content-length": str(1 << 20)},
                           payload="UNSIGNED-PAYLOAD")
        return await raw_exchange(port, head, timeout=3)
    status, code = status_and_code(serve(FAST, go))
    assert (status, code) == (400, "MaxMessageLengthExceeded")


def test_limits_from_env():
    limits = Limits.from_env({"SEALSTORE_GATEWAY_HEADER_TIMEOUT": "7.5", "SEALSTORE_GATEWAY_MAX_HEADERS": "40"})
    assert limits.header_timeout == 7.5 and limits.max_headers == 40 and limits.idle_timeout == Limits().idle_timeout
    with pytest.raises(ValueError):
        Limits.from_env({"SEALSTORE_GATEWAY_BODY_TIMEOUT": "-1"})


def test_expect_100_continue_is_granted_to_an_acceptable_request():
    async def go(port):
        head = signed_head("POST", port, "/bucket?delete", {"content-length": "10", "expect": "100-continue"},
                           payload="UNSIGNED-PAYLOAD")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(head)
            return await asyncio.wait_for(reader.readline(), 3)
        finally:
            writer.close()
    assert serve(FAST, go).startswith(b"HTTP/1.1 100")
