"""`sealstore probe`: is this container's service up, checked over its own TLS? Exit 0 or 1.

For container health checks and Kubernetes exec probes. Runs inside the service's container with
only that container's bundle (SEALSTORE_CERTS_DIR, SEALSTORE_INSTANCE):
- crypto and heal: grpc.health.v1 Check on the service port over mutual TLS with the instance's
  own certificate (their certificates may dial, so this is the path every client takes);
- kms and storage: their certificates are serverAuth only (a stolen one cannot open a connection,
  docs/threat-model.md), so the service also answers health alone on the unix socket
  $SEALSTORE_HEALTH_SOCKET, over TLS with its own certificate; the probe checks that certificate
  against the CA and the service name, then asks for SERVING;
- gateway: an S3 answer on its HTTP port, and on its HTTPS port (SEALSTORE_GATEWAY_HTTPS_ADDR)
  a certificate that the CA signed for the name dialled.
"""
from __future__ import annotations

import argparse
import http.client
import os
import socket
import ssl
import sys
from pathlib import Path

from sealstore import config, tls

DEFAULT_PORTS = {"kms": 9101, "crypto": 9102, "heal": 9103, "storage": 9111, "gateway": 9000}
"""The ports of deploy/compose.yaml and deploy/k8s (what the services are started with there)."""
CAN_DIAL = set(tls.CLIENT_ROLES)


def register(sub) -> None:
    probe = sub.add_parser("probe", help="health of this container's own service over its own TLS "
                                         "(exit 0 healthy, 1 not; for container health checks)")
    probe.add_argument("--instance", default=os.environ.get(config.ENV_INSTANCE, ""),
                       help=f"instance whose bundle to use (default ${config.ENV_INSTANCE})")
    probe.add_argument("--address", default="",
                       help="host:port of the service (default 127.0.0.1 and the role's port: "
                            + ", ".join(f"{r} {p}" for r, p in DEFAULT_PORTS.items()) + ")")
    probe.add_argument("--socket", default=os.environ.get(config.ENV_HEALTH_SOCKET, ""),
                       help=f"health socket of kms and storage (default ${config.ENV_HEALTH_SOCKET})")
    probe.add_argument("--https", default=os.environ.get(config.ENV_GATEWAY_HTTPS_ADDR, ""),
                       help=f"gateway: also check its HTTPS endpoint (default ${config.ENV_GATEWAY_HTTPS_ADDR})")
    probe.add_argument("--timeout", type=float, default=3.0, help="seconds per check (default 3)")
    probe.add_argument("--quiet", action="store_true", help="print nothing when healthy")


def _local(address: str) -> tuple[str, int]:
    """A listen address (0.0.0.0:9000) as the address to dial from inside the container."""
    host, _, port = address.rpartition(":")
    return ("127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host.strip("[]")), int(port)


def _grpc_health(target: str, credentials, server_name: str, timeout: float) -> str:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from sealstore import rpc
    channel = grpc.secure_channel(target, credentials, options=rpc.channel_options(server_name))
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.RpcError as exc:
        return f"{exc.code().name} ({(exc.details() or '').splitlines()[0][:200] if exc.details() else ''})"
    finally:
        channel.close()


def _check_grpc(role: str, instance: str, certs: Path, args) -> list[str]:
    import grpc
    from sealstore import rpc
    if role in CAN_DIAL:
        host, port = _local(args.address or f"127.0.0.1:{DEFAULT_PORTS[role]}")
        state = _grpc_health(f"{host}:{port}", rpc.channel_credentials(certs, instance), role, args.timeout)
        where = f"{host}:{port} (mTLS as {instance})"
    else:
        if not args.socket:
            return [f"{role} certificates cannot dial their own port (serverAuth only): start the service "
                    f"with {config.ENV_HEALTH_SOCKET} and probe that socket (--socket)"]
        ca = tls.tls_files(certs, instance).ca.read_bytes()
        state = _grpc_health(f"unix:{args.socket}", grpc.ssl_channel_credentials(root_certificates=ca), role,
                             args.timeout)
        where = f"unix:{args.socket} (TLS, certificate of {role} from the cluster CA)"
    return [] if state == "SERVING" else [f"{role} at {where}: {state}"]


def _check_gateway(instance: str, certs: Path, args) -> list[str]:
    problems = []
    host, port = _local(args.address or os.environ.get(config.ENV_GATEWAY_ADDR, "") or f"127.0.0.1:{DEFAULT_PORTS['gateway']}")
    try:
        # Anonymous GET /: any S3 answer (403 AccessDenied in S3 XML) proves the request path is alive.
        conn = http.client.HTTPConnection(host, port, timeout=args.timeout)
        conn.request("GET", "/")
        response = conn.getresponse()
        body = response.read(4096)
        conn.close()
        if response.status >= 500 or b"<Error>" not in body and response.status != 200:
            problems.append(f"gateway http://{host}:{port}: HTTP {response.status}")
    except OSError as exc:
        problems.append(f"gateway http://{host}:{port}: {exc}")
    https = args.https.strip()
    if https and https.lower() != "off":
        host, port = _local(https)
        context = ssl.create_default_context(cafile=str(tls.tls_files(certs, instance).ca))
        try:
            with socket.create_connection((host, port), timeout=args.timeout) as raw:
                with context.wrap_socket(raw, server_hostname=host):
                    pass
        except (OSError, ssl.SSLError) as exc:
            problems.append(f"gateway https://{host}:{port}: {exc}")
    return problems


def run(args) -> int:
    instance = args.instance or ""
    if not instance:
        print(f"sealstore probe: no instance: set {config.ENV_INSTANCE} or pass --instance", file=sys.stderr)
        return 1
    try:
        role = tls.role_of_instance(instance)
    except ValueError as exc:
        print(f"sealstore probe: {exc}", file=sys.stderr)
        return 1
    certs = config.certs_dir()
    if role == "admin":
        print("sealstore probe: admin runs no service", file=sys.stderr)
        return 1
    problems = _check_gateway(instance, certs, args) if role == "gateway" else _check_grpc(role, instance, certs, args)
    for problem in problems:
        print(f"sealstore probe: {problem}", file=sys.stderr)
    if not problems and not args.quiet:
        print(f"{instance}: SERVING")
    return 1 if problems else 0
