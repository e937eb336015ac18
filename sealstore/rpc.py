"""gRPC plumbing every service shares: mTLS servers and channels, reflection, health,
and the one place where typed errors become gRPC statuses."""
from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import signal
from pathlib import Path
from typing import Any, Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sealstore import errors, frames, observability
from sealstore.tls import SERVICE_NAMES, identity_of, role_of_instance, tls_files

log = logging.getLogger(__name__)

MAX_MESSAGE = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.keepalive_time_ms", 30_000),
    # A fixed 1 MiB HTTP/2 window per stream instead of gRPC's bandwidth-delay probing, which grew
    # the windows of loopback streams until a crypto worker with 8 streams held 0.65-1.2 GiB of
    # messages in flight (RSS). 1 MiB covers a LAN's round trip at several GB/s per stream, and
    # the fixed window was as fast or faster here (docs/performance.md).
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 1 << 20),
]
CLIENT_CHANNEL_OPTIONS = [
    *CHANNEL_OPTIONS,
    # gRPC's default reconnect backoff grows to 120 s: a gateway that saw the crypto worker (or a
    # worker that saw the kms) die kept answering 503 for minutes after it was back. Peers are
    # on a LAN; retrying every 2 s at most costs nothing.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # A name that resolves to several servers (a Kubernetes headless Service over the crypto
    # workers' pods) gets calls spread over all of them; with one address this is pick-first.
    ("grpc.lb_policy_name", "round_robin"),
]


def server_credentials(certs: Path, instance: str) -> grpc.ServerCredentials:
    ca, cert, key = tls_files(certs, instance).read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


def channel_credentials(certs: Path, instance: str) -> grpc.ChannelCredentials:
    ca, cert, key = tls_files(certs, instance).read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def channel_options(server: str, base: list[tuple[str, Any]] | None = None) -> list[tuple[str, Any]]:
    """Channel options that make the TLS handshake check the server's certificate for the
    service name `server` ("kms", "crypto" or "storage"), whatever address is dialled: only
    that service's certificates carry the name, so no other role can answer in its place."""
    if server not in SERVICE_NAMES:
        raise ValueError(f"no service is named {server!r} (expected one of {', '.join(SERVICE_NAMES)})")
    return [*(CLIENT_CHANNEL_OPTIONS if base is None else base), ("grpc.ssl_target_name_override", SERVICE_NAMES[server])]


def aio_channel(certs: Path, instance: str, target: str, *, server: str) -> grpc.aio.Channel:
    """An mTLS channel to the `server` service ("kms", "crypto", "storage") at `target`,
    presenting the certificate of `instance` (an instance name, or a role for its first instance)."""
    return observability.traced_channel(
        grpc.aio.secure_channel(target, channel_credentials(certs, instance), options=channel_options(server)))


def sync_channel(certs: Path, instance: str, target: str, *, server: str) -> grpc.Channel:
    return grpc.secure_channel(target, channel_credentials(certs, instance), options=channel_options(server))


def peer_identity(context: grpc.aio.ServicerContext | grpc.ServicerContext) -> str:
    """The caller's identity: hex SHA-256 of its certificate's public key ('' if none)."""
    auth = context.auth_context() or {}
    pems = auth.get("x509_pem_cert") or []
    if not pems:
        return ""
    return _identity_of_pem(bytes(pems[0]))


# Parsing the certificate was a tenth of the kms's CPU per call; peers are few and present the
# same certificates (each verified by the TLS layer before any call).
_identity_of_pem = functools.lru_cache(maxsize=1024)(identity_of)


async def abort_with(context: grpc.aio.ServicerContext, err: errors.SealstoreError) -> None:
    context.set_trailing_metadata(errors.grpc_trailing_metadata(err))
    await context.abort(err.grpc_status, err.message)


def _wrap_unary(behavior):
    async def handler(request_or_iterator, context):
        try:
            return await behavior(request_or_iterator, context)
        except errors.SealstoreError as err:
            await abort_with(context, err)
    return handler


def _wrap_stream(behavior):
    async def handler(request_or_iterator, context):
        try:
            result = behavior(request_or_iterator, context)
            if inspect.isasyncgen(result):
                async for item in result:
                    yield item
            else:
                # A servicer that writes with context.write() returns a coroutine.
                await result
        except errors.SealstoreError as err:
            await abort_with(context, err)
    return handler


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns a `SealstoreError` raised by any servicer into its gRPC status + code metadata.
    Being outermost, it also gives the bulk methods their hand-written codecs (sealstore.frames)."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        read, write = frames.SERVER_CODECS.get(handler_call_details.method or "", (None, None))
        read, write = read or handler.request_deserializer, write or handler.response_serializer
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(_wrap_unary(handler.unary_unary), read, write)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(_wrap_unary(handler.stream_unary), read, write)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(_wrap_stream(handler.unary_stream), read, write)
        return grpc.stream_stream_rpc_method_handler(_wrap_stream(handler.stream_stream), read, write)


def build_server(*, certs: Path, role: str, listen: str,
                 services: Iterable[tuple[Callable[[Any, grpc.aio.Server], None], Any, str]],
                 interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
                 instance: str | None = None) -> grpc.aio.Server:
    """An mTLS aio server of `role` with the given servicers, reflection and grpc.health.v1,
    presenting the certificate of `instance` (default: the role's first instance).

    `services` holds (add_XServicer_to_server, servicer instance, full service name).
    Interceptors run inside the error interceptor, so their typed errors map too. Storage and
    crypto servers always get their role table (sealstore/authz.py) as the innermost check;
    the kms authorises by its own policy.json (services/kms/interceptor.py).
    """
    from sealstore import authz
    instance = instance or role
    if role_of_instance(instance) != role:
        raise ValueError(f"a {role} server cannot present the certificate of {instance}")
    checks = [authz.RoleAuthorization(role)] if role in ("storage", "crypto") else []
    server = grpc.aio.server(interceptors=[ErrorInterceptor(), observability.RpcObservability(), *interceptors, *checks],
                             options=[*CHANNEL_OPTIONS, *_connection_age_options()])
    names = [reflection.SERVICE_NAME, health.SERVICE_NAME]
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for add, servicer, name in services:
        add(servicer, server)
        names.append(name)
    reflection.enable_server_reflection(names, server)
    server.bound_port = server.add_secure_port(listen, server_credentials(certs, instance))  # type: ignore[attr-defined]
    server.health_servicer = health_servicer  # type: ignore[attr-defined]
    server.health_only = _health_socket_server(certs, instance, health_servicer)  # type: ignore[attr-defined]
    server.service_names = names  # type: ignore[attr-defined]
    return server


def _connection_age_options() -> list[tuple[str, Any]]:
    """$SEALSTORE_GRPC_MAX_CONNECTION_AGE seconds: the server asks each client to reconnect after
    that long (GOAWAY; calls in flight finish), so clients resolve the service name again and find
    replicas added since (Kubernetes HorizontalPodAutoscaler). Unset or 0: connections live on."""
    import os
    from sealstore.config import ENV_GRPC_MAX_CONNECTION_AGE
    seconds = float(os.environ.get(ENV_GRPC_MAX_CONNECTION_AGE) or 0)
    return [("grpc.max_connection_age_ms", int(seconds * 1000))] if seconds > 0 else []


def _health_socket_server(certs: Path, instance: str, servicer) -> grpc.aio.Server | None:
    """grpc.health.v1 alone on the unix socket $SEALSTORE_HEALTH_SOCKET, sharing the main server's
    health state and event loop, over TLS with the instance's own certificate but no client
    certificate: a container's probe (`sealstore probe`) checks the service's own TLS identity
    and liveness even for roles whose certificates may not dial (kms, storage). Health only, and
    only from inside the container's filesystem, so nothing needs the role tables here."""
    import os
    from sealstore.config import ENV_HEALTH_SOCKET
    path = os.environ.get(ENV_HEALTH_SOCKET, "").strip()
    if not path:
        return None
    Path(path).unlink(missing_ok=True)  # left by a previous run of this container
    ca, cert, key = tls_files(certs, instance).read()
    side = grpc.aio.server(options=CHANNEL_OPTIONS)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, side)
    side.add_secure_port(f"unix:{path}", grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                                                      require_client_auth=False))
    return side


async def run_server(server: grpc.aio.Server, on_stop: Callable[[], Any] | None = None) -> None:
    """Starts `server`, marks every service SERVING, and runs until SIGTERM/SIGINT."""
    await server.start()
    health_only = getattr(server, "health_only", None)
    if health_only is not None:
        await health_only.start()
    for name in ["", *server.service_names]:  # type: ignore[attr-defined]
        await server.health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)  # type: ignore[attr-defined]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if health_only is not None:
        await health_only.stop(grace=None)
    await observability.drain_grpc_server(server)
    if on_stop is not None:
        result = on_stop()
        if inspect.isawaitable(result):
            await result


def configure_logging(role: str) -> None:
    observability.configure_logging(role)
