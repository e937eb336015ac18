"""Starts the heal service: `python -m services.heal --listen HOST:PORT --data-dir DIR [--instance heal-0]`.

It dials every storage node with its own certificate (role `heal`: only the storage methods
healing needs, nothing on the kms or the crypto worker) and serves HealService to the admin.
The background scanner's pace comes from the environment (services/heal/healer.py):
SEALSTORE_HEAL_INTERVAL, SEALSTORE_HEAL_RATE, SEALSTORE_HEAL_DEEP_EVERY.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path

from sealstore import authz, config, observability
from sealstore.rpc import build_server, configure_logging, run_server
from sealstore.v1 import heal_pb2_grpc

from services.heal.healer import Healer, ScannerSettings, connect_erasure_sets
from services.heal.servicer import HealServicer

ROLE = "heal"
SERVICE_NAME = "sealstore.v1.HealService"
ENV_METRICS_PORT = "SEALSTORE_HEAL_METRICS_PORT"
log = logging.getLogger(__name__)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m services.heal", description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1:9103", help="host:port to serve gRPC on")
    p.add_argument("--data-dir", type=Path, default=None,
                   help=f"cluster data folder (default ${config.ENV_DATA_DIR} or ./data)")
    p.add_argument("--instance", default=None,
                   help=f"this instance's certificate name (default ${config.ENV_INSTANCE} or heal-0)")
    p.add_argument("--metrics-listen", default=observability.metrics_flag_default(),
                   help=f"[host:]port to serve Prometheus /metrics on (default ${observability.ENV_METRICS_ADDR} or off; "
                        f"a bare port is loopback)")
    p.add_argument("--metrics-port", type=int, default=int(os.environ.get(ENV_METRICS_PORT) or 0),
                   help=f"without --metrics-listen: serve /metrics on all interfaces at this port (default "
                        f"${ENV_METRICS_PORT} or off)")
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    data = (args.data_dir or config.data_dir()).resolve()
    topology = config.load_topology(data)
    certs = config.certs_dir(data)
    instance = config.instance_name(ROLE, args.instance)
    store = connect_erasure_sets(topology, certs, instance)
    healer = Healer(store, ScannerSettings.from_env())
    server = build_server(certs=certs, role=ROLE, instance=instance, listen=args.listen,
                          interceptors=[authz.RoleAuthorization(ROLE)],
                          services=[(heal_pb2_grpc.add_HealServiceServicer_to_server, HealServicer(healer),
                                     SERVICE_NAME)])
    observability.start_metrics_server(args.metrics_listen or (f"0.0.0.0:{args.metrics_port}" if args.metrics_port
                                                               else ""))
    log.info("heal service listening on %s; %d erasure set(s) of %d drives", args.listen,
             len(topology.storage_sets), topology.set_size)
    scanner = asyncio.get_running_loop().create_task(healer.scan_forever())

    async def close() -> None:
        scanner.cancel()
        await asyncio.gather(scanner, return_exceptions=True)
        await healer.close()
        await store.close()
    await run_server(server, on_stop=close)


def main(argv=None) -> None:
    args = parse_args(argv)
    configure_logging("heal")
    asyncio.run(serve(args))
