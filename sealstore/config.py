"""Where a cluster lives and how its services find each other.

A local cluster is described by `<data>/cluster.json`, written by the launcher; containers
and Kubernetes pods describe it with environment variables instead (see `ENV_*`).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ENV_DATA_DIR = "SEALSTORE_DATA_DIR"
"""Root of everything a local cluster keeps: drives, kms keys, certificates, credentials."""
ENV_CERTS_DIR = "SEALSTORE_CERTS_DIR"
"""Folder with ca.pem and <role>.pem / <role>-key.pem; default <data>/certs."""
ENV_ROOT_USER = "SEALSTORE_ROOT_USER"
ENV_ROOT_PASSWORD = "SEALSTORE_ROOT_PASSWORD"
ENV_KMS_ADDR = "SEALSTORE_KMS_ADDR"
"""host:port of the kms (containers; the local launcher uses cluster.json)."""
ENV_CRYPTO_ADDRS = "SEALSTORE_CRYPTO_ADDRS"
"""Comma-separated host:port of the crypto workers."""
ENV_STORAGE_SET = "SEALSTORE_STORAGE_SET"
"""Comma-separated members of the erasure set, each host:port or host:port/drive."""
ENV_PARITY = "SEALSTORE_PARITY"
"""Parity shards of the erasure set (default: half the set)."""
ENV_GATEWAY_ADDR = "SEALSTORE_GATEWAY_ADDR"
"""host:port the gateway's S3 endpoint listens on (default 127.0.0.1:9000)."""

DEFAULT_GATEWAY_ADDR = "127.0.0.1:9000"


def data_dir() -> Path:
    return Path(os.environ.get(ENV_DATA_DIR, "data")).resolve()


def certs_dir(data: Path | None = None) -> Path:
    if os.environ.get(ENV_CERTS_DIR):
        return Path(os.environ[ENV_CERTS_DIR]).resolve()
    return (data or data_dir()) / "certs"


@dataclass(frozen=True)
class SetMember:
    """One drive of the erasure set: a storage node's address and the drive's index on it."""

    address: str
    drive: int = 0

    @classmethod
    def parse(cls, text: str) -> "SetMember":
        address, _, drive = text.strip().partition("/")
        return cls(address, int(drive or 0))

    def __str__(self) -> str:
        return f"{self.address}/{self.drive}"


@dataclass(frozen=True)
class Topology:
    """The services of one cluster and its erasure set."""

    kms: str
    """host:port of the kms."""
    crypto: tuple[str, ...]
    """host:port of each crypto worker."""
    storage_set: tuple[SetMember, ...]
    """The drives of the erasure set, in shard order."""
    parity_shards: int
    """Parity shards per stripe; data shards = len(storage_set) - parity_shards."""
    gateway: str = DEFAULT_GATEWAY_ADDR

    def __post_init__(self):
        n = len(self.storage_set)
        if n < 2:
            raise ValueError("the erasure set needs at least 2 drives")
        if not 0 < self.parity_shards <= n // 2:
            raise ValueError(f"parity must be between 1 and {n // 2} for a set of {n} drives, not {self.parity_shards}")

    @property
    def data_shards(self) -> int:
        return len(self.storage_set) - self.parity_shards

    @property
    def read_quorum(self) -> int:
        return self.data_shards

    @property
    def write_quorum(self) -> int:
        # As MinIO: with as many parity as data shards, a write needs one more drive.
        return self.data_shards + (1 if self.data_shards == self.parity_shards else 0)


def default_parity(set_size: int) -> int:
    """MinIO's default parity for a set of this size (2 for 4 drives, 4 from 8 drives up)."""
    if set_size >= 8:
        return 4
    return max(1, set_size // 2)


def topology_from_env(env: dict[str, str] | None = None) -> Topology | None:
    env = os.environ if env is None else env
    if not env.get(ENV_STORAGE_SET):
        return None
    members = tuple(SetMember.parse(m) for m in env[ENV_STORAGE_SET].split(",") if m.strip())
    parity = int(env.get(ENV_PARITY) or default_parity(len(members)))
    return Topology(
        kms=env.get(ENV_KMS_ADDR, "127.0.0.1:9101"),
        crypto=tuple(a.strip() for a in env.get(ENV_CRYPTO_ADDRS, "127.0.0.1:9102").split(",") if a.strip()),
        storage_set=members,
        parity_shards=parity,
        gateway=env.get(ENV_GATEWAY_ADDR, DEFAULT_GATEWAY_ADDR),
    )


@dataclass
class ClusterFile:
    """`<data>/cluster.json`: each service's role, pid and address, plus the erasure layout."""

    services: list[dict] = field(default_factory=list)
    parity_shards: int = 2
    storage_set: list[str] = field(default_factory=list)

    def topology(self) -> Topology:
        def addr(role: str) -> list[str]:
            return [s["address"] for s in self.services if s["role"] == role]
        return Topology(
            kms=addr("kms")[0],
            crypto=tuple(addr("crypto")),
            storage_set=tuple(SetMember.parse(m) for m in self.storage_set),
            parity_shards=self.parity_shards,
            gateway=(addr("gateway") or [DEFAULT_GATEWAY_ADDR])[0],
        )

    def to_json(self) -> str:
        return json.dumps({"services": self.services, "erasure": {
            "parity_shards": self.parity_shards, "set": self.storage_set}}, indent=2)

    @classmethod
    def load(cls, path: Path) -> "ClusterFile":
        raw = json.loads(path.read_text())
        return cls(services=raw["services"], parity_shards=raw["erasure"]["parity_shards"],
                   storage_set=list(raw["erasure"]["set"]))

    def save(self, path: Path) -> None:
        write_file_atomic(path, self.to_json().encode(), mode=0o644)


def load_topology(data: Path | None = None) -> Topology:
    """The cluster's topology: from the environment if it names one, else from cluster.json."""
    topo = topology_from_env()
    if topo is not None:
        return topo
    path = (data or data_dir()) / "cluster.json"
    if not path.exists():
        raise FileNotFoundError(f"no cluster found: {path} does not exist (start one with `make run`)")
    return ClusterFile.load(path).topology()


def write_file_atomic(path: Path, content: bytes, mode: int = 0o600) -> None:
    """Writes `content` to a new file beside `path`, fsyncs it and renames it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
