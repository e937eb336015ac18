"""Generated hostile HTTP requests against a gateway, and a runner that counts what came back.

Shared by the fuzz run in the test suite (tests/fuzz/test_hostile_cluster.py) and by
bench/fuzz_gateway.py. Each request goes on its own connection as raw bytes, so nothing
between the generator and the gateway repairs it. A request is "hung" when no status line
arrives within the runner's timeout; a healthy gateway answers every one (or closes).
"""
from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import quote

from sealstore import sigv4

METHODS = ["GET", "PUT", "POST", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "CONNECT", "G\x00T", "get", "X" * 40]
SUBRESOURCES = ["", "?encryption", "?delete", "?location", "?list-type=2", "?policy", "?uploads",
                "?list-type=2&max-keys=-1", "?max-keys=99999999999999999999", "?encoding-type=zz",
                "?list-type=2&continuation-token=%%%", "?x-id=GetObject", "?prefix=%00&delimiter=%ff"]
WEIRD_KEY_PARTS = ["a", "../", "./", "//", "%2e%2e/", "%00", "\u00e9", "\U0001f600", " ", "+", "%", "?", "#",
                   "~", "a" * 300, "..", "\\", "\t", "%ZZ", "x;y", "=", "&"]
RANGES = ["bytes=0-0", "bytes=-1", "bytes=5-", "bytes=9223372036854775808-", "bytes=-99999999999999999999999",
          "bytes=1-0", "bytes=0-1,2-3", "bytes=abc", "bits=0-1", "bytes=\u0661-", "bytes=18446744073709551616-1"]
XML_BODIES = [b"", b"<", b"<Delete/>", b"<Delete><Object><Key>k</Key></Object></Delete>",
              b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY e "x">]><Delete><Object><Key>&e;</Key></Object></Delete>',
              b"<ServerSideEncryptionConfiguration><Rule><ApplyServerSideEncryptionByDefault><SSEAlgorithm>aws:kms"
              b"</SSEAlgorithm><KMSMasterKeyID>no-such-key</KMSMasterKeyID></ApplyServerSideEncryptionByDefault>"
              b"</Rule></ServerSideEncryptionConfiguration>",
              b"<a>" * 5000, b"\xff\xfe<\x00D\x00/\x00>\x00", b"<Delete>" + b"<Object><Key>k</Key></Object>" * 1200 + b"</Delete>"]
CHUNK_SIZE_LINES = ["-1", "-0", "+10", "0x10", "zz", "1_0", " 10", "10 ", "ffffffffffffffffff", "7fffffffffffffff",
                    "1000001", "", "\u0661"]


@dataclass
class Target:
    host: str
    port: int
    access_key: str
    secret_key: str
    bucket: str


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)
    server_errors: list = field(default_factory=list)  # (status, first line of the request)
    hung: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def bad(self) -> int:
        return len(self.server_errors)


def _key(rng: random.Random) -> str:
    return "".join(rng.choice(WEIRD_KEY_PARTS) for _ in range(rng.randint(1, 5)))


def _path(rng: random.Random, bucket: str) -> str:
    choice = rng.random()
    if choice < 0.1:
        return "/"
    if choice < 0.2:
        return f"/{bucket}"
    if choice < 0.3:
        return "/" + rng.choice(["Bad_Bucket", "a", "x" * 70, "..", "127.0.0.1", "%00"])
    return f"/{bucket}/" + quote(_key(rng), safe=rng.choice(["/", "/%", ""]))


def _sign(t: Target, method: str, path: str, headers: dict, payload: str) -> dict:
    host = f"{t.host}:{t.port}"
    return sigv4.sign_request(method, f"http://{host}{path}", {"host": host, **headers}, payload,
                              t.access_key, t.secret_key)


def _render(method: str, path: str, headers: dict | list, body: bytes = b"") -> bytes:
    items = headers.items() if isinstance(headers, dict) else headers
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in items) + "\r\n"
    return head.encode("utf-8", "surrogateescape") + body


def _chunked_body(rng: random.Random, t: Target, path: str) -> bytes:
    """A signed aws-chunked PUT whose framing is broken in one of many ways."""
    data = rng.randbytes(rng.randint(0, 3000))
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date = sigv4.format_amz_date(now)
    headers = {"content-encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(data))}
    signed = _sign(t, "PUT", path, headers, sigv4.STREAMING_PAYLOAD)
    seed = signed["Authorization"].rsplit("Signature=", 1)[1]
    key = sigv4.signing_key(t.secret_key, amz_date[:8], "us-east-1")
    body = sigv4.encode_signed_chunks([data[:1000], data[1000:]] if data else [], key, amz_date,
                                      sigv4.scope(amz_date[:8], "us-east-1"), seed)
    how = rng.randrange(8)
    if how == 0:  # replace the first size line
        body = rng.choice(CHUNK_SIZE_LINES).encode() + body[body.index(b";"):]
    elif how == 1:  # drop a chunk signature
        body = body.replace(b";chunk-signature=", b";", 1)
    elif how == 2:  # cut the body short
        body = body[: rng.randrange(max(1, len(body)))]
    elif how == 3:  # trailing garbage
        body += rng.randbytes(rng.randint(1, 50))
    elif how == 4:  # flip a byte anywhere
        if body:
            i = rng.randrange(len(body))
            body = body[:i] + bytes([body[i] ^ 0x5A]) + body[i + 1:]
    elif how == 5:  # missing CRLF after data
        body = body.replace(b"\r\n", b"", 2 if rng.random() < 0.5 else 1)
    elif how == 6:  # lie about the decoded length
        signed = _sign(t, "PUT", path, {**headers, "x-amz-decoded-content-length": str(rng.choice([0, 1, 10**12]))},
                       sigv4.STREAMING_PAYLOAD)
    signed["content-length"] = str(len(body))
    return _render("PUT", path, signed, body)


def hostile_request(rng: random.Random, t: Target) -> tuple[bytes, float]:
    """One generated request: (bytes to send, seconds to pause half-way for a slow body)."""
    kind = rng.randrange(14)
    path = _path(rng, t.bucket)
    host = f"{t.host}:{t.port}"
    if kind == 0:  # raw garbage
        return rng.randbytes(rng.randint(1, 2000)), 0.0
    if kind == 1:  # random method and path, unsigned
        method = rng.choice(METHODS)
        return _render(method, path + rng.choice(SUBRESOURCES), {"Host": host}), 0.0
    if kind == 2:  # huge or many headers, long request line
        which = rng.randrange(3)
        if which == 0:
            return _render("GET", path, {"Host": host, "X-Big": "b" * rng.choice([9000, 70000])}), 0.0
        if which == 1:
            return _render("GET", path, [("Host", host)] + [(f"X-H{i}", "v") for i in range(rng.choice([101, 500]))]), 0.0
        return _render("GET", "/" + "a" * rng.choice([17000, 100000]), {"Host": host}), 0.0
    if kind == 3:  # valid signature, then a header added after signing
        signed = _sign(t, "GET", path, {}, sigv4.EMPTY_SHA256)
        signed[rng.choice(["x-amz-server-side-encryption-aws-kms-key-id", "x-amz-meta-x", "X-Amz-Date"])] = "evil"
        return _render("GET", path, signed), 0.0
    if kind == 4:  # broken signature or authorization header
        signed = _sign(t, rng.choice(["GET", "PUT", "DELETE"]), path, {}, sigv4.EMPTY_SHA256)
        auth = signed["Authorization"]
        mutation = rng.randrange(5)
        if mutation == 0:
            auth = auth[:-1] + ("0" if auth[-1] != "0" else "1")
        elif mutation == 1:
            auth = auth.replace("SignedHeaders=", "SignedHeaders=zz;", 1)
        elif mutation == 2:
            auth = auth[: rng.randrange(len(auth))]
        elif mutation == 3:
            auth = "AWS4-HMAC-SHA256 " + ",".join(["Credential=" + "/" * rng.randint(0, 9)] * rng.randint(1, 3))
        else:
            auth = "AWS " + base64.b64encode(rng.randbytes(20)).decode()
        signed["Authorization"] = auth
        return _render(rng.choice(["GET", "PUT", "DELETE"]), path, signed), 0.0
    if kind == 5:  # broken presigned query
        url = sigv4.presign_url("GET", f"http://{host}{path}", t.access_key, t.secret_key,
                                expires=rng.choice([1, 3600]))
        query = url.split("?", 1)[1]
        query = rng.choice([query.replace("X-Amz-Expires=", "X-Amz-Expires=9"), query[:-3],
                            query.replace("X-Amz-Date=", "X-Amz-Date=1"), query + "&X-Amz-Signature=00",
                            query.replace("X-Amz-Credential=", "X-Amz-Credential=%2F%2F")])
        return _render("GET", path + "?" + query, {"Host": host}), 0.0
    if kind == 6:
        return _chunked_body(rng, t, f"/{t.bucket}/chunked-{rng.randrange(50)}"), 0.0
    if kind == 7:  # valid signed GET/HEAD with a hostile Range
        method = rng.choice(["GET", "HEAD"])
        target = f"/{t.bucket}/fuzz-{rng.randrange(5)}"
        signed = _sign(t, method, target, {"range": rng.choice(RANGES)}, sigv4.EMPTY_SHA256)
        return _render(method, target, signed), 0.0
    if kind == 8:  # valid signed XML bodies, hostile content
        body = rng.choice(XML_BODIES)
        sub = rng.choice(["?delete", "?encryption", ""])
        method = "POST" if sub == "?delete" else "PUT"
        target = f"/{t.bucket}{sub}"
        signed = _sign(t, method, target, {"content-length": str(len(body))}, hashlib.sha256(body).hexdigest())
        return _render(method, target, signed, body), 0.0
    if kind == 9:  # valid signed requests with weird names and queries
        method = rng.choice(["GET", "HEAD", "DELETE", "PUT"])
        target = path + rng.choice(SUBRESOURCES)
        body = rng.randbytes(rng.randint(0, 200)) if method == "PUT" else b""
        signed = _sign(t, method, target, {"content-length": str(len(body))} if body else {},
                       hashlib.sha256(body).hexdigest())
        return _render(method, target, signed, body), 0.0
    if kind == 10:  # declared sizes: too big, negative, not numbers, mismatched
        length = rng.choice(["5368709121", "-1", "abc", "99999999999999999999999", "1e3", "0x10", "10, 20"])
        signed = _sign(t, "PUT", f"/{t.bucket}/size", {"content-length": length}, "UNSIGNED-PAYLOAD")
        return _render("PUT", f"/{t.bucket}/size", signed, b"x" * 10), 0.0
    if kind == 11:  # a slow (stalling) body that still ends
        body = rng.randbytes(rng.randint(10, 500))
        target = f"/{t.bucket}/slow-{rng.randrange(5)}"
        signed = _sign(t, "PUT", target, {"content-length": str(len(body))}, "UNSIGNED-PAYLOAD")
        return _render("PUT", target, signed, body), rng.uniform(0.05, 0.3)
    if kind == 12:  # SSE headers, signed, hostile values
        headers = {"x-amz-server-side-encryption": rng.choice(["aws:kms", "AES256", "x", ""]),
                   "x-amz-server-side-encryption-aws-kms-key-id": rng.choice(["", "arn:aws:kms:", "no-such", "a" * 300]),
                   "x-amz-server-side-encryption-context": rng.choice(["", "!!", "e30=", base64.b64encode(b"[1]").decode()])}
        signed = _sign(t, "PUT", f"/{t.bucket}/sse", {**headers, "content-length": "3"}, hashlib.sha256(b"abc").hexdigest())
        return _render("PUT", f"/{t.bucket}/sse", signed, b"abc"), 0.0
    # Transfer-Encoding games and duplicate framing headers, unsigned and signed.
    variants = [
        [("Host", host), ("Transfer-Encoding", "chunked"), ("Content-Length", "5")],
        [("Host", host), ("Transfer-Encoding", "chunked")],
        [("Host", host), ("Content-Length", "5"), ("Content-Length", "6")],
        [("Host", host), ("Transfer-Encoding", "gzip, chunked")],
    ]
    body = rng.choice([b"zz\r\n", b"5\r\nhello\r\n0\r\n\r\n", b"-1\r\n", b"hello"])
    return _render("PUT", f"/{t.bucket}/te", rng.choice(variants), body), 0.0


async def send(t: Target, data: bytes, pause: float, timeout: float) -> tuple[str, int | None]:
    """('answered', status) | ('closed', None) | ('hung', None)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(t.host, t.port), timeout)
    except (OSError, TimeoutError):
        return "refused", None
    try:
        async with asyncio.timeout(timeout):
            if pause:
                half = len(data) // 2
                writer.write(data[:half])
                await writer.drain()
                await asyncio.sleep(pause)
                writer.write(data[half:])
            else:
                writer.write(data)
            try:
                await writer.drain()
            except (ConnectionError, OSError):
                pass
            try:
                line = await reader.readline()
            except (ConnectionError, OSError, ValueError):
                return "closed", None
            if not line:
                return "closed", None
            parts = line.split(b" ", 2)
            if len(parts) < 2 or not parts[1].isdigit():
                return "closed", None
            return "answered", int(parts[1])
    except TimeoutError:
        return "hung", None
    finally:
        writer.close()


async def run(t: Target, count: int, concurrency: int, seed: int, timeout: float = 20.0,
              progress=None) -> Tally:
    tally = Tally()
    lock = asyncio.Lock()
    issued = 0

    async def worker(worker_id: int):
        nonlocal issued
        local = random.Random(seed * 1000 + worker_id)
        while True:
            async with lock:
                if issued >= count:
                    return
                issued += 1
                n = issued
            data, pause = hostile_request(local, t)
            outcome, status = await send(t, data, pause, timeout)
            first_line = data.split(b"\r\n", 1)[0][:120]
            if outcome == "answered":
                tally.statuses[status] += 1
                if status >= 500 and status not in (501, 503):
                    tally.server_errors.append((status, first_line))
            elif outcome == "hung":
                tally.hung.append(first_line)
            else:
                tally.statuses[outcome] += 1
            if progress is not None and n % 10000 == 0:
                progress(n, tally)
    started = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    tally.seconds = time.monotonic() - started
    return tally
