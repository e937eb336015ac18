"""Objects per second of `sealstore key rewrap` (fs keystore): starts a local cluster, PUTs
--objects small SSE-KMS objects (concurrent boto3 PUTs), rotates the key, then times one full
`sealstore key rewrap --bucket B` run and a second run that skips everything. Prints figures,
asserts nothing.

    .venv/bin/python bench/bench_rewrap.py [--objects 10000] [--put-threads 32] [--concurrency 32]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.cluster.harness import SEALSTORE, start_cluster, stop_cluster  # noqa: E402


def timed_rewrap(cluster, bucket: str, concurrency: int) -> tuple[float, str]:
    # Not cluster.cli: its timeout is meant for tests, a rewrap of 10,000 objects may take longer.
    start = time.perf_counter()
    out = subprocess.run([SEALSTORE, "key", "rewrap", "--bucket", bucket, "--restart", "--concurrency",
                          str(concurrency)], env=cluster.env, capture_output=True, check=True)
    return time.perf_counter() - start, out.stdout.decode().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=1024, help="bytes per object")
    parser.add_argument("--put-threads", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=32, help="objects rewrapped at once")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-rewrap-") as tmp:
        cluster = start_cluster(Path(tmp))
        try:
            cluster.cli("key", "create", "bench-key")
            s3 = cluster.s3(max_pool_connections=args.put_threads)
            s3.create_bucket(Bucket="bench-rewrap")
            cluster.cli("encrypt", "set", "sse-kms", "bench-key", "bench-rewrap")
            body = os.urandom(args.size)
            start = time.perf_counter()
            with ThreadPoolExecutor(args.put_threads) as pool:
                list(pool.map(lambda i: s3.put_object(Bucket="bench-rewrap", Key=f"obj-{i:06d}", Body=body),
                              range(args.objects)))
            put_s = time.perf_counter() - start
            print(f"PUT {args.objects} objects of {args.size} B: {args.objects / put_s:,.0f} objects/s "
                  f"({args.put_threads} threads)")
            cluster.cli("key", "rotate", "bench-key")
            seconds, out = timed_rewrap(cluster, "bench-rewrap", args.concurrency)
            print(f"key rewrap (all objects on an old version): {args.objects / seconds:,.0f} objects/s "
                  f"({seconds:.1f} s, concurrency {args.concurrency}, CLI start included)  [{out}]")
            seconds, out = timed_rewrap(cluster, "bench-rewrap", args.concurrency)
            print(f"key rewrap (nothing to do, metadata scan only): {args.objects / seconds:,.0f} objects/s "
                  f"({seconds:.1f} s)  [{out}]")
        finally:
            stop_cluster(cluster)


if __name__ == "__main__":
    main()
