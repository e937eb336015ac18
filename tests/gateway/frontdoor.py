"""A real gateway HTTP front door in-process (GatewayRunner, the runner `serve` uses) for tests
that talk to it over loopback sockets. No backend: requests that pass authentication and need
one fail loudly, which proves the refusals under test happen first."""
from __future__ import annotations

import asyncio
import hashlib

from aiohttp.test_utils import TestServer

from sealstore import sigv4
from services.gateway.auth import Authenticator, Credentials
from services.gateway.limits import Limits
from services.gateway.s3api import S3Api
from services.gateway.server import GatewayRunner, build_app

AK, SK = "frontdoor-test-ak", "frontdoor test secret/+="


class BackendReached(AssertionError):
    pass


def no_backend():
    raise BackendReached("the gateway reached for a backend before refusing the request")


class GatewayTestServer(TestServer):
    def __init__(self, limits: Limits, domains: tuple[str, ...] = ("localhost",)):
        self.api = S3Api(Authenticator(Credentials(access_key=AK, secret_key=SK)), no_backend, domains, limits=limits)
        super().__init__(build_app(self.api), host="127.0.0.1")
        self.limits = limits

    async def _make_runner(self, **kwargs):
        kwargs.pop("handler_cancellation", None)
        return GatewayRunner(self.app, self.limits, **kwargs)


async def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Sends `data` and returns one response (head and Content-Length body), or whatever came
    before the server closed the connection or `timeout` passed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = b""
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            while b"\r\n\r\n" not in got:
                piece = await reader.read(65536)
                if not piece:
                    return got
                got += piece
            head, _, body = got.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(body) < length:
                piece = await reader.read(65536)
                if not piece:
                    break
                body += piece
            return head + b"\r\n\r\n" + body
    except (TimeoutError, ConnectionError):
        return got
    finally:
        writer.close()


def signed_head(method: str, port: int, path: str, headers: dict | None = None, *,
                payload: str = sigv4.EMPTY_SHA256, host: str | None = None) -> bytes:
    """A complete, correctly signed HTTP/1.1 request head (no body)."""
    host = host or f"127.0.0.1:{port}"
    signed = sigv4.sign_request(method, f"http://{host}{path}", {"host": host, **(headers or {})}, payload, AK, SK)
    lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in signed.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
