"""`make bench`: PUT and GET throughput of one large SSE-KMS object through the whole local
cluster, and each service's peak memory. A benchmark prints figures; it asserts nothing.

The client signs with UNSIGNED-PAYLOAD and streams from a reused buffer, so it measures the
server, not the client's hashing (botocore hashes every body over plain HTTP: ~3.6 CPU-s/GiB).
Everything (client and 7 services) shares this machine's cores.

    .venv/bin/python bench/bench_cluster.py [--mib 256] [--rounds 3]
"""
from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sealstore import sigv4  # noqa: E402
from tests.cluster.harness import start_cluster, stop_cluster  # noqa: E402

CHUNK = 1 << 20


def signed_headers(cluster, method: str, path: str, extra: dict[str, str]) -> dict[str, str]:
    # botocore always signs the payload over plain HTTP; UNSIGNED-PAYLOAD needs our own signer.
    return sigv4.sign_request(method, cluster.endpoint + path, extra, "UNSIGNED-PAYLOAD",
                              cluster.access_key, cluster.secret_key)


def put(cluster, path: str, size: int, extra: dict[str, str]) -> float:
    block = os.urandom(CHUNK)
    url = urlsplit(cluster.endpoint)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    headers = signed_headers(cluster, "PUT", path, {**extra, "Content-Length": str(size)})
    start = time.perf_counter()
    conn.putrequest("PUT", path, skip_host=True, skip_accept_encoding=True)
    for name, value in headers.items():
        conn.putheader(name, value)
    conn.endheaders()
    sent = 0
    while sent < size:
        n = min(CHUNK, size - sent)
        conn.send(block if n == CHUNK else block[:n])
        sent += n
    response = conn.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - start
    if response.status != 200:
        raise SystemExit(f"PUT failed: {response.status} {body[:500]!r}")
    conn.close()
    return elapsed


def get(cluster, path: str, size: int) -> float:
    url = urlsplit(cluster.endpoint)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    headers = signed_headers(cluster, "GET", path, {})
    start = time.perf_counter()
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    if response.status != 200:
        raise SystemExit(f"GET failed: {response.status} {response.read()[:500]!r}")
    received = 0
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    while True:
        n = response.readinto(view)
        if not n:
            break
        received += n
    elapsed = time.perf_counter() - start
    conn.close()
    if received != size:
        raise SystemExit(f"GET returned {received} bytes, expected {size}")
    return elapsed


def proc_status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])  # kB
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = args.mib << 20
    with tempfile.TemporaryDirectory(prefix="sealstore-bench-") as tmp:
        cluster = start_cluster(Path(tmp))
        try:
            services = [s for s in cluster.cluster_json()["services"]]
            cluster.cli("key", "create", "bench-key")
            s3 = cluster.s3()
            s3.create_bucket(Bucket="bench")
            cluster.cli("encrypt", "set", "sse-kms", "bench-key", "bench")
            cpu_before = {s["name"]: cpu_seconds(s["pid"]) for s in services}
            sse = {"x-amz-server-side-encryption": "aws:kms",
                   "x-amz-server-side-encryption-aws-kms-key-id": "bench-key"}
            puts = [put(cluster, "/bench/object.bin", size, sse) for _ in range(args.rounds)]
            cpu_mid = {s["name"]: cpu_seconds(s["pid"]) for s in services}
            gets = [get(cluster, "/bench/object.bin", size) for _ in range(args.rounds)]
            cpu_after = {s["name"]: cpu_seconds(s["pid"]) for s in services}
            head = s3.head_object(Bucket="bench", Key="object.bin")
            assert head["ServerSideEncryption"] == "aws:kms"
            print(f"sealstore bench: {args.mib} MiB SSE-KMS object, {args.rounds} rounds, "
                  f"{os.cpu_count()} cores, local cluster (1 gateway, 1 kms, 1 crypto, "
                  f"{sum(1 for s in services if s['role'] == 'storage')} storage nodes)")
            for label, times in (("PUT", puts), ("GET", gets)):
                rates = [args.mib / t for t in times]
                print(f"  {label}: median {statistics.median(rates):7.1f} MiB/s   "
                      f"(runs: {', '.join(f'{r:.1f}' for r in rates)})")
            print("  per service: peak RSS (VmHWM), CPU-s per GiB on PUT / GET")
            gib = args.mib * args.rounds / 1024
            for s in services:
                name, pid = s["name"], s["pid"]
                print(f"    {name:<10} {proc_status(pid, 'VmHWM') / 1024:7.1f} MiB   "
                      f"{(cpu_mid[name] - cpu_before[name]) / gib:5.2f} / "
                      f"{(cpu_after[name] - cpu_mid[name]) / gib:5.2f}")
        finally:
            stop_cluster(cluster)


if __name__ == "__main__":
    main()
