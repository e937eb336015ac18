"""What one full-data gRPC hop costs on this machine: a client streams 1 GiB of WriteShard blocks to
a server in another process over mutual TLS, as the crypto worker streams shards to a storage
node; prints MiB/s and the CPU-seconds per GiB of sender and receiver, for protobuf messages and
for sealstore.frames' hand-written ones, at several message sizes.

    .venv/bin/python bench/grpc_stream_cost.py [--gib 1] [--sizes 131072,524368,1048576]

Both processes get the glibc malloc settings the launcher gives every service (without them,
every message of 128 KiB or more is mapped and faulted in afresh, and the figures double).
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from sealctl.launcher import MALLOC_ENV  # noqa: E402
from sealstore import frames, rpc, tls  # noqa: E402
from sealstore.v1 import storage_pb2  # noqa: E402

METHOD = "/sealstore.v1.StorageService/WriteShard"


def _serve(certs: Path, framed: bool, ports) -> None:
    async def main() -> None:
        async def write_shard(requests, context):
            total = 0
            async for request in requests:
                total += len(request.block)
            return storage_pb2.WriteShardResponse(bytes=total)
        read = frames.read_write_shard_request if framed else storage_pb2.WriteShardRequest.FromString
        handler = grpc.method_handlers_generic_handler("sealstore.v1.StorageService", {
            "WriteShard": grpc.stream_unary_rpc_method_handler(
                write_shard, request_deserializer=read,
                response_serializer=storage_pb2.WriteShardResponse.SerializeToString)})
        server = grpc.aio.server(options=rpc.CHANNEL_OPTIONS)
        server.add_generic_rpc_handlers([handler])
        ports.put(server.add_secure_port("127.0.0.1:0", rpc.server_credentials(certs, "storage")))
        await server.start()
        await server.wait_for_termination()
    asyncio.run(main())


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _send(certs: Path, port: int, framed: bool, size: int, total: int) -> tuple[float, float]:
    channel = grpc.aio.secure_channel(f"127.0.0.1:{port}", rpc.channel_credentials(certs, "crypto"),
                                      options=rpc.channel_options("storage"))
    write_shard = channel.stream_unary(
        METHOD, request_serializer=frames.serialize if framed else storage_pb2.WriteShardRequest.SerializeToString,
        response_deserializer=storage_pb2.WriteShardResponse.FromString)
    blocks = [os.urandom(size) for _ in range(4)]  # reused, as the worker reuses none: only the send counts

    async def requests():
        for i in range(total // size):
            block = blocks[i % 4]
            yield frames.Payload(block) if framed else storage_pb2.WriteShardRequest(block=block)
    start, cpu = time.perf_counter(), time.process_time()
    answer = await write_shard(requests())
    assert answer.bytes == total // size * size
    await channel.close()
    return time.perf_counter() - start, time.process_time() - cpu


def measure(certs: Path, framed: bool, size: int, total: int) -> dict:
    ports = multiprocessing.Queue()
    server = multiprocessing.Process(target=_serve, args=(certs, framed, ports), daemon=True)
    server.start()
    try:
        port = ports.get(timeout=60)
        before = _cpu_seconds(server.pid)
        wall, sender = asyncio.run(_send(certs, port, framed, size, total))
        receiver = _cpu_seconds(server.pid) - before
    finally:
        server.kill()
    gib = total / (1 << 30)
    return {"mib_s": total / wall / (1 << 20), "sender": sender / gib, "receiver": receiver / gib}


def main() -> None:
    if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--sizes", default="131072,524368,1048576")
    args = parser.parse_args()
    certs = Path(tempfile.mkdtemp(prefix="grpc-cost-")) / "certs"
    tls.ensure_dev_pki(certs)
    total = int(args.gib * (1 << 30))
    print("| message bytes | messages | MiB/s | sender CPU-s/GiB | receiver CPU-s/GiB | hop CPU-s/GiB |")
    print("|---|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        for framed in (False, True):
            r = measure(certs, framed, size, total)
            print(f"| {size} | {'frames' if framed else 'protobuf'} | {r['mib_s']:.0f} | {r['sender']:.2f} | "
                  f"{r['receiver']:.2f} | {r['sender'] + r['receiver']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
