"""Listing cost and its effect on reads (issue 8, "Listing in O(page)"), on a real local cluster.

1. Fills a bucket with --objects small objects through the gateway (many concurrent clients),
   unless a reused data folder (--data) already holds them.
2. Walks the whole bucket with ListObjectsV2 pages of 1,000 keys: pages per second.
3. GET latency (p50, p99) of a bucket of 1,000 small objects, alone and while listings of the
   big bucket run in a loop.

A benchmark prints figures; it asserts nothing. Everything (client and services) shares this
machine's cores.

    .venv/bin/python bench/bench_listing.py [--objects 100000] [--data DIR] [--keep]

To measure another tree (e.g. a worktree of an older commit) run it with PYTHONPATH=<tree>:
the report prints which files the storage node imports.
"""
from __future__ import annotations

import argparse
import http.client
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import boto3
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sealstore import sigv4  # noqa: E402
from tests.cluster.harness import RunningCluster, start_cluster, stop_cluster  # noqa: E402

BIG, SMALL = "listing-big", "listing-small"
BODY = b"x" * 64


class Client:
    """One keep-alive HTTP connection signing with UNSIGNED-PAYLOAD (botocore would hash bodies)."""

    def __init__(self, cluster: RunningCluster):
        self.cluster = cluster
        url = urlsplit(cluster.endpoint)
        self.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)

    def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        headers = sigv4.sign_request(method, self.cluster.endpoint + path, {"Content-Length": str(len(body))},
                                     "UNSIGNED-PAYLOAD", self.cluster.access_key, self.cluster.secret_key)
        for attempt in range(3):
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                return response.status, response.read()
            except (ConnectionError, http.client.HTTPException):
                if attempt == 2:
                    raise
                self.conn.close()
        raise AssertionError("unreachable")


def present_keys(cluster: RunningCluster, bucket: str) -> set[str] | None:
    # Retries: a storage node that walks every metadata file for a page can miss the caller's
    # deadline (the first listing after a start, on the code before the index).
    s3 = boto3.client("s3", endpoint_url=cluster.endpoint, region_name="us-east-1",
                      aws_access_key_id=cluster.access_key, aws_secret_access_key=cluster.secret_key,
                      config=Config(signature_version="s3v4", read_timeout=600,
                                    retries={"max_attempts": 10, "mode": "standard"}))
    try:
        return {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                for o in page.get("Contents", [])}
    except s3.exceptions.NoSuchBucket:
        return None


def fill(cluster: RunningCluster, bucket: str, numbers: list[int], clients: int) -> float:
    local = threading.local()
    failures = []

    def put(i: int) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = Client(cluster)
        status, body = client.request("PUT", f"/{bucket}/obj/{i:07d}", BODY)
        if status != 200:
            failures.append((i, status, body[:200]))

    start = time.perf_counter()
    done = 0
    with ThreadPoolExecutor(clients) as pool:
        for _ in pool.map(put, numbers, chunksize=64):
            done += 1
            if done % 10_000 == 0:
                print(f"  {bucket}: {done} objects in {time.perf_counter() - start:.0f} s", flush=True)
    if failures:
        raise SystemExit(f"{len(failures)} PUTs failed, first: {failures[0]}")
    return time.perf_counter() - start


def walk(cluster: RunningCluster, bucket: str, page_size: int = 1000) -> tuple[int, int, float, list[float]]:
    """(pages, keys, seconds, per-page seconds) of one walk of the whole bucket."""
    s3 = cluster.s3(read_timeout=600)
    token, pages, keys, times = None, 0, 0, []
    start = time.perf_counter()
    while True:
        t = time.perf_counter()
        page = s3.list_objects_v2(Bucket=bucket, MaxKeys=page_size, **({"ContinuationToken": token} if token else {}))
        times.append(time.perf_counter() - t)
        pages += 1
        keys += page.get("KeyCount", 0)
        if not page.get("IsTruncated"):
            break
        token = page["NextContinuationToken"]
    return pages, keys, time.perf_counter() - start, times


def get_latencies(cluster: RunningCluster, bucket: str, seconds: float, keys: int) -> list[float]:
    client = Client(cluster)
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        path = f"/{bucket}/obj/{random.randrange(keys):07d}"
        t = time.perf_counter()
        status, body = client.request("GET", path)
        latencies.append(time.perf_counter() - t)
        if status != 200 or body != BODY:
            raise SystemExit(f"GET {path}: {status} {body[:200]!r}")
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def storage_code(cluster: RunningCluster) -> str:
    """Which drive.py the storage nodes import (they inherit this process's environment)."""
    env = {k: v for k, v in cluster.env.items()}
    return subprocess.run([sys.executable, "-c", "import services.storage.drive as d; print(d.__file__)"],
                          env=env, capture_output=True, text=True, cwd="/").stdout.strip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objects", type=int, default=100_000, help="objects in the big bucket")
    p.add_argument("--clients", type=int, default=48, help="concurrent PUT clients while filling")
    p.add_argument("--data", type=Path, default=None,
                   help="folder for the cluster (reused: a bucket already filled is not filled again)")
    p.add_argument("--get-seconds", type=float, default=20.0, help="duration of each GET latency run")
    p.add_argument("--walks", type=int, default=1, help="full walks of the big bucket to time")
    p.add_argument("--keep", action="store_true", help="keep the cluster folder")
    args = p.parse_args()
    tmp = args.data or Path(tempfile.mkdtemp(prefix="bench-listing-"))
    tmp.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    cluster = start_cluster(tmp, {"SEALSTORE_KEEP_GOING": "1"})
    print(f"cluster ready in {time.perf_counter() - t:.1f} s; storage code: {storage_code(cluster)}", flush=True)
    report = {"objects": args.objects}
    try:
        for bucket, count in ((SMALL, 1000), (BIG, args.objects)):
            have = present_keys(cluster, bucket)
            if have is None:
                cluster.s3().create_bucket(Bucket=bucket)
                have = set()
            missing = [n for n in range(count) if f"obj/{n:07d}" not in have]
            if missing:
                print(f"filling {bucket}: {len(missing)} of {count} objects ({args.clients} clients)", flush=True)
                took = fill(cluster, bucket, missing, args.clients)
                print(f"  filled in {took:.0f} s ({len(missing) / took:.0f} PUT/s)", flush=True)
                report[f"fill_{bucket}_s"] = round(took, 1)
            print(f"{bucket} holds {len(have) + len(missing)} objects", flush=True)

        for n in range(args.walks):
            pages, keys, took, times = walk(cluster, BIG)
            print(f"walk {n + 1}: {keys} keys, {pages} pages of 1,000 in {took:.1f} s: {pages / took:.2f} pages/s; "
                  f"per page p50 {ms(percentile(times, 0.5))}, p99 {ms(percentile(times, 0.99))}", flush=True)
            report[f"walk{n + 1}"] = {"keys": keys, "pages": pages, "seconds": round(took, 2),
                                      "pages_per_s": round(pages / took, 2),
                                      "page_p50_ms": round(percentile(times, 0.5) * 1000, 1),
                                      "page_p99_ms": round(percentile(times, 0.99) * 1000, 1)}

        idle = get_latencies(cluster, SMALL, args.get_seconds, 1000)
        print(f"GET alone: {len(idle)} GETs, p50 {ms(percentile(idle, 0.5))}, p99 {ms(percentile(idle, 0.99))}",
              flush=True)
        stop = threading.Event()
        listed = {"pages": 0}

        def list_in_a_loop() -> None:
            while not stop.is_set():
                s3 = cluster.s3(read_timeout=600)
                token = None
                while not stop.is_set():
                    page = s3.list_objects_v2(Bucket=BIG, MaxKeys=1000,
                                              **({"ContinuationToken": token} if token else {}))
                    listed["pages"] += 1
                    if not page.get("IsTruncated"):
                        break
                    token = page["NextContinuationToken"]

        lister = threading.Thread(target=list_in_a_loop, daemon=True)
        lister.start()
        time.sleep(1.0)
        busy = get_latencies(cluster, SMALL, args.get_seconds, 1000)
        stop.set()
        lister.join(timeout=600)
        print(f"GET while listing: {len(busy)} GETs, p50 {ms(percentile(busy, 0.5))}, "
              f"p99 {ms(percentile(busy, 0.99))} ({listed['pages']} pages listed meanwhile)", flush=True)
        report["get_alone"] = {"n": len(idle), "p50_ms": round(percentile(idle, 0.5) * 1000, 1),
                               "p99_ms": round(percentile(idle, 0.99) * 1000, 1)}
        report["get_while_listing"] = {"n": len(busy), "p50_ms": round(percentile(busy, 0.5) * 1000, 1),
                                       "p99_ms": round(percentile(busy, 0.99) * 1000, 1),
                                       "pages_listed": listed["pages"]}
        print(json.dumps(report))
    finally:
        stop_cluster(cluster)
        if not args.keep and args.data is None:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
