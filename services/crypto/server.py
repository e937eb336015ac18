"""Starts the crypto worker: `python -m services.crypto --listen 127.0.0.1:9102 --data-dir DIR [--cipher aes|chacha20]`.

Peers come from the cluster topology: one mTLS channel to the kms, one quorum client of
the erasure set. Both present this worker's own certificate (--instance, e.g. crypto-0) and
check that the peer's certificate names the kms or a storage node.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from sealstore import config, observability
from sealstore import memory
from sealstore.erasure import client as erasure_client
from sealstore.rpc import aio_channel, build_server, configure_logging, run_server
from sealstore.v1 import crypto_pb2_grpc
from services.crypto import dare
from services.crypto.kms_client import KmsClient
from services.crypto.servicer import CryptoServicer

ROLE = "crypto"
SERVICE_NAME = "sealstore.v1.CryptoService"
log = logging.getLogger(__name__)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m services.crypto", description="sealstore crypto worker")
    p.add_argument("--listen", default="127.0.0.1:9102", help="host:port to serve gRPC on")
    p.add_argument("--data-dir", type=Path, default=None,
                   help=f"cluster data folder (default ${config.ENV_DATA_DIR} or ./data)")
    p.add_argument("--instance", default=None,
                   help=f"this instance's certificate name, e.g. crypto-1 (default ${config.ENV_INSTANCE} or crypto-0)")
    p.add_argument("--metrics-listen", default=observability.metrics_flag_default(),
                   help=f"[host:]port to serve Prometheus /metrics on (default ${observability.ENV_METRICS_ADDR} or off; "
                        f"a bare port is loopback)")
    p.add_argument("--cipher", default="aes", help="DARE cipher for new objects: aes (AES-256-GCM, default) "
                   "or chacha20 (ChaCha20-Poly1305)")
    args = p.parse_args(argv)
    try:
        args.cipher_id = dare.cipher_id(args.cipher)
    except ValueError as exc:
        p.error(str(exc))
    return args


async def serve(args: argparse.Namespace) -> None:
    data = (args.data_dir or config.data_dir()).resolve()
    topology = config.load_topology(data)
    certs = config.certs_dir(data)
    instance = config.instance_name(ROLE, args.instance)
    store = erasure_client.connect(topology, certs, instance)
    kms_channel = aio_channel(certs, instance, topology.kms, server="kms")
    servicer = CryptoServicer(store, KmsClient(kms_channel), cipher=args.cipher_id)
    server = build_server(certs=certs, role=ROLE, instance=instance, listen=args.listen,
                          services=[(crypto_pb2_grpc.add_CryptoServiceServicer_to_server, servicer, SERVICE_NAME)])
    log.info("crypto worker listening on %s; kms %s; %d erasure set(s) of %d (%d+%d); cipher %s", args.listen,
             topology.kms, len(topology.storage_sets), topology.set_size, topology.data_shards, topology.parity_shards,
             dare.CIPHER_NAMES[args.cipher_id])

    async def close() -> None:
        await store.close()
        await kms_channel.close()
    observability.start_metrics_server(args.metrics_listen)
    trimming = memory.start_trimming()  # noqa: F841 (kept alive for the life of the server)
    await run_server(server, on_stop=close)


def main(argv=None) -> None:
    args = parse_args(argv)
    configure_logging("crypto")
    asyncio.run(serve(args))
