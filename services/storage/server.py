"""Starts a storage node: `python -m services.storage --listen HOST:PORT --data-dir DIR --drives D1[,D2...]`.

Memory note for the launcher (it sets the environment, not this module): glibc returns every
freed block of 128 KiB or more to the OS, so each ~0.5 MiB shard block would pay fresh page
faults; MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=268435456 avoid that, and
MALLOC_ARENA_MAX=2 with a periodic trim (sealstore/memory.py) keeps the retained heap small.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sealstore import config, memory, observability
from sealstore.rpc import build_server, configure_logging, run_server
from sealstore.v1 import storage_pb2_grpc

from services.storage import metrics
from services.storage.drive import DriveIdentity
from services.storage.node import Node
from services.storage.servicer import StorageServicer

ROLE = "storage"
log = logging.getLogger(__name__)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m services.storage", description=__doc__.splitlines()[0])
    p.add_argument("--listen", required=True, help="host:port to serve gRPC on")
    p.add_argument("--data-dir", required=True, type=Path, help="cluster data folder (certificates)")
    p.add_argument("--drives", required=True,
                   help="comma-separated drive folders; drive i of a request is the i-th folder")
    p.add_argument("--instance", default=None,
                   help=f"this instance's certificate name, e.g. storage-1 (default ${config.ENV_INSTANCE} or storage-0)")
    p.add_argument("--node-id", default="", help="name reported by NodeStatus (default: the listen address)")
    p.add_argument("--deployment-id", default="",
                   help="the cluster's deployment id; with it every drive gets a format file, and a drive "
                        "of another deployment or slot is refused")
    p.add_argument("--set-slots", default="",
                   help="comma-separated slot of each drive (with --deployment-id): its member index in the "
                        "erasure set, or set:member")
    p.add_argument("--metrics-listen", default=observability.metrics_flag_default(),
                   help=f"[host:]port to serve Prometheus /metrics on (default ${observability.ENV_METRICS_ADDR} or off; "
                        f"a bare port is loopback)")
    p.add_argument("--set-index", type=int, default=0, help="index of the erasure set the drives belong to")
    args = p.parse_args(argv)
    if args.deployment_id and len(args.set_slots.split(",")) != len(args.drives.split(",")):
        p.error("--set-slots needs one member index per drive")
    return args


def _identity(deployment_id: str, default_set: int, slot: str) -> DriveIdentity:
    set_index, _, member = slot.strip().rpartition(":")
    return DriveIdentity(deployment_id, int(set_index) if set_index else default_set, int(member))


def build(args: argparse.Namespace):
    drives = [Path(d.strip()).resolve() for d in args.drives.split(",") if d.strip()]
    identities = None
    if args.deployment_id:
        identities = [_identity(args.deployment_id, args.set_index, slot) for slot in args.set_slots.split(",")]
    node = Node(args.node_id or args.listen, drives, identities, reconcile_in_background=True)
    server = build_server(
        certs=config.certs_dir(args.data_dir.resolve()), role=ROLE, instance=config.instance_name(ROLE, args.instance),
        listen=args.listen,
        services=[(storage_pb2_grpc.add_StorageServiceServicer_to_server, StorageServicer(node),
                   "sealstore.v1.StorageService")])
    return node, server


DRIVE_THREADS = 16
"""Threads doing drive I/O (servicer.py): enough that a slow listing or fsync does not hold up
metadata reads, few enough that the drives are not flooded."""


async def serve(args: argparse.Namespace) -> None:
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(DRIVE_THREADS, thread_name_prefix="drive"))
    node, server = build(args)
    log.info("storage node %s listening on %s with drives %s", node.node_id, args.listen,
             ", ".join(str(d.root) for d in node.drives))
    for d in node.all_drives:
        if d.refusal:
            log.error("drive %s is %s and will not be used: %s", d.root, d.state, d.refusal)
    metrics.watch_drives(node)
    observability.start_metrics_server(args.metrics_listen)
    trimming = memory.start_trimming()  # noqa: F841 (kept alive for the life of the server)
    await run_server(server)


def main(argv=None) -> None:
    configure_logging("storage")
    asyncio.run(serve(parse_args(argv)))
