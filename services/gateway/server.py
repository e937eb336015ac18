"""The S3 gateway process: an aiohttp server in front of the crypto workers, kms and erasure set.

`python -m services.gateway --listen 127.0.0.1:9000 --data-dir DIR`
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import uuid
from pathlib import Path

from aiohttp import web

from sealstore import config, errors
from sealstore.rpc import configure_logging

from . import s3xml
from .auth import Authenticator, Credentials
from .s3api import S3Api

log = logging.getLogger(__name__)

MAX_REQUEST_BODY = 5 * (1 << 30) + (1 << 20)
"""aiohttp's own limit (only for whole-body reads); object sizes are checked in body.py."""


def error_response(request: web.Request, err: errors.SealstoreError, request_id: str) -> web.Response:
    """The one place a typed error becomes an S3 error response (no body for HEAD)."""
    headers = {"x-amz-request-id": request_id}
    if request.method == "HEAD":
        return web.Response(status=err.http_status, headers=headers)
    body = s3xml.error_document(err.code, err.message, err.resource or request.path, request_id)
    return web.Response(status=err.http_status, body=body, content_type="application/xml", headers=headers)


@web.middleware
async def s3_errors(request: web.Request, handler):
    request_id = uuid.uuid4().hex[:16].upper()
    try:
        response = await handler(request)
    except errors.SealstoreError as err:
        if err.http_status >= 500:
            log.warning("%s %s -> %s: %s", request.method, request.path, err.code, err.message)
        return error_response(request, err, request_id)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except web.HTTPException:
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(request, errors.InternalError(), request_id)
    if not response.prepared:
        response.headers["x-amz-request-id"] = request_id
        response.headers.setdefault("Server", "sealstore")
    return response


def build_app(api: S3Api) -> web.Application:
    app = web.Application(middlewares=[s3_errors], client_max_size=MAX_REQUEST_BODY)
    app.router.add_route("*", "/{tail:.*}", api.handle)

    async def close_backend(_app):
        await api.close()
    app.on_cleanup.append(close_backend)
    return app


def make_api(data_dir: Path, domains: tuple[str, ...] = ()) -> S3Api:
    def backend():
        from .backend import Backend
        return Backend(config.load_topology(data_dir), config.certs_dir(data_dir))
    return S3Api(Authenticator(Credentials(data_dir)), backend, domains)


async def serve(listen: str, data_dir: Path, domains: tuple[str, ...]) -> None:
    host, _, port = listen.rpartition(":")
    api = make_api(data_dir, domains)
    api.backend  # connect now: a bad topology should fail at start, not at the first request
    app = build_app(api)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host or "127.0.0.1", int(port), backlog=1024)
    await site.start()
    log.info("S3 gateway listening on http://%s", listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.gateway", description="sealstore S3 gateway")
    parser.add_argument("--listen", default=os.environ.get(config.ENV_GATEWAY_ADDR, config.DEFAULT_GATEWAY_ADDR))
    parser.add_argument("--data-dir", default=os.environ.get(config.ENV_DATA_DIR, "data"))
    parser.add_argument("--domain", action="append", default=[],
                        help="domain for virtual-host style requests (<bucket>.<domain>); may repeat")
    args = parser.parse_args(argv)
    configure_logging("gateway")
    asyncio.run(serve(args.listen, Path(args.data_dir).resolve(), tuple(args.domain) or ("localhost",)))
