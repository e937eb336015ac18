"""`sealstore run`: starts a whole local cluster in the foreground, supervises it, stops it cleanly.

One kms, one crypto worker, N storage nodes (D drive folders each), one heal service and one
gateway, each a separate process talking gRPC over mutual TLS. The launcher writes
`<data>/cluster.json` (role, pid, address, drives, restarts) so the command line and the tests
can find the cluster.

Supervision: a service that exits is logged and started again after a backoff (0.5 s, doubling
to 30 s; back to 0.5 s once it has stayed up 60 s), while the others keep serving; the erasure
code rides out m storage nodes down. SIGINT/SIGTERM stop everything, front to back: the gateway
first (it finishes the requests it has, up to SEALSTORE_SHUTDOWN_GRACE), then the workers and the
heal service, then the kms and the storage nodes, so no request loses a service behind it.

Each service serves Prometheus metrics on loopback: the gateway on the base port + 50, every
other service on its own gRPC port + 50 (kms 9151, crypto 9152, heal 9153, storage 9161...).
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sealstore import config, observability, tls

ENV_STORAGE_NODES = "SEALSTORE_STORAGE_NODES"
ENV_DRIVES_PER_NODE = "SEALSTORE_DRIVES_PER_NODE"
ENV_BASE_PORT = "SEALSTORE_BASE_PORT"
ENV_CRYPTO_CIPHER = "SEALSTORE_CIPHER"
ENV_KES_ADDR = "SEALSTORE_KES_ADDR"
"""host:port for the kms's KES-compatible HTTPS API (off when unset), for MinIO's MINIO_KMS_KES_ENDPOINT."""
ENV_KEEP_GOING = "SEALSTORE_KEEP_GOING"
"""1: a child that exits is reported and *not* restarted; the others keep running (failure tests
restart it themselves from the `argv` recorded in cluster.json). Default: restarted with backoff."""
RESTART_BACKOFF_FIRST = 0.5
RESTART_BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0
"""A service that stayed up this long before it died starts again after the first backoff."""

# glibc hands every freed block >= 128 KiB back to the OS; the next 1 MiB stripe then pays
# page faults again. Raising the thresholds made erasure coding 3-5x faster here (measured on
# these 2-core machines with bench/bench_erasure.py's library-only encode).
# The price is freed memory kept resident in every thread arena: two arenas and a periodic
# malloc_trim (sealstore/memory.py) keep RSS flat under load.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "268435456",
              "MALLOC_ARENA_MAX": "2"}

STARTUP_TIMEOUT = 60.0
METRICS_OFFSET = 50
"""A service's metrics port is its gRPC port + this (the gateway's: the base port + this): inside
the launcher's block of ports, clear of the storage nodes' +11... for up to 39 nodes."""


@dataclass
class Layout:
    """What `make run` starts; read from the environment, validated before anything starts."""

    storage_nodes: int = 4
    drives_per_node: int = 1
    parity: int = 0
    set_drive_count: int = 0
    """Drives per erasure set (0: chosen as MinIO does, see config.choose_set_size)."""
    base_port: int = 9100
    gateway: str = config.DEFAULT_GATEWAY_ADDR
    gateway_https: str = config.DEFAULT_GATEWAY_HTTPS_ADDR
    """The gateway's HTTPS endpoint ("" with SEALSTORE_GATEWAY_HTTPS_ADDR=off)."""

    @classmethod
    def from_env(cls) -> "Layout":
        env = os.environ
        layout = cls(
            storage_nodes=int(env.get(ENV_STORAGE_NODES, 4)),
            drives_per_node=int(env.get(ENV_DRIVES_PER_NODE, 1)),
            parity=int(env.get(config.ENV_PARITY, 0)),
            set_drive_count=int(env.get(config.ENV_SET_DRIVE_COUNT) or 0),
            base_port=int(env.get(ENV_BASE_PORT, 9100)),
            gateway=env.get(config.ENV_GATEWAY_ADDR, config.DEFAULT_GATEWAY_ADDR),
            gateway_https=_https_address(env.get(config.ENV_GATEWAY_HTTPS_ADDR, config.DEFAULT_GATEWAY_HTTPS_ADDR)),
        )
        drives = layout.storage_nodes * layout.drives_per_node
        try:
            size = config.choose_set_size(drives, layout.storage_nodes, layout.set_drive_count)
        except ValueError as exc:
            raise SystemExit(f"sealstore: impossible layout: {exc} ({layout.storage_nodes} nodes x "
                             f"{layout.drives_per_node} drives; see {config.ENV_SET_DRIVE_COUNT})") from None
        layout.set_drive_count = size
        if layout.parity == 0:
            layout.parity = config.default_parity(size)
        if not 1 <= layout.parity <= size // 2:
            raise SystemExit(f"sealstore: parity {layout.parity} is impossible for erasure sets of {size} drives "
                             f"(1 to {size // 2}; parity may not exceed data)")
        return layout

    @property
    def set_count(self) -> int:
        return self.storage_nodes * self.drives_per_node // (self.set_drive_count or 1)


def _https_address(value: str) -> str:
    value = value.strip()
    return "" if value.lower() in ("", "off") else value


@dataclass
class Service:
    role: str
    name: str
    address: str
    args: list[str]
    instance: str = ""
    """Its certificate (<certs>/<instance>.pem): its own key, no other process's."""
    drives: list[str] = field(default_factory=list)
    also_listens: list[str] = field(default_factory=list)
    """Other addresses it serves (the gateway's HTTPS): free before the start, listening after."""
    metrics: str = ""
    """host:port of its Prometheus /metrics (loopback)."""
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    restarts: int = 0
    started_at: float = 0.0
    backoff: float = RESTART_BACKOFF_FIRST
    restart_at: float | None = None
    """When the supervisor starts it again (None: running, or not to be restarted)."""

    def spawn(self, data: Path, env: dict[str, str]) -> None:
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(self.command(data), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        finally:
            log.close()
        self.started_at = time.monotonic()

    def command(self, data: Path) -> list[str]:
        # The gateway has no --instance flag: it is gateway-0, its default.
        instance = ["--instance", self.instance] if self.instance and self.role != "gateway" else []
        metrics = ["--metrics-listen", self.metrics] if self.metrics else []
        return [sys.executable, "-m", f"services.{self.role}", "--listen", self.address,
                "--data-dir", str(data), *instance, *metrics, *self.args]


def pki_layout(layout: Layout) -> tls.PkiLayout:
    """One certificate per process the launcher starts."""
    return tls.PkiLayout(storage_nodes=layout.storage_nodes, crypto_workers=1, gateways=1, healers=1)


def ensure_credentials(data: Path) -> tuple[str, str, bool]:
    """Root S3 credentials: from the environment, else generated once into <data>/credentials.json."""
    user, password = os.environ.get(config.ENV_ROOT_USER), os.environ.get(config.ENV_ROOT_PASSWORD)
    if user and password:
        return user, password, False
    path = data / "credentials.json"
    if path.exists():
        creds = json.loads(path.read_text())
        return creds["access_key"], creds["secret_key"], False
    creds = {"access_key": "sealstore-" + secrets.token_hex(4), "secret_key": secrets.token_urlsafe(30)}
    config.write_file_atomic(path, json.dumps(creds).encode(), mode=0o600)
    return creds["access_key"], creds["secret_key"], True


def _port_free(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(port)))
        except OSError:
            return False
    return True


def _wait_tcp(address: str, deadline: float) -> bool:
    host, port = address.rsplit(":", 1)
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def ensure_deployment_id(data: Path) -> str:
    """The cluster's deployment id, made once into <data>/deployment-id; every drive's format
    file carries it, so a drive of another deployment is recognised and refused."""
    path = data / "deployment-id"
    if path.exists():
        return path.read_text().strip()
    deployment = str(uuid.uuid4())
    config.write_file_atomic(path, deployment.encode(), mode=0o644)
    return deployment


def plan_services(data: Path, layout: Layout, deployment_id: str = "") -> tuple[list[Service], list[list[str]]]:
    """The processes to start, and the erasure sets, each its members in shard order.

    Drives are numbered across the cluster drive-major (drive d of node n is number d * nodes + n)
    and cut into consecutive sets, so a set's drives sit on different nodes where possible and
    consecutive shards of a stripe land on different nodes."""
    set_size = layout.set_drive_count or layout.storage_nodes * layout.drives_per_node
    host = "127.0.0.1"
    kes = os.environ.get(ENV_KES_ADDR)
    services = [Service("kms", "kms", f"{host}:{layout.base_port + 1}", ["--kes-listen", kes] if kes else [], "kms")]
    storage: list[Service] = []
    for node in range(layout.storage_nodes):
        drives = [str(data / "drives" / f"node{node + 1}" / f"drive{d + 1}") for d in range(layout.drives_per_node)]
        address = f"{host}:{layout.base_port + 11 + node}"
        # Slot of each drive, "set:member": global drive number d * nodes + n cut into sets.
        slots = ["%d:%d" % divmod(d * layout.storage_nodes + node, set_size) for d in range(layout.drives_per_node)]
        format_args = ["--deployment-id", deployment_id, "--set-slots", ",".join(slots)] if deployment_id else []
        storage.append(Service("storage", f"storage{node + 1}", address,
                               ["--drives", ",".join(drives), "--node-id", str(node + 1), *format_args],
                               tls.instance_name("storage", node), drives))
    services += storage
    # Interleave drives across nodes so consecutive shards of a stripe land on different nodes.
    members = config.split_sets([f"{s.address}/{d}" for d in range(layout.drives_per_node) for s in storage],
                                set_size)
    cipher = os.environ.get(ENV_CRYPTO_CIPHER)
    services.append(Service("crypto", "crypto", f"{host}:{layout.base_port + 2}",
                            ["--cipher", cipher] if cipher else [], tls.instance_name("crypto", 0)))
    services.append(Service("heal", "heal", f"{host}:{layout.base_port + 3}", [], tls.instance_name("heal", 0)))
    https = ["--https-listen", layout.gateway_https or "off"]
    services.append(Service("gateway", "gateway", layout.gateway, https, tls.instance_name("gateway", 0),
                            also_listens=[layout.gateway_https] if layout.gateway_https else []))
    for s in services:
        port = layout.base_port if s.role == "gateway" else int(s.address.rsplit(":", 1)[1])
        s.metrics = f"{host}:{port + METRICS_OFFSET}"
    return services, members


def service_env(data: Path) -> dict[str, str]:
    """The environment every service process starts with (also used to restart one)."""
    # Each process names its own certificate (--instance; the one gateway is gateway-0): an
    # inherited SEALSTORE_INSTANCE would make them all present the same one.
    inherited = {k: v for k, v in os.environ.items() if k != config.ENV_INSTANCE}
    return {**inherited, **MALLOC_ENV, config.ENV_DATA_DIR: str(data), "PYTHONUNBUFFERED": "1"}


class Cluster:
    def __init__(self, data: Path, layout: Layout):
        self.data = data
        self.layout = layout
        self.deployment_id = ensure_deployment_id(data)
        self.services, self.sets = plan_services(data, layout, self.deployment_id)
        self.cluster_file = config.ClusterFile(parity_shards=layout.parity, storage_sets=self.sets,
                                               deployment_id=self.deployment_id)

    def _record(self, ready: bool) -> None:
        self.cluster_file.services = [
            {"role": s.role, "name": s.name, "instance": s.instance, "address": s.address,
             "pid": s.process.pid if s.process and s.process.poll() is None else None,
             "restarts": s.restarts,
             **({"drives": s.drives} if s.drives else {}),
             **({"metrics": s.metrics} if s.metrics else {}),
             "argv": s.command(self.data),
             "log": str(s.log_path) if s.log_path else None}
            for s in self.services]
        raw = json.loads(self.cluster_file.to_json())
        raw["ready"] = ready
        raw["deployment_id"] = self.deployment_id
        raw["gateway_url"] = f"http://{self.layout.gateway}"
        if self.layout.gateway_https:
            raw["gateway_https_url"] = f"https://{self.layout.gateway_https}"
        config.write_file_atomic(self.data / "cluster.json", json.dumps(raw, indent=2).encode(), mode=0o644)

    def start(self) -> None:
        busy = [a for s in self.services for a in (s.address, *s.also_listens, *([s.metrics] if s.metrics else []))
                if not _port_free(a)]
        if busy:
            raise SystemExit(f"sealstore: address already in use: {', '.join(busy)} (another cluster running? "
                             f"set {ENV_BASE_PORT} / {config.ENV_GATEWAY_ADDR} / {config.ENV_GATEWAY_HTTPS_ADDR})")
        for s in self.services:
            for d in s.drives:
                Path(d).mkdir(parents=True, exist_ok=True)
        self._record(ready=False)
        logs = self.data / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = self.env = service_env(self.data)
        # Storage and kms first: the worker, the heal service and the gateway connect to them.
        for wave in (("storage", "kms"), ("crypto", "heal"), ("gateway",)):
            started = [s for s in self.services if s.role in wave]
            for s in started:
                s.log_path = logs / f"{s.name}.log"
                s.spawn(self.data, env)
            self._record(ready=False)
            deadline = time.monotonic() + STARTUP_TIMEOUT
            for s in started:
                for address in (s.address, *s.also_listens):
                    while not _wait_tcp(address, min(deadline, time.monotonic() + 0.5)):
                        if s.process.poll() is not None or time.monotonic() > deadline:
                            self.stop()
                            tail = s.log_path.read_text(errors="replace")[-3000:] if s.log_path else ""
                            raise SystemExit(f"sealstore: {s.name} failed to start; its log ends:\n{tail}")
        self._record(ready=True)

    def supervise(self, restart: bool, reported: set[str]) -> None:
        """One look at every child: a newly dead one is logged and (with `restart`) scheduled
        to start again after its backoff; a due one is started. Never blocks."""
        now = time.monotonic()
        changed = False
        for s in self.services:
            if s.process is None or s.name in reported:
                continue
            if s.restart_at is not None:
                if now >= s.restart_at:
                    s.restart_at = None
                    s.restarts += 1
                    s.spawn(self.data, self.env)
                    print(f"sealstore: {s.name} restarted (pid {s.process.pid}, restart {s.restarts})",
                          file=sys.stderr, flush=True)
                    changed = True
                continue
            code = s.process.poll()
            if code is None:
                continue
            if not restart:
                print(f"sealstore: {s.name} exited with code {code}; the others keep running and it is not "
                      f"restarted ({ENV_KEEP_GOING}=1)", file=sys.stderr, flush=True)
                reported.add(s.name)
                changed = True
                continue
            if now - s.started_at >= STABLE_AFTER:
                s.backoff = RESTART_BACKOFF_FIRST
            s.restart_at = now + s.backoff
            print(f"sealstore: {s.name} exited with code {code}; restarting it in {s.backoff:g} s, the others "
                  f"keep serving (see {s.log_path})", file=sys.stderr, flush=True)
            s.backoff = min(s.backoff * 2, RESTART_BACKOFF_MAX)
            changed = True
        if changed:
            self._record(ready=True)

    def stop(self) -> None:
        # Front to back, one wave after the other: the gateway finishes its requests while the
        # workers, kms and drives behind it still serve them; then the workers finish theirs.
        grace = observability.shutdown_grace()
        for wave in (("gateway",), ("crypto", "heal"), ("kms", "storage")):
            members = [s for s in self.services if s.role in wave and s.process is not None]
            for s in members:
                if s.process.poll() is None:
                    s.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace + 5
            for s in members:
                try:
                    s.process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    print(f"sealstore: {s.name} did not stop within {grace:g} s; killing it", file=sys.stderr,
                          flush=True)
                    s.process.kill()
                    s.process.wait()


def run(argv: list[str] | None = None) -> int:
    data = config.data_dir()
    data.mkdir(parents=True, exist_ok=True)
    layout = Layout.from_env()
    replaced = tls.ensure_dev_pki(config.certs_dir(data), layout=pki_layout(layout))
    if replaced:
        print(f"sealstore: replaced the certificates of an earlier version ({', '.join(replaced)}): every "
              f"role used to carry every service name; each instance now has its own, from the same CA",
              file=sys.stderr, flush=True)
    if layout.gateway_https and not os.environ.get(config.ENV_GATEWAY_TLS_CERT):
        tls.ensure_gateway_https_certificate(config.certs_dir(data))
    user, password, generated = ensure_credentials(data)
    cluster = Cluster(data, layout)
    stopping = False

    def request_stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    cluster.start()
    drives = layout.storage_nodes * layout.drives_per_node
    print(f"sealstore is up: S3 endpoint http://{layout.gateway}", flush=True)
    if layout.gateway_https:
        print(f"  HTTPS endpoint https://{layout.gateway_https} (clients trust {config.certs_dir(data) / 'ca.pem'})",
              flush=True)
    print(f"  data: {data}   logs: {data / 'logs'}", flush=True)
    print("  metrics: " + " ".join(f"{s.name}=http://{s.metrics}/metrics" for s in cluster.services), flush=True)
    print(f"  erasure sets: {layout.set_count} of {layout.set_drive_count} drives ({drives} drives on "
          f"{layout.storage_nodes} nodes), {layout.set_drive_count - layout.parity} data + {layout.parity} parity",
          flush=True)
    if generated:
        print(f"  generated root credentials (stored in {data / 'credentials.json'}):", flush=True)
        print(f"    access key: {user}\n    secret key: {password}", flush=True)
    else:
        print(f"  root credentials: {'environment' if os.environ.get(config.ENV_ROOT_USER) else data / 'credentials.json'}", flush=True)
    print("  Ctrl-C stops the cluster.", flush=True)
    restart = os.environ.get(ENV_KEEP_GOING) != "1"
    reported: set[str] = set()
    while not stopping:
        cluster.supervise(restart, reported)
        time.sleep(0.2)
    print("sealstore: stopping...", flush=True)
    cluster.stop()
    cluster._record(ready=False)
    print("sealstore: stopped.", flush=True)
    return 0
