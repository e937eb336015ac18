"""The S3 gateway process: an aiohttp server in front of the crypto workers, kms and erasure set.

`python -m services.gateway --listen 127.0.0.1:9000 --data-dir DIR [--https-listen 127.0.0.1:9443]`

With --https-listen (or SEALSTORE_GATEWAY_HTTPS_ADDR) the same S3 API is also served over TLS,
with SEALSTORE_GATEWAY_TLS_CERT / _KEY or else the dev CA's <certs>/https/gateway.pem. SSE-C is
accepted only there: the handler asks the connection itself whether it is TLS.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import logging
import os
import signal
import ssl
from pathlib import Path

from aiohttp import HttpVersion11, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.log import server_logger as server_log
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from sealstore import config, errors, memory, observability
from sealstore.rpc import configure_logging

from . import access, s3xml
from .auth import Authenticator, Credentials
from .limits import Limits
from .s3api import CONTINUE_PENDING, S3Api

log = logging.getLogger(__name__)

MAX_REQUEST_BODY = 5 * (1 << 30) + (1 << 20)
"""aiohttp's own limit (only for whole-body reads); object sizes are checked in body.py."""
LINGERING_SECONDS = 2.0
"""After an early error answer, how long unread body bytes are drained before closing; long
enough for the client to read the answer, short enough that a refused 5 GiB upload costs little."""


def error_response(request: web.Request, err: errors.SealstoreError, request_id: str) -> web.Response:
    """The one place a typed error becomes an S3 error response (no body for HEAD or a 304)."""
    headers = {"x-amz-request-id": request_id}
    if request.method == "HEAD" or err.http_status == 304:
        response = web.Response(status=err.http_status, headers=headers)
    else:
        body = s3xml.error_document(err.code, err.message, err.resource or request.path, request_id)
        response = web.Response(status=err.http_status, body=body, content_type="application/xml", headers=headers)
    if not request.content.is_eof():
        # The body was refused unread: the connection cannot carry another request.
        response.force_close()
    return response


def printable(text: str, limit: int = 200) -> str:
    """Client-controlled text as one safe log line: no newlines or control bytes to forge entries."""
    return ascii(text[:limit])[1:-1]


def _log_refusal(request: web.Request, err: errors.SealstoreError) -> None:
    """One line per refused request: INFO for client errors, WARNING for server-side ones."""
    if getattr(err, "logged", False):
        return
    level = logging.WARNING if err.http_status >= 500 and err.http_status != 501 else logging.INFO
    log.log(level, "%s %s %s -> %d %s: %s", request.remote, printable(request.method), printable(request.path),
            err.http_status, err.code, printable(err.message))


def _start(request: web.Request) -> str:
    """The request's id, made once (by the expect handler or here); the access line and the
    metrics count the request from now on."""
    request_id = request.get(access.REQUEST_ID)
    if request_id is None:
        request_id = observability.new_request_id()
        access.request_started(request, request_id)
    return request_id


async def _request_id_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every response, streamed ones included, names its request as AWS does: x-amz-request-id
    (what every log line of every service carries) and x-amz-id-2 (here a digest of it)."""
    access.response_started(request, response)
    if request.app[DRAIN].stopping:
        response.force_close()  # the connection closes after this answer
    request_id = request.get(access.REQUEST_ID)
    if request_id and "x-amz-request-id" not in response.headers:
        response.headers["x-amz-request-id"] = request_id
    if request_id and "x-amz-id-2" not in response.headers:
        response.headers["x-amz-id-2"] = base64.b64encode(
            hashlib.sha256(f"sealstore/{request_id}".encode()).digest()).decode()


class Drain:
    """SIGTERM's state: requests in progress, and whether the gateway is stopping.

    aiohttp's own graceful shutdown stops reading from every connection at once, which stalls
    an upload in progress until its grace runs out: the gateway drains by itself instead
    (`drain`), and leaves aiohttp's shutdown only what is left after that."""

    def __init__(self) -> None:
        self.in_progress = 0
        self.stopping = False


DRAIN = web.AppKey("sealstore_drain", Drain)


@web.middleware
async def s3_errors(request: web.Request, handler):
    request_id = _start(request)
    bound = observability.bind_request_id(request_id)  # every gRPC call of this request carries it
    drain = request.app[DRAIN]
    drain.in_progress += 1
    try:
        if drain.stopping:
            # A request on a connection kept alive from before: the client retries it elsewhere.
            response = error_response(request, errors.ServiceUnavailable("The gateway is shutting down."),
                                      request_id)
            response.force_close()
            return response
        return await _answer(request, handler, request_id)
    except (asyncio.CancelledError, ConnectionResetError):
        access.request_aborted(request, _domains(request))
        raise
    finally:
        drain.in_progress -= 1
        observability.unbind_request_id(bound)


async def drain(runner: web.AppRunner, grace: float) -> None:
    """Stops listening, closes idle connections, lets the requests in progress finish (reading
    their bodies to the end) for up to `grace` seconds, then has aiohttp cancel what is left."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    state = runner.app[DRAIN]
    state.stopping = True
    for site in list(runner.sites):
        await site.stop()
    server = runner.server
    for connection in (server.connections if server is not None else []):
        if not connection._request_in_progress:
            connection.close()  # idle keep-alive: nothing to finish
    while state.in_progress and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if state.in_progress:
        log.warning("%d request(s) still in progress after %g s: cancelling them", state.in_progress, grace)
    runner._shutdown_timeout = max(0.5, deadline - loop.time())
    await runner.cleanup()


def _domains(request: web.Request) -> tuple[str, ...]:
    return request.app.get(DOMAINS, ())


async def _answer(request: web.Request, handler, request_id: str) -> web.StreamResponse:
    try:
        response = await handler(request)
    except errors.SealstoreError as err:
        _log_refusal(request, err)
        return error_response(request, err, request_id)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except (RequestPayloadError, HttpProcessingError):
        # aiohttp could not frame the body (broken Transfer-Encoding: chunked, short Content-Length).
        err = errors.IncompleteBody("the request body is malformed or ended early")
        _log_refusal(request, err)
        return error_response(request, err, request_id)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(request, errors.InternalError(), request_id)
    if not response.prepared:
        response.headers["x-amz-request-id"] = request_id
        response.headers.setdefault("Server", "sealstore")
    return response


DOMAINS = web.AppKey("sealstore_domains", tuple)


def build_app(api: S3Api) -> web.Application:
    app = web.Application(middlewares=[s3_errors], client_max_size=MAX_REQUEST_BODY)
    app[DOMAINS] = tuple(api.domains)
    app[DRAIN] = Drain()
    app.on_response_prepare.append(_request_id_headers)

    async def expect_continue(request: web.Request):
        """Refuses an oversized body at once; otherwise the `100 Continue` is only owed.

        The operation sends it (s3api.grant_continue) after authentication and its own checks,
        so that a PUT to a missing bucket or naming a missing or disabled KMS key is answered
        before the client sends its body."""
        request_id = _start(request)
        try:
            api.precheck(request)
        except errors.SealstoreError as err:
            _log_refusal(request, err)
            response = error_response(request, err, request_id)
            response.force_close()
            return response
        if request.version == HttpVersion11:
            if request.headers.get("Expect", "").lower() != "100-continue":
                return error_response(request, errors.InvalidRequest("Expect must be 100-continue"), request_id)
            request[CONTINUE_PENDING] = True
        return None

    app.router.add_route("*", "/{tail:.*}", api.handle, expect_handler=expect_continue)

    async def close_backend(_app):
        await api.close()
    app.on_cleanup.append(close_backend)
    return app


class _QuietServerLog(logging.LoggerAdapter):
    """aiohttp's server logger, minus the ERROR traceback it writes for every malformed request.

    A request aiohttp cannot parse (bad request line, too many or too long headers, broken
    chunked framing) is the client's fault: one INFO line. Anything else keeps its traceback.
    """

    def exception(self, msg, *args, exc_info=True, **kwargs):
        exc = exc_info if isinstance(exc_info, BaseException) else None
        if isinstance(exc, HttpProcessingError) and (exc.code or 400) < 500:
            self.logger.info("refused malformed HTTP request: %s", printable(str(exc), 300))
            return
        self.logger.error(msg, *args, exc_info=exc_info, **kwargs)


class _HeadDeadlineHandler(RequestHandler):
    """aiohttp's connection handler plus a deadline on request heads (slow-loris guard).

    aiohttp only times out a connection that waits for a request as a whole (keepalive_timeout,
    here the idle timeout). A client trickling a request head byte by byte keeps a connection
    forever under that rule as long as it started within the idle timeout; this deadline starts
    at the first byte of a head and closes the connection if the head is not complete in time.
    """

    __slots__ = ("head_timeout", "_head_deadline")

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport is None or self._force_close or self._close:
            self._cancel_head_deadline()
        elif self._messages or self._request_in_progress:
            self._cancel_head_deadline()
        elif data and getattr(self, "_head_deadline", None) is None:
            self._head_deadline = self._loop.call_later(self.head_timeout, self._head_too_slow)

    def _cancel_head_deadline(self) -> None:
        handle = getattr(self, "_head_deadline", None)
        if handle is not None:
            handle.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if self.transport is None or self._messages or self._request_in_progress:
            return
        peer = self.transport.get_extra_info("peername")
        log.info("%s: request head not complete within %.0f s; closing", peer[0] if peer else "?", self.head_timeout)
        self.force_close()

    def connection_lost(self, exc) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)


class _GatewayServer(web.Server):
    head_timeout: float = 20.0

    def __call__(self) -> RequestHandler:
        handler = _HeadDeadlineHandler(self, loop=self._loop, **self._kwargs)
        handler.head_timeout = self.head_timeout
        handler._head_deadline = None
        return handler


class GatewayRunner(web.AppRunner):
    """The AppRunner with the front-door limits applied (used by `serve` and by the tests)."""

    def __init__(self, app: web.Application, limits: Limits, **kwargs):
        # One access line per request (services/gateway/access.py).
        access_log_class = type("GatewayAccessLogger", (access.S3AccessLogger,), {"domains": app.get(DOMAINS, ())})
        super().__init__(app, access_log=access.log, access_log_class=access_log_class, handler_cancellation=True,
                         logger=_QuietServerLog(server_log, {}),
                         max_line_size=limits.max_request_line, max_field_size=limits.max_header_size,
                         max_headers=limits.max_headers, keepalive_timeout=limits.idle_timeout,
                         lingering_time=LINGERING_SECONDS, **kwargs)
        self.limits = limits

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _GatewayServer  # same object and state, our connection handler
        server.head_timeout = self.limits.header_timeout
        return server


def make_api(data_dir: Path, domains: tuple[str, ...] = (), limits: Limits | None = None) -> S3Api:
    def backend():
        from .backend import Backend
        return Backend(config.load_topology(data_dir), config.certs_dir(data_dir))
    return S3Api(Authenticator(Credentials(data_dir)), backend, domains, limits=limits)


def https_context(cert: Path, key: Path) -> ssl.SSLContext:
    """Server TLS for S3 clients: TLS 1.2 or newer, the certificate chain and key given."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    return context


def https_files(data_dir: Path, cert: str = "", key: str = "") -> tuple[Path, Path]:
    """The HTTPS certificate and key: given (flags or SEALSTORE_GATEWAY_TLS_CERT / _KEY), else the
    dev CA's. Both or neither: a certificate without its key (or the reverse) is a mistake."""
    cert = cert or os.environ.get(config.ENV_GATEWAY_TLS_CERT, "")
    key = key or os.environ.get(config.ENV_GATEWAY_TLS_KEY, "")
    if bool(cert) != bool(key):
        raise SystemExit(f"gateway: give both {config.ENV_GATEWAY_TLS_CERT} and {config.ENV_GATEWAY_TLS_KEY}, "
                         f"or neither (the dev CA's certificate)")
    if cert:
        return Path(cert), Path(key)
    from sealstore import tls
    return tls.https_files(config.certs_dir(data_dir))


async def serve(listen: str, data_dir: Path, domains: tuple[str, ...], https_listen: str = "",
                tls_files: tuple[Path, Path] | None = None, metrics_listen: str = "") -> None:
    host, _, port = listen.rpartition(":")
    limits = Limits.from_env()
    context = https_context(*tls_files) if https_listen else None  # a bad certificate fails the start
    api = make_api(data_dir, domains, limits)
    api.backend  # connect now: a bad topology should fail at start, not at the first request
    app = build_app(api)
    runner = GatewayRunner(app, limits)
    await runner.setup()
    site = web.TCPSite(runner, host or "127.0.0.1", int(port), backlog=1024)
    await site.start()
    log.info("S3 gateway listening on http://%s", listen)
    if context is not None:
        https_host, _, https_port = https_listen.rpartition(":")
        secure_site = web.TCPSite(runner, https_host or "127.0.0.1", int(https_port), backlog=1024,
                                  ssl_context=context)
        await secure_site.start()
        log.info("S3 gateway listening on https://%s (certificate %s)", https_listen, tls_files[0])
    observability.start_metrics_server(metrics_listen)
    trimming = memory.start_trimming()  # noqa: F841 (RSS stays flat under load: sealstore/memory.py)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    grace = observability.shutdown_grace()
    log.info("stopping: no new connections; requests in progress get up to %g s", grace)
    started = loop.time()
    await drain(runner, grace)
    log.info("stopped after %.1f s", loop.time() - started)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.gateway", description="sealstore S3 gateway")
    parser.add_argument("--listen", default=os.environ.get(config.ENV_GATEWAY_ADDR, config.DEFAULT_GATEWAY_ADDR))
    parser.add_argument("--data-dir", default=os.environ.get(config.ENV_DATA_DIR, "data"))
    parser.add_argument("--domain", action="append", default=[],
                        help="domain for virtual-host style requests (<bucket>.<domain>); may repeat")
    parser.add_argument("--https-listen", default=os.environ.get(config.ENV_GATEWAY_HTTPS_ADDR, ""),
                        help=f"host:port to also serve S3 over HTTPS on (default ${config.ENV_GATEWAY_HTTPS_ADDR}; "
                             f"empty or off: none)")
    parser.add_argument("--tls-cert", default="", help=f"HTTPS certificate chain (default ${config.ENV_GATEWAY_TLS_CERT}, "
                                                       f"else <certs>/https/gateway.pem)")
    parser.add_argument("--tls-key", default="", help=f"its key (default ${config.ENV_GATEWAY_TLS_KEY})")
    parser.add_argument("--metrics-listen", default=observability.metrics_flag_default(),
                        help=f"[host:]port to serve Prometheus /metrics on (default ${observability.ENV_METRICS_ADDR} "
                             f"or off; a bare port is loopback)")
    args = parser.parse_args(argv)
    configure_logging("gateway")
    data_dir = Path(args.data_dir).resolve()
    https_listen = "" if args.https_listen.strip().lower() in ("", "off") else args.https_listen.strip()
    tls_files = https_files(data_dir, args.tls_cert, args.tls_key) if https_listen else None
    asyncio.run(serve(args.listen, data_dir, tuple(args.domain) or ("localhost",), https_listen, tls_files,
                      args.metrics_listen))
