"""Peak RSS of every sealstore service, round after round of concurrent SSE-KMS PUTs and GETs
(issue 10: "flat over 20 rounds"). Only sealstore runs; `make bench` does the side-by-side.

    .venv/bin/python bench/rss_rounds.py --size-mib 1024 --concurrency 8 --rounds 20
"""
from __future__ import annotations

import argparse
import multiprocessing
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import side_by_side as sbs  # noqa: E402
from tests.cluster.harness import stop_cluster  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    # The client pool is forked before the cluster starts, as in side_by_side.py.
    pool = multiprocessing.get_context("fork").Pool(args.concurrency)
    work = Path(tempfile.mkdtemp(prefix="sealstore-rss-"))
    cluster, store, _ = sbs.start_sealstore(work)
    try:
        acct = sbs.Accounting([store])
        result = sbs.rss_rounds(pool, [store], acct, args.size_mib * sbs.MIB, args.concurrency, args.rounds)
        rows = result["peak_rss_mib_per_round"]
        print(f"\npeak RSS (MiB) per round, {args.concurrency} x {args.size_mib} MiB SSE-KMS PUT + GET:")
        for key, values in sorted(rows.items()):
            print(f"  {key.split('/')[-1]:10s} max {max(values):6.0f}  first {values[0]:6.0f}  last {values[-1]:6.0f}  "
                  + " ".join(f"{v:.0f}" for v in values))
    finally:
        pool.terminate()
        stop_cluster(cluster)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
