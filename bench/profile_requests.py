"""Where a request's CPU goes, service by service: py-spy on every sealstore service while one
client repeats one kind of request (issue 10: "profile first").

    .venv/bin/python bench/profile_requests.py --op PUT --size 4096 --seconds 15
    .venv/bin/python bench/profile_requests.py --op GET --size 1048576 --mode plain

Prints, per service, the CPU-milliseconds per request (from /proc) and the heaviest frames of
sealstore's own code (inclusive) and of everything (innermost Python frame). py-spy's raw output
stays in --out. Needs `make bench`'s requirements (py-spy).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import side_by_side as sbs  # noqa: E402
from tests.cluster.harness import stop_cluster  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--op", choices=("PUT", "GET"), default="PUT")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--mode", choices=tuple(sbs.MODES), default="sse-kms")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="client threads (concurrency)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "profile")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true",
                        help="py-spy --native (C frames too; pauses each process per sample: slower)")
    parser.add_argument("--only", default="", help="comma-separated services to profile (default: all)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if not spy:
        sys.exit("py-spy is not installed: make bench-deps")

    work = Path(tempfile.mkdtemp(prefix="sealstore-profile-"))
    cluster, store, _ = sbs.start_sealstore(work)
    try:
        headers = sbs.MODES[args.mode]
        body = b"x" * args.size
        paths = [f"/{sbs.BUCKET}/profile-{i}" for i in range(64)]
        for path in paths:  # GETs read these; PUTs overwrite them
            status, detail = sbs.request(store, "PUT", path, body, headers)
            assert status == 200, detail
        stop = threading.Event()
        counts = [0] * args.threads

        def loop(slot: int) -> None:
            # Each thread its own connection (http.client connections are not thread-safe).
            import http.client
            conn = http.client.HTTPConnection(store.host, store.port, timeout=60)
            i = slot
            while not stop.is_set():
                path = paths[i % len(paths)]
                hdrs = sbs.sigv4.sign_request(args.op, store.endpoint + path,
                                              {**(headers if args.op == "PUT" else {}),
                                               "Content-Length": str(args.size if args.op == "PUT" else 0)},
                                              "UNSIGNED-PAYLOAD", store.access_key, store.secret_key)
                conn.putrequest(args.op, path, skip_host=True, skip_accept_encoding=True)
                for name, value in hdrs.items():
                    conn.putheader(name, value)
                conn.endheaders()
                if args.op == "PUT":
                    conn.send(body)
                response = conn.getresponse()
                data = response.read()
                if response.status != 200:
                    raise SystemExit(f"{args.op} {path}: {response.status} {data[:300]!r}")
                counts[slot] += 1
                i += args.threads

        services = sorted(store.pids)
        spies = {}
        threads = [threading.Thread(target=loop, args=(n,), daemon=True) for n in range(args.threads)]
        for t in threads:
            t.start()
        time.sleep(1)
        cpu0 = {name: sum(sbs.cpu_seconds(p) for p in sbs.process_tree(pid, sbs._children_map()))
                for name, pid in store.pids.items()}
        done0 = sum(counts)
        profiled = [n for n in services if not args.only or n in args.only.split(",")]
        for name in profiled:
            raw = args.out / f"{args.op.lower()}-{args.size}-{name}.txt"
            mode = ["--native"] if args.native else ["--nonblocking"]
            spies[name] = (raw, subprocess.Popen(
                [spy, "record", "--pid", str(store.pids[name]), "--duration", str(args.seconds), "--rate",
                 str(args.rate), *mode, "--format", "raw", "--output", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        time.sleep(args.seconds)
        done = sum(counts) - done0
        cpu1 = {name: sum(sbs.cpu_seconds(p) for p in sbs.process_tree(pid, sbs._children_map()))
                for name, pid in store.pids.items()}
        stop.set()
        for t in threads:
            t.join(timeout=30)
        print(f"{args.op} {args.size} B {args.mode}, {args.threads} thread(s): {done} requests in "
              f"{args.seconds} s ({done / args.seconds:.1f}/s)")
        total = 0.0
        for name in services:
            ms = 1000 * (cpu1[name] - cpu0[name]) / max(1, done)
            total += ms
            print(f"  {name:10s} {ms:6.2f} CPU-ms per request")
        print(f"  {'all':10s} {total:6.2f}")
        for name, (raw, proc) in spies.items():
            proc.communicate(timeout=args.seconds + 60)
            if not raw.exists():
                continue
            top = sbs.top_frames(raw.read_text(), limit=14)
            if top["busy_samples"] < 20:
                continue
            print(f"\n== {name}: {top['busy_samples']} busy samples")
            print("  sealstore frames, inclusive:")
            for frame, pct in top["sealstore_inclusive"]:
                print(f"    {pct:5.1f}%  {frame}")
            print("  innermost Python frames:")
            for frame, pct in top["python_self"]:
                print(f"    {pct:5.1f}%  {frame}")
            if args.native:
                print("  innermost native frames:")
                for frame, pct in top["native_self"]:
                    print(f"    {pct:5.1f}%  {frame}")
    finally:
        stop_cluster(cluster)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
