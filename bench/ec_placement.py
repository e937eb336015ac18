"""Where should erasure coding run? Measures the two candidate data paths with real gRPC
processes over loopback with mutual TLS, the way the services talk:

  A. "worker fans out": the crypto worker erasure-codes each 1 MiB stripe and streams
     shard i straight to storage node i (one network hop per shard byte).
  B. "node relays": the worker streams the whole (encrypted) stripe to one storage node, which
     erasure-codes it, keeps its own shard and forwards the others to its peers (two hops).

Prints MiB/s and CPU-seconds per GiB (all processes). Sinks discard the bytes, so only the
transport and coding costs are compared. Run: .venv/bin/python bench/ec_placement.py [MiB]
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sealstore import rpc, tls  # noqa: E402

K, M = 2, 2
STRIPE = 16 * 65568
IDENTITY = (lambda b: b, lambda b: b)


def _generic(name: str, behaviour) -> grpc.GenericRpcHandler:
    handler = grpc.stream_unary_rpc_method_handler(behaviour, request_deserializer=None, response_serializer=None)
    return grpc.method_handlers_generic_handler("bench.Pipe", {name: handler})


async def serve(role: str, port: int, certs: Path, peers: list[str]) -> None:
    server = grpc.aio.server(options=rpc.CHANNEL_OPTIONS)

    async def sink(requests, context):
        n = 0
        async for chunk in requests:
            n += len(chunk)
        return str(n).encode()

    async def relay(requests, context):
        from pyeclib.ec_iface import ECDriver
        driver = ECDriver(k=K, m=M, ec_type="isa_l_rs_cauchy")
        channels = [rpc.aio_channel(certs, "crypto", p, server="storage") for p in peers]
        calls = [ch.stream_unary("/bench.Pipe/Sink")() for ch in channels]
        async for stripe in requests:
            fragments = driver.encode(stripe)
            await asyncio.gather(*(call.write(f) for call, f in zip(calls, fragments[1:])))
        for call in calls:
            await call.done_writing()
        await asyncio.gather(*calls)
        return b"ok"

    server.add_generic_rpc_handlers([_generic("Sink", sink), _generic("Relay", relay)])
    server.add_secure_port(f"127.0.0.1:{port}", rpc.server_credentials(certs, "storage"))
    await server.start()
    await server.wait_for_termination()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def client(mode: str, ports: list[int], certs: Path, mib: int) -> float:
    from pyeclib.ec_iface import ECDriver
    driver = ECDriver(k=K, m=M, ec_type="isa_l_rs_cauchy")
    stripe = os.urandom(STRIPE)
    stripes = (mib << 20) // STRIPE
    start = time.perf_counter()
    if mode == "A":
        channels = [rpc.aio_channel(certs, "crypto", f"127.0.0.1:{p}", server="storage") for p in ports]
        calls = [ch.stream_unary("/bench.Pipe/Sink")() for ch in channels]
        for _ in range(stripes):
            fragments = driver.encode(stripe)
            await asyncio.gather(*(call.write(f) for call, f in zip(calls, fragments)))
        for call in calls:
            await call.done_writing()
        await asyncio.gather(*calls)
    else:
        channel = rpc.aio_channel(certs, "crypto", f"127.0.0.1:{ports[0]}", server="storage")
        call = channel.stream_unary("/bench.Pipe/Relay")()
        for _ in range(stripes):
            await call.write(stripe)
        await call.done_writing()
        await call
    return time.perf_counter() - start


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        role, port, certs, peers = sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]), sys.argv[5:]
        asyncio.run(serve(role, port, certs, peers))
        return
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    with tempfile.TemporaryDirectory() as tmp:
        certs = Path(tmp) / "certs"
        tls.ensure_dev_pki(certs)
        base = 41000 + os.getpid() % 1000 * 10
        ports = [base + i for i in range(K + M)]
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "268435456"}
        sinks = [subprocess.Popen([sys.executable, __file__, "serve", "sink", str(p), str(certs)], env=env)
                 for p in ports[1:]]
        head = subprocess.Popen([sys.executable, __file__, "serve", "relay", str(ports[0]), str(certs),
                                 *(f"127.0.0.1:{p}" for p in ports[1:])], env=env)
        procs = [head, *sinks]
        time.sleep(2)
        try:
            for mode, label in (("A", "worker fans out shards (EC in crypto worker)"),
                                ("B", "one node relays shards (EC in storage node)")):
                before = sum(_cpu_seconds(p.pid) for p in procs)
                t0 = os.times()
                seconds = asyncio.run(client(mode, ports, certs, mib))
                t1 = os.times()
                cpu = (t1.user - t0.user) + (t1.system - t0.system) + sum(_cpu_seconds(p.pid) for p in procs) - before
                print(f"{label:<48} {mib / seconds:7.0f} MiB/s   {cpu / (mib / 1024):5.2f} CPU-s/GiB")
        finally:
            for p in procs:
                p.kill()


if __name__ == "__main__":
    main()
