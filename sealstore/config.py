"""Where a cluster lives and how its services find each other.

A local cluster is described by `<data>/cluster.json`, written by the launcher; containers
and Kubernetes pods describe it with environment variables instead (see `ENV_*`).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

ENV_DATA_DIR = "SEALSTORE_DATA_DIR"
"""Root of everything a local cluster keeps: drives, kms keys, certificates, credentials."""
ENV_CERTS_DIR = "SEALSTORE_CERTS_DIR"
"""Folder with ca.pem and <instance>.pem / <instance>-key.pem; default <data>/certs."""
ENV_INSTANCE = "SEALSTORE_INSTANCE"
"""This process's instance name (storage-2, crypto-0, gateway-0...): which <instance>.pem it
presents. Default: the role's first instance; the launcher passes --instance instead."""
ENV_ROOT_USER = "SEALSTORE_ROOT_USER"
ENV_ROOT_PASSWORD = "SEALSTORE_ROOT_PASSWORD"
ENV_KMS_ADDR = "SEALSTORE_KMS_ADDR"
"""host:port of the kms (containers; the local launcher uses cluster.json)."""
ENV_CRYPTO_ADDRS = "SEALSTORE_CRYPTO_ADDRS"
"""Comma-separated host:port of the crypto workers."""
ENV_STORAGE_SET = "SEALSTORE_STORAGE_SET"
"""Comma-separated members of the erasure set, each host:port or host:port/drive."""
ENV_STORAGE_SETS = "SEALSTORE_STORAGE_SETS"
"""Several erasure sets: sets separated by `;`, each as ENV_STORAGE_SET (wins over it)."""
ENV_PARITY = "SEALSTORE_PARITY"
"""Parity shards of each erasure set (default: MinIO's for the set size)."""
ENV_SET_DRIVE_COUNT = "SEALSTORE_SET_DRIVE_COUNT"
"""Drives per erasure set (default: the largest size in 4..16 that divides the drive count)."""
ENV_DEPLOYMENT_ID = "SEALSTORE_DEPLOYMENT_ID"
"""The deployment id (keys the object -> set hash; the launcher records it in cluster.json)."""
ENV_HEALTH_SOCKET = "SEALSTORE_HEALTH_SOCKET"
"""Path of a unix socket on which a gRPC service also serves grpc.health.v1 alone, over TLS with
its own certificate and no client certificate (`sealstore probe` in containers: kms and storage
certificates cannot open a connection to their own service port). Unset: no socket."""
ENV_GRPC_MAX_CONNECTION_AGE = "SEALSTORE_GRPC_MAX_CONNECTION_AGE"
"""Seconds after which a gRPC service asks each client to reconnect (and so resolve its name
again: new replicas behind a Kubernetes headless Service get calls). Unset or 0: never."""
ENV_GATEWAY_ADDR = "SEALSTORE_GATEWAY_ADDR"
"""host:port the gateway's S3 endpoint listens on (default 127.0.0.1:9000)."""

DEFAULT_GATEWAY_ADDR = "127.0.0.1:9000"
ENV_GATEWAY_HTTPS_ADDR = "SEALSTORE_GATEWAY_HTTPS_ADDR"
"""host:port of the gateway's HTTPS endpoint (the local cluster's default 127.0.0.1:9443; the
gateway alone serves HTTPS only when given this or --https-listen). "off": no HTTPS."""
DEFAULT_GATEWAY_HTTPS_ADDR = "127.0.0.1:9443"
ENV_GATEWAY_TLS_CERT = "SEALSTORE_GATEWAY_TLS_CERT"
ENV_GATEWAY_TLS_KEY = "SEALSTORE_GATEWAY_TLS_KEY"
"""The HTTPS endpoint's certificate chain and key (PEM); default the dev CA's
<certs>/https/gateway.pem and gateway-key.pem, which the launcher makes."""

ENV_SSE_S3_KEY = "SEALSTORE_SSE_S3_KEY"
"""The kms key SSE-S3 (AES256) objects are sealed under; the kms creates it at start if missing."""
DEFAULT_SSE_S3_KEY = "sealstore-sse-s3"
ENV_DEFAULT_KMS_KEY = "SEALSTORE_DEFAULT_KMS_KEY"
"""The key of `aws:kms` without a key id when the bucket default names none; created like the
SSE-S3 key."""
DEFAULT_KMS_KEY = "sealstore-default"
ENV_ENCRYPT_BY_DEFAULT = "SEALSTORE_ENCRYPT_BY_DEFAULT"
"""1 (default): a write with no SSE header into a bucket without default encryption is stored
with SSE-S3, as AWS since 2023. 0: stored without encryption."""


def sse_s3_key_name() -> str:
    return os.environ.get(ENV_SSE_S3_KEY) or DEFAULT_SSE_S3_KEY


def default_kms_key_name() -> str:
    return os.environ.get(ENV_DEFAULT_KMS_KEY) or DEFAULT_KMS_KEY


def encrypt_by_default() -> bool:
    value = (os.environ.get(ENV_ENCRYPT_BY_DEFAULT) or "1").strip().lower()
    if value not in ("0", "1", "true", "false", "on", "off", "yes", "no"):
        raise ValueError(f"{ENV_ENCRYPT_BY_DEFAULT}={value!r}: use 1 or 0")
    return value in ("1", "true", "on", "yes")


def data_dir() -> Path:
    return Path(os.environ.get(ENV_DATA_DIR, "data")).resolve()


def instance_name(role: str, given: str | None = None) -> str:
    """The instance this process runs as: `given` (a --instance flag), else $SEALSTORE_INSTANCE,
    else the role itself (its first instance's certificate, see sealstore.tls.tls_files)."""
    return given or os.environ.get(ENV_INSTANCE) or role


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
    """The services of one cluster and its erasure sets."""

    kms: str
    """host:port of the kms."""
    crypto: tuple[str, ...]
    """host:port of each crypto worker."""
    storage_set: tuple[SetMember, ...] = ()
    """Every drive of the cluster, set after set, each set in shard order (with one set: the set).
    Given alone, it is the one erasure set."""
    parity_shards: int = 2
    """Parity shards per stripe, in every set; data shards = set size - parity_shards."""
    gateway: str = DEFAULT_GATEWAY_ADDR
    storage_sets: tuple[tuple[SetMember, ...], ...] = ()
    """The erasure sets, each its drives in shard order; default: storage_set as one set."""
    deployment_id: str = ""
    """Keys the hash that picks an object's set (see `set_of`)."""

    def __post_init__(self):
        if not self.storage_sets:
            object.__setattr__(self, "storage_sets", (tuple(self.storage_set),))
        object.__setattr__(self, "storage_sets", tuple(tuple(s) for s in self.storage_sets))
        object.__setattr__(self, "storage_set", tuple(m for s in self.storage_sets for m in s))
        sizes = {len(s) for s in self.storage_sets}
        if len(sizes) != 1:
            raise ValueError(f"every erasure set needs the same number of drives, not {sorted(sizes)}")
        n = sizes.pop()
        if n < 2:
            raise ValueError("the erasure set needs at least 2 drives")
        if not 0 < self.parity_shards <= n // 2:
            raise ValueError(f"parity must be between 1 and {n // 2} for a set of {n} drives, not {self.parity_shards}")

    @property
    def set_size(self) -> int:
        return len(self.storage_sets[0])

    @property
    def data_shards(self) -> int:
        return self.set_size - self.parity_shards

    @property
    def read_quorum(self) -> int:
        return self.data_shards

    @property
    def write_quorum(self) -> int:
        # As MinIO: with as many parity as data shards, a write needs one more drive.
        return self.data_shards + (1 if self.data_shards == self.parity_shards else 0)

    def one_set(self, index: int) -> "Topology":
        """The same cluster seen as erasure set `index` alone."""
        return replace(self, storage_set=(), storage_sets=(self.storage_sets[index],))


def set_of(bucket: str, key: str, set_count: int, deployment_id: str) -> int:
    """The erasure set holding bucket/key: BLAKE2b-64 of "bucket/key" keyed by the deployment id,
    mod the number of sets (MinIO: SipHash of the object name keyed the same way). Deterministic
    for every process of the deployment; a deployment id never changes, so neither does a key's set."""
    if set_count == 1:
        return 0
    digest = hashlib.blake2b(f"{bucket}/{key}".encode(), key=deployment_id.encode()[:64], digest_size=8).digest()
    return int.from_bytes(digest, "big") % set_count


def default_parity(set_size: int) -> int:
    """MinIO's default parity for a set of this size (2 for 4-5 drives, 3 for 6-7, 4 from 8 up)."""
    if set_size >= 8:
        return 4
    return max(1, set_size // 2)


SET_SIZES = range(4, 17)
"""Drives per erasure set allowed, as MinIO's 4..16 (2 and 3 are too small to be durable)."""


def choose_set_size(drives: int, nodes: int, requested: int = 0) -> int:
    """Drives per set: `requested` if it fits, else the largest size in 4..16 that divides the
    drive count symmetrically (set size a multiple of the node count or a divisor of it, so
    every set spans nodes alike). Raises ValueError with the reason for an impossible layout."""
    if requested:
        if requested not in SET_SIZES:
            raise ValueError(f"a set of {requested} drives is impossible (4 to 16)")
        if requested > drives:
            raise ValueError(f"a set of {requested} drives is larger than the {drives} drives of the cluster")
        if drives % requested:
            raise ValueError(f"{drives} drives do not divide into sets of {requested}")
        return requested
    fitting = [s for s in SET_SIZES if drives % s == 0 and (s % nodes == 0 or nodes % s == 0)]
    if not fitting:
        raise ValueError(f"{drives} drives on {nodes} nodes do not divide into erasure sets of 4 to 16 drives")
    return max(fitting)


def split_sets(members: list, set_size: int) -> list[list]:
    """Members in global shard order (drives interleaved across nodes) cut into consecutive sets."""
    return [members[i:i + set_size] for i in range(0, len(members), set_size)]


def topology_from_env(env: dict[str, str] | None = None) -> Topology | None:
    env = os.environ if env is None else env
    text = env.get(ENV_STORAGE_SETS) or env.get(ENV_STORAGE_SET)
    if not text:
        return None
    sets = tuple(tuple(SetMember.parse(m) for m in one.split(",") if m.strip())
                 for one in text.split(";") if one.strip())
    parity = int(env.get(ENV_PARITY) or default_parity(len(sets[0])))
    return Topology(
        storage_sets=sets,
        deployment_id=env.get(ENV_DEPLOYMENT_ID, ""),
        kms=env.get(ENV_KMS_ADDR, "127.0.0.1:9101"),
        crypto=tuple(a.strip() for a in env.get(ENV_CRYPTO_ADDRS, "127.0.0.1:9102").split(",") if a.strip()),
        parity_shards=parity,
        gateway=env.get(ENV_GATEWAY_ADDR, DEFAULT_GATEWAY_ADDR),
    )


@dataclass
class ClusterFile:
    """`<data>/cluster.json`: each service's role, pid and address, plus the erasure layout."""

    services: list[dict] = field(default_factory=list)
    parity_shards: int = 2
    storage_set: list[str] = field(default_factory=list)
    """Every drive, set after set (as Topology.storage_set)."""
    storage_sets: list[list[str]] = field(default_factory=list)
    """The erasure sets (default: storage_set as one set)."""
    deployment_id: str = ""

    def topology(self) -> Topology:
        def addr(role: str) -> list[str]:
            return [s["address"] for s in self.services if s["role"] == role]
        return Topology(
            kms=addr("kms")[0],
            crypto=tuple(addr("crypto")),
            storage_sets=tuple(tuple(SetMember.parse(m) for m in one) for one in self.sets()),
            parity_shards=self.parity_shards,
            gateway=(addr("gateway") or [DEFAULT_GATEWAY_ADDR])[0],
            deployment_id=self.deployment_id,
        )

    def sets(self) -> list[list[str]]:
        return self.storage_sets or [self.storage_set]

    def to_json(self) -> str:
        return json.dumps({"services": self.services, "erasure": {
            "parity_shards": self.parity_shards, "set_drive_count": len(self.sets()[0]),
            "set": [m for one in self.sets() for m in one], "sets": self.sets()},
            **({"deployment_id": self.deployment_id} if self.deployment_id else {})}, indent=2)

    @classmethod
    def load(cls, path: Path) -> "ClusterFile":
        raw = json.loads(path.read_text())
        erasure = raw["erasure"]
        return cls(services=raw["services"], parity_shards=erasure["parity_shards"],
                   storage_set=list(erasure["set"]), storage_sets=[list(s) for s in erasure.get("sets", [])],
                   deployment_id=raw.get("deployment_id", ""))

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
