"""Multipart upload against a single PUT of the same SSE-KMS object, in one run, through the whole
local cluster: MiB/s of each, and the gateway's and the crypto worker's peak RSS during each.
A benchmark prints figures and writes them as JSON; it asserts only that the uploads worked.

Both uploads go through boto3's upload_file (the multipart one with TransferConfig: 8 parts in
flight), so the client does the same work per byte (SigV4 payload hashing, the default CRC32
checksum) either way. Client and services share this machine's cores.

Peak RSS "during" an upload: the kernel's high-water mark (VmHWM) is reset before each upload
(/proc/PID/clear_refs, needs to own the process or root) and VmRSS is also sampled every 20 ms;
the larger of the two is reported.

    .venv/bin/python bench/bench_multipart.py [--mib 1024] [--part-mib 16] [--in-flight 8] [--json out.json]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from boto3.s3.transfer import TransferConfig  # noqa: E402

from tests.cluster.harness import start_cluster, stop_cluster  # noqa: E402

MiB = 1 << 20


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class PeakRss:
    """Peak resident memory of some processes over a `with` block."""

    def __init__(self, pids: dict[str, int], interval: float = 0.02):
        self.pids = pids
        self.interval = interval
        self.sampled = {name: 0 for name in pids}
        self.before_mib = {name: round(status_kib(pid, "VmRSS") / 1024, 1) for name, pid in pids.items()}
        self.hwm_reset = True
        self._stop = threading.Event()

    def __enter__(self):
        for pid in self.pids.values():
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            except OSError:
                self.hwm_reset = False
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                self.sampled[name] = max(self.sampled[name], status_kib(pid, "VmRSS"))
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mib = {}
        for name, pid in self.pids.items():
            hwm = status_kib(pid, "VmHWM") if self.hwm_reset else 0
            self.peak_mib[name] = round(max(hwm, self.sampled[name]) / 1024, 1)


def make_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(8 * MiB)
    with open(path, "wb") as out:
        written = 0
        while written < size:
            # A different block each time, so no layer can profit from repetition.
            piece = hashlib.sha256(written.to_bytes(8, "big")).digest() + block[32:min(len(block), size - written)]
            out.write(piece)
            digest.update(piece)
            written += len(piece)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--part-mib", type=int, default=16)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--json", default="bench-multipart.json")
    args = parser.parse_args()
    size = args.mib * MiB
    with tempfile.TemporaryDirectory(prefix="sealstore-bench-mp-") as tmp:
        source = Path(tmp) / "object.bin"
        make_file(source, size)
        (Path(tmp) / "cluster").mkdir()
        cluster = start_cluster(Path(tmp) / "cluster")
        try:
            services = cluster.cluster_json()["services"]
            pids = {role: next(s["pid"] for s in services if s["role"] == role) for role in ("gateway", "crypto")}
            cluster.cli("key", "create", "bench-key")
            s3 = cluster.s3()
            s3.create_bucket(Bucket="bench")
            sse = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "bench-key"}
            runs = {
                "multipart": TransferConfig(multipart_threshold=args.part_mib * MiB,
                                            multipart_chunksize=args.part_mib * MiB,
                                            max_concurrency=args.in_flight),
                "single PUT": TransferConfig(multipart_threshold=size + 1, max_concurrency=1),
            }
            results = {}
            for label, config in runs.items():
                key = label.replace(" ", "-") + ".bin"
                with PeakRss(pids) as rss:
                    started = time.perf_counter()
                    s3.upload_file(str(source), "bench", key, ExtraArgs=sse, Config=config)
                    elapsed = time.perf_counter() - started
                head = s3.head_object(Bucket="bench", Key=key)
                assert head["ContentLength"] == size and head["SSEKMSKeyId"] == "bench-key", head
                parts = head["ETag"].strip('"').rpartition("-")[2] if "-" in head["ETag"] else "1"
                results[label] = {"seconds": round(elapsed, 2), "mib_per_s": round(args.mib / elapsed, 1),
                                  "parts": int(parts), "peak_rss_mib": rss.peak_mib,
                                  "rss_before_mib": rss.before_mib}
        finally:
            stop_cluster(cluster)
    report = {"object_mib": args.mib, "part_mib": args.part_mib, "parts_in_flight": args.in_flight,
              "sse": "aws:kms", "cores": os.cpu_count(),
              "peak_rss_method": "max of VmHWM (reset before each upload) and 20 ms VmRSS samples",
              "results": results}
    print(f"sealstore multipart bench: {args.mib} MiB SSE-KMS object, {os.cpu_count()} cores, "
          f"boto3 upload_file; multipart {args.part_mib} MiB parts, {args.in_flight} in flight")
    print(f"  {'upload':<12}{'MiB/s':>8}{'seconds':>9}{'parts':>7}   peak RSS (before): gateway, worker")
    for label, r in results.items():
        peak, before = r["peak_rss_mib"], r["rss_before_mib"]
        print(f"  {label:<12}{r['mib_per_s']:>8.1f}{r['seconds']:>9.1f}{r['parts']:>7}   "
              f"{peak['gateway']:.1f} ({before['gateway']:.1f}) MiB, {peak['crypto']:.1f} ({before['crypto']:.1f}) MiB")
    load = os.getloadavg()[0]
    print(f"  load average at the end: {load:.1f} (other work on the machine skews these figures)")
    report["load_average_1m"] = round(load, 1)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"  written to {args.json}")


if __name__ == "__main__":
    main()
