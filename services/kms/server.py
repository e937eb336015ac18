"""Starts the kms: `python -m services.kms --listen 127.0.0.1:9101 --data-dir DIR [--policy FILE]`.

State lives in `<data>/kms/`: policy.json (written on first start from the cluster's
certificates, see policy.default_policy) and, with the default fs keystore, master.key and
keys/<name>.json. The keystore and cache come from the environment (settings.py):
SEALSTORE_KMS_KEYSTORE=fs|openbao-kv|openbao-transit and SEALSTORE_OPENBAO_*.
While serving, the kms checks the keystore's health and deletes keys whose scheduled
deletion is due every SEALSTORE_KMS_MAINTENANCE_INTERVAL seconds (and once at start). At start it
also creates the deployment's own keys if missing (SEALSTORE_SSE_S3_KEY, SEALSTORE_DEFAULT_KMS_KEY).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path

import grpc

from sealstore import config, errors, observability, rpc, tls
from sealstore.v1 import kms_pb2_grpc
from services.kms import audit as kms_audit, kes_api
from services.kms.interceptor import AuthorizationInterceptor
from services.kms.metrics import MetricsInterceptor
from services.kms.policy import ensure_policy_file
from services.kms.service import KeyManager
from services.kms.servicer import KeyServiceServicer
from services.kms.settings import KmsSettings, open_backend

log = logging.getLogger(__name__)

ROLE = "kms"
ENV_METRICS_PORT = "SEALSTORE_KMS_METRICS_PORT"
SERVICE_NAME = "sealstore.v1.KeyService"


def kms_dir(data_dir: Path) -> Path:
    return data_dir / "kms"


def build_key_manager(data_dir: Path, settings: KmsSettings | None = None) -> KeyManager:
    """The KeyManager over the configured backend (SEALSTORE_KMS_KEYSTORE...)."""
    settings = settings or KmsSettings.from_env()
    store = open_backend(settings, kms_dir(data_dir))  # first, so it creates <data>/kms with mode 0700
    log.info("kms keystore %s%s", store.kind, f" at {settings.openbao.address}" if settings.openbao else "")
    return KeyManager(store)


def build_kms_server(data_dir: Path, listen: str, policy_path: Path | None = None,
                     manager: KeyManager | None = None, audit: "kms_audit.AuditLog | None" = None,
                     instance: str = ROLE) -> grpc.aio.Server:
    """The kms gRPC server over `<data>/kms`, not yet started. `server.kms_manager` and
    `server.kms_policy` are what the KES-compatible API shares with it."""
    certs = config.certs_dir(data_dir)
    policy_path = policy_path or kms_dir(data_dir) / "policy.json"
    manager = manager or build_key_manager(data_dir)
    policy = ensure_policy_file(policy_path, tls.instance_identities(certs))
    log.info("kms policy %s (%d identities besides admin)", policy_path, len(policy.identities))
    interceptors = [MetricsInterceptor()]
    if audit is not None:
        interceptors.append(kms_audit.AuditInterceptor(audit))  # outside authorisation: refusals are audited
    interceptors.append(AuthorizationInterceptor(policy))
    server = rpc.build_server(
        certs=certs, role=ROLE, instance=instance, listen=listen,
        services=[(kms_pb2_grpc.add_KeyServiceServicer_to_server, KeyServiceServicer(manager), SERVICE_NAME)],
        interceptors=interceptors,
    )
    server.kms_manager = manager  # type: ignore[attr-defined]
    server.kms_policy = policy  # type: ignore[attr-defined]
    return server


def ensure_deployment_keys(manager: KeyManager, names: tuple[str, ...]) -> list[str]:
    """Creates each key the deployment itself uses (SSE-S3, the default for `aws:kms` without a
    key id) unless it exists; returns the names created. A key that exists in any state (also
    disabled or pending deletion: an operator's decision) is left alone."""
    created = []
    for name in names:
        try:
            manager.describe_key(name)
            continue
        except errors.KMSNotFound:
            pass
        except errors.SealstoreError as exc:  # keystore unreachable: serve anyway, say why SSE-S3 may fail
            log.warning("could not check the deployment key %r: %s", name, exc.message)
            continue
        try:
            manager.create_key(name, ROLE)
        except errors.KMSKeyExists:  # another kms of the deployment made it first
            continue
        except errors.SealstoreError as exc:
            log.warning("could not create the deployment key %r: %s", name, exc.message)
            continue
        log.info("created the deployment key %r", name)
        created.append(name)
    return created


async def maintenance_round(manager: KeyManager) -> None:
    """Checks the backend's health and, if it answers, deletes keys whose deletion is due."""
    try:
        if await asyncio.to_thread(manager.check_backend):
            await asyncio.to_thread(manager.purge_due_deletions)
    except Exception:  # keep maintaining: one failed round must not stop the next
        log.exception("kms maintenance round failed")


async def maintain(manager: KeyManager, interval: float) -> None:
    """Forever: wait, then one maintenance round."""
    while True:
        await asyncio.sleep(interval)
        await maintenance_round(manager)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m services.kms", description="sealstore key service (KES semantics)")
    parser.add_argument("--listen", default="127.0.0.1:9101", help="host:port to serve gRPC on")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help=f"cluster data folder (default ${config.ENV_DATA_DIR} or ./data)")
    parser.add_argument("--policy", type=Path, default=None, help="policy file (default <data>/kms/policy.json)")
    parser.add_argument("--metrics-listen", default=observability.metrics_flag_default(),
                        help=f"[host:]port to serve Prometheus /metrics on (default ${observability.ENV_METRICS_ADDR} or off; "
                             f"a bare port is loopback)")
    parser.add_argument("--metrics-port", type=int, default=int(os.environ.get(ENV_METRICS_PORT) or 0),
                        help=f"without --metrics-listen: serve /metrics on 127.0.0.1 at this port (default "
                             f"${ENV_METRICS_PORT} or off)")
    parser.add_argument("--audit-file", default=None,
                        help="audit log: a file (default <data>/kms/audit.log), - for stdout, off for none")
    parser.add_argument("--instance", default=None,
                        help=f"this kms's certificate name (default ${config.ENV_INSTANCE} or kms)")
    parser.add_argument("--kes-listen", default="", help="host:port to serve the KES-compatible HTTPS API on (default: off)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rpc.configure_logging("kms")
    data_dir = (args.data_dir or config.data_dir()).resolve()
    observability.start_metrics_server(args.metrics_listen or (f"127.0.0.1:{args.metrics_port}" if args.metrics_port
                                                               else ""))

    settings = KmsSettings.from_env()

    async def serve() -> None:
        manager = build_key_manager(data_dir, settings)  # first: it makes <data>/kms with mode 0700
        audit = kms_audit.open_audit_log(args.audit_file, kms_dir(data_dir))
        server = build_kms_server(data_dir, args.listen, args.policy, manager, audit=audit,
                                  instance=config.instance_name(ROLE, args.instance))
        await maintenance_round(manager)  # due deletions are carried out before serving
        await asyncio.to_thread(ensure_deployment_keys, manager, settings.deployment_keys)
        upkeep = asyncio.create_task(maintain(manager, settings.maintenance_seconds))
        log.info("kms listening on %s", args.listen)
        kes = (await kes_api.start_kes_api(server.kms_manager, server.kms_policy, audit, config.certs_dir(data_dir),
                                           args.kes_listen) if args.kes_listen else None)
        try:
            await rpc.run_server(server, on_stop=kes.cleanup if kes else None)
        finally:
            upkeep.cancel()
            manager.store.close()

    asyncio.run(serve())
