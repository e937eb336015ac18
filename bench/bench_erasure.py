"""Erasure figures for docs/durability.md: prints, asserts nothing.

1. the library alone (pyeclib ISA-L Cauchy, 1 MiB stripes): encode, and rebuild (decode with
   data shards missing);
2. the same work inside the service path: PUT of one object through a real local cluster
   (unencrypted, so the figure is not DARE's), GET with all drives, one missing, two missing;
3. heal: a drive's contents wiped, `sealstore admin heal` rebuilds its shards.

    .venv/bin/python bench/bench_erasure.py [--mib 128] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cluster import get, put  # noqa: E402
from tests.cluster.harness import start_cluster, stop_cluster  # noqa: E402

STRIPE = 1_049_088


def library(k: int, m: int, mib: int, rounds: int) -> tuple[float, float]:
    from pyeclib.ec_iface import ECDriver
    driver = ECDriver(k=k, m=m, ec_type="isa_l_rs_cauchy")
    stripe = os.urandom(STRIPE)
    count = max(1, mib * (1 << 20) // STRIPE)
    enc, dec = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(count):
            fragments = driver.encode(stripe)
        enc.append(count * STRIPE / (time.perf_counter() - start) / 2**20)
        survivors = fragments[m:]  # the first m (data) fragments lost: a real rebuild
        start = time.perf_counter()
        for _ in range(count):
            driver.decode(survivors)
        dec.append(count * STRIPE / (time.perf_counter() - start) / 2**20)
    return statistics.median(enc), statistics.median(dec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = args.mib << 20

    enc, dec = library(2, 2, args.mib, args.rounds)
    print(f"library alone (2+2, 1 MiB stripes): encode {enc:,.0f} MiB/s, rebuild (2 data shards lost) {dec:,.0f} MiB/s")

    with tempfile.TemporaryDirectory() as tmp:
        cluster = start_cluster(Path(tmp), extra_env={"SEALSTORE_KEEP_GOING": "1"})
        try:
            cluster.s3().create_bucket(Bucket="bench")
            path = "/bench/object"
            puts = [args.mib / put(cluster, path, size, {}) for _ in range(args.rounds)]
            print(f"service path, PUT {args.mib} MiB (encode + 4 shard streams + commit): "
                  f"{statistics.median(puts):,.0f} MiB/s")
            for missing in (0, 1, 2):
                if missing:
                    cluster.kill(f"storage{missing}")  # members 0 and 1: the data shards
                gets = [args.mib / get(cluster, path, size) for _ in range(args.rounds)]
                what = "all drives" if not missing else f"{missing} data drive{'s' if missing > 1 else ''} missing"
                print(f"service path, GET {args.mib} MiB, {what}: {statistics.median(gets):,.0f} MiB/s")
            for name in ("storage1", "storage2"):
                cluster.restart(name)
            drive = Path(next(s for s in cluster.cluster_json()["services"] if s["name"] == "storage1")["drives"][0])
            heals = []
            for _ in range(args.rounds):
                for child in drive.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
                start = time.perf_counter()
                out = cluster.cli("admin", "heal", "--json", "--quick")
                elapsed = time.perf_counter() - start
                report = json.loads(out.stdout)
                heals.append(args.mib / elapsed)
            print(f"heal of a wiped drive ({report['shards_rebuilt']} shard rebuilt, reading k shards of a "
                  f"{args.mib} MiB object, CLI start-up included): {statistics.median(heals):,.0f} MiB/s of object")
        finally:
            stop_cluster(cluster)


if __name__ == "__main__":
    main()
