"""What every process shares to be watched: log format, request ids, per-RPC log lines and
metrics, the metrics endpoint and the shutdown grace period.

A request id is made by the gateway for each S3 request (and returned as `x-amz-request-id`).
It lives in a context variable, so every task the request starts inherits it; every gRPC call
made from such a task carries it as `x-sealstore-request-id` metadata (`traced_channel`), and
the server side (`RpcObservability`) puts it back into its own context variable. Every log
line written meanwhile names it: `grep <id> logs/*.log` follows one request through every
service.
"""
from __future__ import annotations

import asyncio
import contextvars
import datetime
import faulthandler
import json
import logging
import os
import re
import secrets
import time
from typing import Any

import grpc

ENV_LOG_FORMAT = "SEALSTORE_LOG_FORMAT"
"""json (default): one JSON object per line; text: the human-readable format."""
ENV_LOG_LEVEL = "SEALSTORE_LOG_LEVEL"
"""Python logging level name (default INFO)."""
ENV_METRICS_ADDR = "SEALSTORE_METRICS_ADDR"
"""[host:]port this service serves Prometheus /metrics on; a bare port binds 127.0.0.1; off or
empty: none. The local launcher sets each service's own (--metrics-listen)."""
ENV_SHUTDOWN_GRACE = "SEALSTORE_SHUTDOWN_GRACE"
"""Seconds a service given SIGTERM keeps serving the requests it already has (default 20)."""
DEFAULT_SHUTDOWN_GRACE = 20.0

REQUEST_ID_METADATA = "x-sealstore-request-id"
_REQUEST_ID_SHAPE = re.compile(r"^[A-Za-z0-9-]{1,64}$")

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("sealstore_request_id", default="")


def new_request_id() -> str:
    """16 upper-case hex digits, the shape of AWS's request ids."""
    return secrets.token_hex(8).upper()


def current_request_id() -> str:
    return _request_id.get()


def bind_request_id(request_id: str) -> contextvars.Token:
    return _request_id.set(request_id)


def unbind_request_id(token: contextvars.Token) -> None:
    try:
        _request_id.reset(token)
    except ValueError:  # set in another context (an async generator resumed elsewhere): harmless
        pass


def shutdown_grace() -> float:
    value = os.environ.get(ENV_SHUTDOWN_GRACE, "").strip()
    if not value:
        return DEFAULT_SHUTDOWN_GRACE
    try:
        grace = float(value)
    except ValueError:
        raise SystemExit(f"{ENV_SHUTDOWN_GRACE}={value!r}: give seconds, e.g. 20") from None
    if grace < 0:
        raise SystemExit(f"{ENV_SHUTDOWN_GRACE} must not be negative")
    return grace


# ---------------------------------------------------------------------------------- logging


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _request_id.get()
        return True


_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "request_id",
                                                                              "fields"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, service, logger, msg, request_id, the record's
    `fields` (log_event) and, for an exception, its traceback as one string."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", "")
        if request_id:
            line["request_id"] = request_id
        line.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The human-readable line, with the request id and the event's fields at the end."""

    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = " ".join(f"{k}={v}" for k, v in (getattr(record, "fields", None) or {}).items())
        request_id = getattr(record, "request_id", "")
        tail = " ".join(p for p in (extra, f"[{request_id}]" if request_id else "") if p)
        if not tail:
            return text
        head, newline, rest = text.partition("\n")  # a traceback stays below the line
        return f"{head} {tail}{newline}{rest}"


def log_format() -> str:
    value = (os.environ.get(ENV_LOG_FORMAT) or "json").strip().lower()
    if value not in ("json", "text"):
        raise SystemExit(f"{ENV_LOG_FORMAT}={value!r}: use json or text")
    return value


def configure_logging(service: str) -> None:
    """The root logger of this process: JSON lines (or text) on stderr, request ids included."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(service) if log_format() == "json" else TextFormatter(service))
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel((os.environ.get(ENV_LOG_LEVEL) or "INFO").strip().upper())
    # A crash in native code (grpc, pyeclib, OpenSSL) leaves the Python stacks in the log.
    faulthandler.enable()


def log_event(logger: logging.Logger, message: str, level: int = logging.INFO, **fields: Any) -> None:
    """One line with structured fields (JSON keys, or key=value in the text format)."""
    logger.log(level, message, extra={"fields": fields})


# ---------------------------------------------------------------------------------- metrics


def metrics_address(value: str) -> tuple[str, int] | None:
    """[host:]port -> (host, port); a bare port is loopback. None for "", "0" or "off"."""
    value = (value or "").strip()
    if value.lower() in ("", "0", "off"):
        return None
    host, _, port = value.rpartition(":")
    return (host.strip("[]") or "127.0.0.1"), int(port)


def start_metrics_server(listen: str) -> int | None:
    """Serves this process's Prometheus registry on http://<listen>/metrics (a thread); returns
    the port, or None when `listen` turns it off."""
    address = metrics_address(listen)
    if address is None:
        return None
    from prometheus_client import start_http_server
    server, _thread = start_http_server(address[1], addr=address[0])
    port = server.server_address[1]
    logging.getLogger(__name__).info("metrics on http://%s:%d/metrics", address[0], port)
    return port


def metrics_flag_default(*older_port_variables: str) -> str:
    """The --metrics-listen default: $SEALSTORE_METRICS_ADDR, else a service's older
    SEALSTORE_<ROLE>_METRICS_PORT variable (a port), else off."""
    value = os.environ.get(ENV_METRICS_ADDR, "")
    if value:
        return value
    for name in older_port_variables:
        if os.environ.get(name):
            return os.environ[name]
    return ""


_rpc_metrics = None


def _metrics():
    global _rpc_metrics
    if _rpc_metrics is None:
        from prometheus_client import Counter, Gauge, Histogram
        _rpc_metrics = (
            Counter("sealstore_grpc_server_handled_total", "gRPC calls this service answered, by method and code",
                    ["method", "code"]),
            Histogram("sealstore_grpc_server_handling_seconds", "gRPC call duration on this service, by method",
                      ["method"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)),
            Gauge("sealstore_grpc_server_in_flight", "gRPC calls this service is answering now"),
        )
    return _rpc_metrics


# ------------------------------------------------------------------------------ gRPC server

_QUIET_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


def _incoming_request_id(handler_call_details) -> str:
    for key, value in handler_call_details.invocation_metadata or ():
        if key == REQUEST_ID_METADATA:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
            return text if _REQUEST_ID_SHAPE.match(text) else ""
    return ""


_callers: dict[bytes, str] = {}


def _caller(context) -> str:
    """The calling instance named by its verified certificate (cached: one parse per peer)."""
    try:
        pems = (context.auth_context() or {}).get("x509_pem_cert") or []
    except Exception:
        return ""
    if not pems:
        return ""
    pem = bytes(pems[0])
    name = _callers.get(pem)
    if name is None:
        from sealstore.tls import principal_of
        try:
            principal = principal_of(pem)
            name = principal.instance if principal else "?"
        except Exception:
            name = "?"
        if len(_callers) > 1024:
            _callers.clear()
        _callers[pem] = name
    return name


class RpcObservability(grpc.aio.ServerInterceptor):
    """Per call: takes the caller's request id into this task's context, then one log line
    (method, code, duration, caller, request id) and the gRPC server metrics.

    Runs inside sealstore.rpc's ErrorInterceptor, so typed errors are seen as raised (their
    gRPC code is logged) and the authorisation interceptors' refusals are counted too."""

    def __init__(self) -> None:
        self.log = logging.getLogger("sealstore.rpc.access")
        _metrics()  # registered at start: a scrape before the first call already lists them

    def _done(self, method: str, started: float, code: str, caller: str) -> None:
        handled, seconds, in_flight = _metrics()
        elapsed = time.perf_counter() - started
        in_flight.dec()
        handled.labels(method, code).inc()
        seconds.labels(method).observe(elapsed)
        quiet = method.startswith(_QUIET_PREFIXES)
        level = logging.DEBUG if quiet and code == "OK" else logging.INFO
        if self.log.isEnabledFor(level):
            log_event(self.log, f"rpc {method.rsplit('/', 1)[-1]} {code}", level, rpc=method, code=code,
                      duration_ms=round(elapsed * 1000, 2), caller=caller)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method or ""
        request_id = _incoming_request_id(handler_call_details)
        done = self._done

        def context_code(context, default: str = "OK") -> str:
            try:
                code = context.code()
            except Exception:
                code = None
            return code.name if isinstance(code, grpc.StatusCode) else default

        def code_of(exc: BaseException, context) -> str:
            from sealstore import errors
            if isinstance(exc, errors.SealstoreError):
                return exc.grpc_status.name
            if isinstance(exc, asyncio.CancelledError):
                return "CANCELLED"
            return context_code(context, "UNKNOWN")  # context.abort() set it; anything else is UNKNOWN

        async def unary(request_or_iterator, context, behavior):
            token = bind_request_id(request_id) if request_id else None
            _metrics()[2].inc()
            # The caller is read now: once a call has ended (a stream cancelled by its client),
            # grpc may have freed it, and auth_context() on it crashes the process.
            started, code, caller = time.perf_counter(), "OK", _caller(context)
            try:
                response = await behavior(request_or_iterator, context)
                code = context_code(context)
                return response
            except BaseException as exc:
                code = code_of(exc, context)
                raise
            finally:
                done(method, started, code, caller)
                if token is not None:
                    unbind_request_id(token)

        async def stream(request_or_iterator, context, behavior):
            token = bind_request_id(request_id) if request_id else None
            _metrics()[2].inc()
            # The caller is read now: once a call has ended (a stream cancelled by its client),
            # grpc may have freed it, and auth_context() on it crashes the process.
            started, code, caller = time.perf_counter(), "OK", _caller(context)
            try:
                result = behavior(request_or_iterator, context)
                if hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                else:
                    await result  # a servicer writing with context.write()
                code = context_code(context)
            except BaseException as exc:
                code = code_of(exc, context)
                raise
            finally:
                done(method, started, code, caller)
                if token is not None:
                    unbind_request_id(token)

        if handler.unary_unary or handler.stream_unary:
            behavior = handler.unary_unary or handler.stream_unary
            make = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler

            async def wrapped_unary(request_or_iterator, context):
                return await unary(request_or_iterator, context, behavior)
            return make(wrapped_unary, handler.request_deserializer, handler.response_serializer)

        behavior = handler.unary_stream or handler.stream_stream
        make = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler

        def wrapped_stream(request_or_iterator, context):
            return stream(request_or_iterator, context, behavior)
        return make(wrapped_stream, handler.request_deserializer, handler.response_serializer)


# ------------------------------------------------------------------------------ gRPC client


def _with_request_id(metadata):
    request_id = _request_id.get()
    if not request_id:
        return metadata
    pairs = tuple(metadata) if metadata is not None else ()
    return (*pairs, (REQUEST_ID_METADATA, request_id))


class _TracedMultiCallable:
    __slots__ = ("_inner",)

    def __init__(self, inner) -> None:
        self._inner = inner

    def __call__(self, *args, metadata=None, **kwargs):
        return self._inner(*args, metadata=_with_request_id(metadata), **kwargs)


class TracedChannel:
    """A grpc.aio channel whose calls carry the current request id as metadata.

    Not a client interceptor: those wrap every call object (and streaming writes) in grpc's
    interceptor machinery; this only adds one metadata pair, and callers get grpc's own call
    objects back, with their exact semantics."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._wrapped = channel

    def unary_unary(self, *args, **kwargs):
        return _TracedMultiCallable(self._wrapped.unary_unary(*args, **kwargs))

    def unary_stream(self, *args, **kwargs):
        return _TracedMultiCallable(self._wrapped.unary_stream(*args, **kwargs))

    def stream_unary(self, *args, **kwargs):
        return _TracedMultiCallable(self._wrapped.stream_unary(*args, **kwargs))

    def stream_stream(self, *args, **kwargs):
        return _TracedMultiCallable(self._wrapped.stream_stream(*args, **kwargs))

    async def __aenter__(self):
        await self._wrapped.__aenter__()
        return self

    async def __aexit__(self, *exc):
        return await self._wrapped.__aexit__(*exc)

    def __getattr__(self, name: str):
        return getattr(self._wrapped, name)


def traced_channel(channel: grpc.aio.Channel) -> grpc.aio.Channel:
    return TracedChannel(channel)  # type: ignore[return-value]


async def drain_grpc_server(server: grpc.aio.Server) -> None:
    """SIGTERM's path for a gRPC service: health says NOT_SERVING (probes and balancers stop
    sending), new calls are refused, calls in progress get the grace period, then they are
    cancelled."""
    from grpc_health.v1 import health_pb2
    grace = shutdown_grace()
    log = logging.getLogger(__name__)
    log.info("stopping: new calls refused, calls in progress get up to %g s", grace)
    health = getattr(server, "health_servicer", None)
    if health is not None:
        for name in ["", *getattr(server, "service_names", [])]:
            await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    started = time.monotonic()
    await server.stop(grace=grace)
    log.info("stopped after %.1f s", time.monotonic() - started)
