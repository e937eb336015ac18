"""Load and faults: many concurrent S3 clients doing mixed PUT/GET/LIST/DELETE with SSE-KMS
(bucket default key) against a whole local cluster, every GET checked byte for byte.

Each client is an asyncio task with its own key prefix; it remembers the SHA-256 of what it
wrote under each key and checks every GET and LIST against that. The clients share one
aiohttp connection pool (one connection per client) and sign with botocore's SigV4 signer:
200 boto3 clients in threads would spend most of this 2-core machine on the client side.
A sampler reads VmRSS and the open file descriptors of every service from /proc every few
seconds. Optional faults: kill -9 the kms or the crypto worker mid-run and start it again
with its command line from cluster.json.

    .venv/bin/python bench/load_cluster.py [--clients 200] [--duration 300]
        [--kill-kms-at 60 --kms-down 3] [--kill-crypto-at 120 --crypto-down 3]
        [--data DIR]   # an already running cluster (its data folder); default: starts one

A benchmark prints figures; `tests/faults/` runs the same engine in CI size and asserts.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

import aiohttp
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
ABSENT = None
"""Stands for "no object" among the states a key may be in."""

# Object sizes: mostly small (stored inline in the metadata), some streamed as shards, a few
# of several stripes. (weight, lowest, highest)
SIZE_CLASSES = [(60, 1, 64 * 1024), (30, 64 * 1024, 512 * 1024), (10, 1 << 20, 4 << 20)]
OPS = {"PUT": 35, "GET": 40, "LIST": 10, "DELETE": 15}
MAX_KEYS_PER_CLIENT = 12


@dataclass
class LoadConfig:
    clients: int = 200
    duration: float = 300.0
    request_timeout: float = 120.0
    """A request without an answer after this long counts as hung."""
    size_scale: float = 1.0
    """Multiplies every object size (tests use small objects)."""
    seed: int = 1


@dataclass
class Stats:
    ops: collections.Counter = field(default_factory=collections.Counter)
    """Successful operations by type."""
    errors: collections.Counter = field(default_factory=collections.Counter)
    """Failed operations by "OP kind"."""
    bytes_up: int = 0
    bytes_down: int = 0
    verified: int = 0
    """GETs whose body matched what the client wrote, byte for byte (SHA-256)."""
    final_verified: int = 0
    latencies: dict = field(default_factory=lambda: collections.defaultdict(list))
    samples: list = field(default_factory=list)
    """(seconds since start, {service: (rss_kib, fds)})."""
    events: list = field(default_factory=list)
    """(seconds since start, what happened), e.g. faults injected."""

    def error(self, op: str, kind: str) -> None:
        self.errors[f"{op} {kind}"] += 1

    def unclean(self) -> dict[str, int]:
        """Errors that are not a clean S3 answer: 500s, wrong bytes, hangs, broken answers."""
        return {k: n for k, n in self.errors.items() if not _clean_kind(k.split(" ", 1)[1])}


def _clean_kind(kind: str) -> bool:
    """A clean failure is an S3 error document with a 4xx or 503 status."""
    status = kind.split(" ", 1)[0]
    return status.isdigit() and (400 <= int(status) < 500 or int(status) == 503)


class Signer:
    """botocore's SigV4 for S3, used outside botocore so that the requests can go over aiohttp."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, region: str = "us-east-1"):
        self.endpoint = endpoint.rstrip("/")
        self.auth = S3SigV4Auth(Credentials(access_key, secret_key), "s3", region)

    def headers(self, method: str, path: str, query: str = "", body: bytes = b"",
                extra: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
        url = f"{self.endpoint}{path}" + (f"?{query}" if query else "")
        request = AWSRequest(method=method, url=url, data=body, headers=dict(extra or {}))
        self.auth.add_auth(request)
        return url, dict(request.headers.items())


class KeyState:
    """What a key may hold: one SHA-256 when the last write was acknowledged; several (or
    ABSENT) when a write failed, since a failed write may or may not have taken effect."""

    def __init__(self):
        self.possible: set = {ABSENT}

    def certain(self):
        return next(iter(self.possible)) if len(self.possible) == 1 else "?"


class Client:
    def __init__(self, index: int, bucket: str, session: aiohttp.ClientSession, signer: Signer,
                 cfg: LoadConfig, stats: Stats, key_name: str):
        self.index = index
        self.bucket = bucket
        self.prefix = f"c{index:03d}/"
        self.session, self.signer, self.cfg, self.stats = session, signer, cfg, stats
        self.key_name = key_name
        self.rng = random.Random(cfg.seed * 100003 + index)
        self.keys: dict[str, KeyState] = {}
        self.next_key = 0

    # ---- one HTTP request ----------------------------------------------------------------

    async def _request(self, op: str, method: str, path: str, query: str = "", body: bytes = b""
                       ) -> tuple[int, dict, bytes] | None:
        """(status, headers, body), or None after counting a transport failure or a hang."""
        url, headers = self.signer.headers(method, path, query, body)
        started = time.monotonic()
        try:
            async with self.session.request(method, url, data=body or None, headers=headers,
                                            timeout=aiohttp.ClientTimeout(total=self.cfg.request_timeout)) as r:
                data = await r.read()
                self.stats.latencies[op].append(time.monotonic() - started)
                return r.status, dict(r.headers), data
        except asyncio.TimeoutError:
            self.stats.error(op, "hung (no answer in %ds)" % self.cfg.request_timeout)
        except aiohttp.ClientPayloadError:
            # The gateway aborts the connection when the data path breaks after the headers
            # went out: the only honest signal left, never wrong bytes.
            self.stats.error(op, "connection aborted mid-body")
        except aiohttp.ClientError as exc:
            self.stats.error(op, f"transport {type(exc).__name__}")
        return None

    def _s3_error(self, op: str, status: int, body: bytes) -> str:
        try:
            code = ElementTree.fromstring(body).findtext("Code") or "no-code"
        except ElementTree.ParseError:
            code = "not-S3-XML"
        kind = f"{status} {code}"
        self.stats.error(op, kind)
        return kind

    def _path(self, key: str) -> str:
        return f"/{self.bucket}/{key}"

    # ---- operations ----------------------------------------------------------------------

    def _size(self) -> int:
        weights = [w for w, _, _ in SIZE_CLASSES]
        _, low, high = self.rng.choices(SIZE_CLASSES, weights)[0]
        return max(1, int(self.rng.randint(low, high) * self.cfg.size_scale))

    async def put(self, key: str) -> None:
        body = self.rng.randbytes(self._size())
        digest = hashlib.sha256(body).hexdigest()
        state = self.keys.setdefault(key, KeyState())
        answer = await self._request("PUT", "PUT", self._path(key), body=body)
        if answer is not None and answer[0] == 200:
            headers = answer[1]
            if (headers.get("x-amz-server-side-encryption") != "aws:kms"
                    or self.key_name not in headers.get("x-amz-server-side-encryption-aws-kms-key-id", "")):
                self.stats.error("PUT", "answer without the bucket's SSE-KMS key")
            state.possible = {digest}
            self.stats.ops["PUT"] += 1
            self.stats.bytes_up += len(body)
            return
        if answer is not None:
            self._s3_error("PUT", answer[0], answer[2])
        state.possible = state.possible | {digest}

    async def get(self, key: str, final: bool = False) -> None:
        state = self.keys[key]
        answer = await self._request("GET", "GET", self._path(key))
        if answer is None:
            return
        status, headers, body = answer
        if status == 200:
            digest = hashlib.sha256(body).hexdigest()
            if digest not in state.possible:
                self.stats.error("GET", "WRONG BYTES")
                return
            if headers.get("x-amz-server-side-encryption") != "aws:kms":
                self.stats.error("GET", "answer without SSE-KMS headers")
            state.possible = {digest}
            self.stats.ops["GET"] += 1
            self.stats.bytes_down += len(body)
            self.stats.verified += 1
            if final:
                self.stats.final_verified += 1
            return
        if status == 404 and ABSENT in state.possible:
            # A failed PUT that never took effect, or a failed DELETE that did.
            state.possible = {ABSENT}
            self.stats.ops["GET"] += 1
        elif status == 404:
            self.stats.error("GET", "LOST: NoSuchKey for an acknowledged write")
        else:
            self._s3_error("GET", status, body)

    async def delete(self, key: str) -> None:
        state = self.keys[key]
        answer = await self._request("DELETE", "DELETE", self._path(key))
        if answer is not None and answer[0] == 204:
            state.possible = {ABSENT}
            self.stats.ops["DELETE"] += 1
            return
        if answer is not None:
            self._s3_error("DELETE", answer[0], answer[2])
        state.possible = state.possible | {ABSENT}

    async def list(self) -> None:
        answer = await self._request("LIST", "GET", f"/{self.bucket}",
                                     query=f"list-type=2&prefix={self.prefix.replace('/', '%2F')}")
        if answer is None:
            return
        status, _, body = answer
        if status != 200:
            self._s3_error("LIST", status, body)
            return
        root = ElementTree.fromstring(body)
        listed = {e.findtext(f"{S3_NS}Key") for e in root.iter(f"{S3_NS}Contents")}
        must = {k for k, s in self.keys.items() if ABSENT not in s.possible}
        may = {k for k, s in self.keys.items() if s.possible != {ABSENT}}
        if not must <= listed or not listed <= may:
            self.stats.error("LIST", "listing differs from what the client wrote")
            return
        self.stats.ops["LIST"] += 1

    async def step(self) -> None:
        present = [k for k, s in self.keys.items() if s.possible != {ABSENT}]
        op = self.rng.choices(list(OPS), list(OPS.values()))[0]
        if op != "PUT" and op != "LIST" and not present:
            op = "PUT"
        if op == "PUT":
            if present and (len(present) >= MAX_KEYS_PER_CLIENT or self.rng.random() < 0.3):
                key = self.rng.choice(present)  # overwrite
            else:
                key = f"{self.prefix}k{self.next_key:06d}"
                self.next_key += 1
            await self.put(key)
        elif op == "GET":
            await self.get(self.rng.choice(present))
        elif op == "DELETE":
            await self.delete(self.rng.choice(present))
        else:
            await self.list()

    async def run(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            await self.step()

    async def verify_all(self) -> None:
        """After the run: every key the client believes present reads back byte for byte."""
        for key, state in list(self.keys.items()):
            if state.possible != {ABSENT}:
                await self.get(key, final=True)


# ---- resource sampling -----------------------------------------------------------------

def proc_figures(pid: int) -> tuple[int, int] | None:
    """(VmRSS in KiB, open file descriptors) of a live process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return None


class Sampler(threading.Thread):
    """Samples every service's RSS and fd count every `interval` seconds; `pids()` is asked
    each time, so a restarted service is followed under its new pid."""

    def __init__(self, pids, stats: Stats, started: float, interval: float = 5.0):
        super().__init__(daemon=True)
        self.pids, self.stats, self.started, self.interval = pids, stats, started, interval
        self.stopping = threading.Event()

    def sample(self) -> None:
        figures = {}
        for name, pid in self.pids().items():
            got = proc_figures(pid) if pid else None
            if got is not None:
                figures[name] = got
        self.stats.samples.append((time.monotonic() - self.started, figures))

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        self.sample()


# ---- the run ---------------------------------------------------------------------------

@dataclass
class Fault:
    service: str
    at: float
    down: float
    """Seconds the service stays dead before it is started again (< 0: never)."""


async def _inject(cluster, fault: Fault, stats: Stats, started: float) -> None:
    await asyncio.sleep(max(0.0, fault.at - (time.monotonic() - started)))
    await asyncio.to_thread(cluster.kill, fault.service)
    stats.events.append((time.monotonic() - started, f"{fault.service} killed (-9)"))
    if fault.down < 0:
        return
    await asyncio.sleep(fault.down)
    await asyncio.to_thread(cluster.restart, fault.service)
    stats.events.append((time.monotonic() - started, f"{fault.service} restarted and listening"))


def service_pids(cluster) -> dict[str, int]:
    pids = {s["name"]: s["pid"] for s in cluster.cluster_json()["services"]}
    for name, proc in (cluster.restarted or {}).items():
        pids[name] = proc.pid if proc.poll() is None else 0
    return pids


def prepare_bucket(cluster, bucket: str, key_name: str) -> None:
    """A bucket whose default encryption is SSE-KMS with its own key (`mc encrypt set` style)."""
    cluster.cli("key", "create", key_name)
    s3 = cluster.s3()
    s3.create_bucket(Bucket=bucket)
    cluster.cli("encrypt", "set", "sse-kms", key_name, bucket)


async def run_load(cluster, bucket: str, key_name: str, cfg: LoadConfig, faults: list[Fault] = (),
                   sample_interval: float = 5.0, on_tick=None) -> Stats:
    stats = Stats()
    signer = Signer(cluster.endpoint, cluster.access_key, cluster.secret_key)
    started = time.monotonic()
    sampler = Sampler(lambda: service_pids(cluster), stats, started, sample_interval)
    sampler.sample()
    sampler.start()
    connector = aiohttp.TCPConnector(limit=cfg.clients + 8, force_close=False)
    try:
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
            clients = [Client(i, bucket, session, signer, cfg, stats, key_name) for i in range(cfg.clients)]
            deadline = started + cfg.duration
            fault_tasks = [asyncio.ensure_future(_inject(cluster, f, stats, started)) for f in faults]
            ticker = asyncio.ensure_future(_tick(stats, started, on_tick)) if on_tick else None
            await asyncio.gather(*(c.run(deadline) for c in clients))
            for t in fault_tasks:
                await t
            stats.events.append((time.monotonic() - started, "load done; final read-back of every object"))
            await asyncio.gather(*(c.verify_all() for c in clients))
            if ticker:
                ticker.cancel()
    finally:
        sampler.stop()
    stats.events.append((time.monotonic() - started, "done"))
    return stats


async def _tick(stats: Stats, started: float, on_tick) -> None:
    while True:
        await asyncio.sleep(30)
        on_tick(stats, time.monotonic() - started)


# ---- report ----------------------------------------------------------------------------

def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f}"


def report(stats: Stats, cfg: LoadConfig, elapsed: float) -> str:
    lines = [f"{cfg.clients} clients, {cfg.duration:.0f} s of load (+ final read-back), {elapsed:.0f} s in all",
             "", f"{'op':<8}{'ok':>9}{'per s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"]
    for op in OPS:
        lat = sorted(stats.latencies.get(op, [])) or [0.0]
        p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000  # noqa: E731
        lines.append(f"{op:<8}{stats.ops[op]:>9}{stats.ops[op] / cfg.duration:>9.1f}{p(0.5):>9.0f}{p(0.99):>9.0f}"
                     f"{lat[-1] * 1000:>9.0f}")
    lines.append(f"bytes: {_mib(stats.bytes_up)} MiB written, {_mib(stats.bytes_down)} MiB read; "
                 f"{stats.verified} GETs verified byte for byte ({stats.final_verified} in the final read-back)")
    lines.append(f"errors: {sum(stats.errors.values())}" + ("" if stats.errors else " (none)"))
    for kind, n in sorted(stats.errors.items()):
        lines.append(f"  {n:>7}  {kind}{'' if _clean_kind(kind.split(' ', 1)[1]) else '   <- not a clean S3 error'}")
    for at, what in stats.events:
        lines.append(f"  t={at:6.1f}s  {what}")
    if stats.samples:
        names = sorted({n for _, fig in stats.samples for n in fig})
        first, last = stats.samples[0], stats.samples[-1]
        middle = min(stats.samples, key=lambda s: abs(s[0] - cfg.duration / 2))
        lines += ["", f"RSS MiB / open fds per service ({len(stats.samples)} samples)",
                  f"{'service':<10}{'start':>14}{'middle':>14}{'end':>14}{'peak RSS':>10}{'peak fds':>9}",
                  f"{'':<10}{'t=%.0fs' % first[0]:>14}{'t=%.0fs' % middle[0]:>14}{'t=%.0fs' % last[0]:>14}"]
        for name in names:
            def cell(sample):
                got = sample[1].get(name)
                return f"{got[0] / 1024:.0f} / {got[1]}" if got else "-"
            peak_rss = max((s[1][name][0] for s in stats.samples if name in s[1]), default=0)
            peak_fds = max((s[1][name][1] for s in stats.samples if name in s[1]), default=0)
            lines.append(f"{name:<10}{cell(first):>14}{cell(middle):>14}{cell(last):>14}"
                         f"{peak_rss / 1024:>10.0f}{peak_fds:>9}")
        # The trend, not just three points: RSS moves with the requests in flight and the heap
        # trims (sealstore/memory.py), a creep shows as a rising series.
        step = max(1, len(stats.samples) // 12)
        lines += ["", "RSS MiB over time (every %.0f s)" % (stats.samples[min(step, len(stats.samples) - 1)][0]
                                                          - stats.samples[0][0])]
        for name in names:
            series = [f"{s[1][name][0] / 1024:.0f}" if name in s[1] else "-" for s in stats.samples[::step]]
            lines.append(f"{name:<10}{' '.join(series)}")
    return "\n".join(lines)


def _attach(data: Path):
    """A handle on a cluster someone else started (`make run`): same interface as the harness's."""
    from tests.cluster.harness import RunningCluster
    cj = json.loads((data / "cluster.json").read_text())
    creds = json.loads((data / "credentials.json").read_text())
    env = {**os.environ, "SEALSTORE_DATA_DIR": str(data)}
    return RunningCluster(data, cj["gateway_url"], creds["access_key"], creds["secret_key"], env,
                          subprocess.Popen(["true"]), data / "launcher.out")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--duration", type=float, default=300.0, help="seconds of load (default 300)")
    p.add_argument("--size-scale", type=float, default=1.0, help="multiplies every object size")
    p.add_argument("--request-timeout", type=float, default=120.0)
    p.add_argument("--sample-interval", type=float, default=5.0)
    p.add_argument("--kill-kms-at", type=float, default=None, help="kill -9 the kms at this second")
    p.add_argument("--kms-down", type=float, default=3.0, help="seconds before the kms is started again")
    p.add_argument("--kill-crypto-at", type=float, default=None, help="kill -9 the crypto worker at this second")
    p.add_argument("--crypto-down", type=float, default=3.0, help="seconds before the worker is started again")
    p.add_argument("--data", type=Path, default=None,
                   help="data folder of a running cluster (needs SEALSTORE_KEEP_GOING=1 for faults); "
                        "default: start a cluster of its own")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    cfg = LoadConfig(clients=args.clients, duration=args.duration, request_timeout=args.request_timeout,
                     size_scale=args.size_scale, seed=args.seed)
    faults = []
    if args.kill_kms_at is not None:
        faults.append(Fault("kms", args.kill_kms_at, args.kms_down))
    if args.kill_crypto_at is not None:
        faults.append(Fault("crypto", args.kill_crypto_at, args.crypto_down))

    from tests.cluster.harness import start_cluster, stop_cluster, unique
    tmp = None
    if args.data:
        cluster = _attach(args.data.resolve())
    else:
        tmp = tempfile.TemporaryDirectory(prefix="sealstore-load-")
        cluster = start_cluster(Path(tmp.name), extra_env={"SEALSTORE_KEEP_GOING": "1"})
    bucket, key_name = unique("load"), unique("load-key")
    try:
        prepare_bucket(cluster, bucket, key_name)
        started = time.monotonic()

        def tick(stats: Stats, at: float) -> None:
            print(f"t={at:5.0f}s  ops {dict(stats.ops)}  errors {sum(stats.errors.values())}", flush=True)
        stats = asyncio.run(run_load(cluster, bucket, key_name, cfg, faults, args.sample_interval, tick))
        print(report(stats, cfg, time.monotonic() - started), flush=True)
        if args.data is None:
            dead = [n for n, pid in service_pids(cluster).items() if not pid or proc_figures(pid) is None]
            if dead:
                print(f"services not running at the end: {', '.join(dead)}")
    finally:
        if tmp is not None:
            stop_cluster(cluster)
            tmp.cleanup()
    return 1 if stats.unclean() else 0


if __name__ == "__main__":
    sys.exit(main())
