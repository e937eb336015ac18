"""Generated hostile requests against a running cluster: `python bench/fuzz_gateway.py [-n 100000]`.

Starts `sealstore run` on free ports (as the cluster harness does), seeds a bucket, sends N
requests from tests/fuzz/hostile.py with a few concurrent clients, and prints counts by status,
answers >= 500 other than 501/503, hung connections, whether every service is still alive,
and the gateway's RSS before and after. Exit status 1 if any of those is wrong.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.cluster.harness import start_cluster, stop_cluster  # noqa: E402
from tests.fuzz import hostile  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--requests", type=int, default=100_000)
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before a request counts as hung")
    parser.add_argument("--throttle", action="store_true",
                        help="keep the failed-auth throttle at its default (most requests then get SlowDown)")
    args = parser.parse_args()

    env = {"SEALSTORE_GATEWAY_HEADER_TIMEOUT": "5", "SEALSTORE_GATEWAY_BODY_TIMEOUT": "5"}
    if not args.throttle:
        env["SEALSTORE_GATEWAY_AUTH_FAIL_BURST"] = "100000000"
    with tempfile.TemporaryDirectory(prefix="sealstore-fuzz-") as tmp:
        cluster = start_cluster(Path(tmp), extra_env=env)
        try:
            s3 = cluster.s3()
            bucket = "fuzz-bench"
            s3.create_bucket(Bucket=bucket)
            for i in range(5):
                s3.put_object(Bucket=bucket, Key=f"fuzz-{i}", Body=os.urandom(1000 * i))
            gateway_pid = cluster.service("gateway")["pid"]
            before = rss_mib(gateway_pid)
            target = hostile.Target("127.0.0.1", urlsplit(cluster.endpoint).port, cluster.access_key,
                                    cluster.secret_key, bucket)

            def progress(n, tally):
                print(f"  {n} requests, {len(tally.server_errors)} server errors, {len(tally.hung)} hung, "
                      f"gateway RSS {rss_mib(gateway_pid):.1f} MiB", flush=True)
            started = time.monotonic()
            tally = asyncio.run(hostile.run(target, args.requests, args.concurrency, args.seed, args.timeout,
                                            progress=progress))
            took = time.monotonic() - started
            after = rss_mib(gateway_pid) if alive(gateway_pid) else float("nan")
            services = {svc["name"]: alive(svc["pid"]) for svc in cluster.cluster_json()["services"]}
            still_serves = [obj["Key"] for obj in s3.list_objects_v2(Bucket=bucket, Prefix="fuzz-").get("Contents", [])]
            intact = all(len(s3.get_object(Bucket=bucket, Key=f"fuzz-{i}")["Body"].read()) == 1000 * i
                         for i in range(5))
        finally:
            code = stop_cluster(cluster)
    print(f"{args.requests} hostile requests, {args.concurrency} clients, seed {args.seed}: {took:.0f} s "
          f"({args.requests / took:.0f} req/s)")
    print("by status: " + ", ".join(f"{k}: {v}" for k, v in sorted(tally.statuses.items(), key=lambda kv: str(kv[0]))))
    print(f"answers >= 500 other than 501/503: {len(tally.server_errors)} {tally.server_errors[:5]}")
    print(f"hung connections (no answer in {args.timeout:.0f} s): {len(tally.hung)} {tally.hung[:5]}")
    print(f"services alive: {sum(services.values())}/{len(services)} "
          f"{[n for n, up in services.items() if not up] or ''}")
    print(f"gateway still serves: {bool(still_serves)}; seeded objects intact: {intact}")
    print(f"gateway RSS: {before:.1f} MiB before, {after:.1f} MiB after; launcher exit {code}")
    ok = not tally.server_errors and not tally.hung and all(services.values()) and intact
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
