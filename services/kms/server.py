"""Starts the kms: `python -m services.kms --listen 127.0.0.1:9101 --data-dir DIR [--policy FILE]`.

State lives in `<data>/kms/`: master.key, keys/<name>.json and (by default) policy.json,
which is written on first start from the cluster's certificates (see policy.default_policy).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

import grpc

from sealstore import config, rpc, tls
from sealstore.v1 import kms_pb2_grpc
from services.kms.interceptor import AuthorizationInterceptor
from services.kms.keystore import FileKeyStore
from services.kms.metrics import MetricsInterceptor
from services.kms.policy import ensure_policy_file
from services.kms.service import KeyManager
from services.kms.servicer import KeyServiceServicer

log = logging.getLogger(__name__)

ROLE = "kms"
SERVICE_NAME = "sealstore.v1.KeyService"


def kms_dir(data_dir: Path) -> Path:
    return data_dir / "kms"


def build_kms_server(data_dir: Path, listen: str, policy_path: Path | None = None) -> grpc.aio.Server:
    """The kms gRPC server over `<data>/kms`, not yet started."""
    certs = config.certs_dir(data_dir)
    policy_path = policy_path or kms_dir(data_dir) / "policy.json"
    store = FileKeyStore(kms_dir(data_dir))  # first, so it creates <data>/kms with mode 0700
    policy = ensure_policy_file(policy_path, tls.role_identities(certs))
    manager = KeyManager(store)
    log.info("kms keystore %s holds %d keys; policy %s (%d identities besides admin)",
             store.root, len(store.list()), policy_path, len(policy.identities))
    return rpc.build_server(
        certs=certs, role=ROLE, listen=listen,
        services=[(kms_pb2_grpc.add_KeyServiceServicer_to_server, KeyServiceServicer(manager), SERVICE_NAME)],
        interceptors=[MetricsInterceptor(), AuthorizationInterceptor(policy)],
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m services.kms", description="sealstore key service (KES semantics)")
    parser.add_argument("--listen", default="127.0.0.1:9101", help="host:port to serve gRPC on")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help=f"cluster data folder (default ${config.ENV_DATA_DIR} or ./data)")
    parser.add_argument("--policy", type=Path, default=None, help="policy file (default <data>/kms/policy.json)")
    parser.add_argument("--metrics-port", type=int, default=0,
                        help="serve Prometheus metrics over HTTP on this port (default: off)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rpc.configure_logging("kms")
    data_dir = (args.data_dir or config.data_dir()).resolve()
    if args.metrics_port:
        from prometheus_client import start_http_server
        start_http_server(args.metrics_port, addr="127.0.0.1")

    async def serve() -> None:
        server = build_kms_server(data_dir, args.listen, args.policy)
        log.info("kms listening on %s", args.listen)
        await rpc.run_server(server)

    asyncio.run(serve())
