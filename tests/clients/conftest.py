"""One real cluster (HTTP and HTTPS) for the client matrix, and the files every client moves."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cluster.harness import start_cluster, stop_cluster, unique
from tests.support.ports import free_port

MiB = 1 << 20


@dataclass(frozen=True)
class Payload:
    path: Path
    size: int
    sha256: str


def _random_file(path: Path, size: int) -> Payload:
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        left = size
        while left:
            block = os.urandom(min(left, 4 * MiB))
            digest.update(block)
            out.write(block)
            left -= len(block)
    return Payload(path, size, digest.hexdigest())


@pytest.fixture(scope="package")
def cluster(tmp_path_factory):
    """Stopped when tests/clients is done, not at the end of a whole-suite run."""
    https_port = free_port()
    running = start_cluster(tmp_path_factory.mktemp("clients"),
                            extra_env={"SEALSTORE_GATEWAY_HTTPS_ADDR": f"127.0.0.1:{https_port}"})
    running.https_endpoint = f"https://127.0.0.1:{https_port}"
    running.ca_file = str(running.data / "certs" / "ca.pem")
    yield running
    stop_cluster(running)


@pytest.fixture(scope="session")
def payloads(tmp_path_factory) -> dict[str, Payload]:
    folder = tmp_path_factory.mktemp("payloads")
    big = int(os.environ.get("SEALSTORE_MATRIX_BIG_MIB", "200"))
    return {"20MiB": _random_file(folder / "20MiB.bin", 20 * MiB),
            "200MiB": _random_file(folder / f"{big}MiB.bin", big * MiB)}


@pytest.fixture(scope="session")
def sync_folder(tmp_path_factory) -> Path:
    """50 small files (one in a subfolder), the same for every client."""
    folder = tmp_path_factory.mktemp("sync")
    (folder / "sub").mkdir()
    for i in range(50):
        target = folder / ("sub" if i == 0 else "") / f"file-{i:02d}.txt"
        target.write_bytes(os.urandom(100 + i * 37))
    return folder


@pytest.fixture(scope="package")
def kms_keys(cluster) -> tuple[str, str]:
    """(bucket default key, the key copies move to)."""
    default, other = unique("matrix-default"), unique("matrix-other")
    cluster.cli("key", "create", default)
    cluster.cli("key", "create", other)
    return default, other
