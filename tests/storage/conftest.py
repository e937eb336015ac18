"""Fixtures of the storage tests: a dev PKI and clusters of real storage node processes."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sealstore.config import ENV_CERTS_DIR, SetMember, Topology
from sealstore.tls import ensure_dev_pki
from tests.support.processes import REPO, free_port, python_service, spawn, stop_process, wait_listening


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("certs")
    ensure_dev_pki(path)
    return path


class StorageCluster:
    """`size` storage node processes with `drives` drives each; all drives form one erasure set."""

    def __init__(self, root: Path, certs: Path, size: int = 4, parity: int = 2, drives: int = 1):
        self.root, self.certs, self.parity, self.drives = root, certs, parity, drives
        self.ports = [free_port() for _ in range(size)]
        self.procs: list[subprocess.Popen | None] = [None] * size

    def address(self, i: int) -> str:
        return f"127.0.0.1:{self.ports[i]}"

    def drive_dir(self, i: int, drive: int = 0) -> Path:
        return self.root / f"node{i}" / f"drive{drive}"

    @property
    def topology(self) -> Topology:
        return Topology(kms="127.0.0.1:1", crypto=(), parity_shards=self.parity,
                        storage_set=tuple(SetMember(self.address(i), d)
                                          for i in range(len(self.ports)) for d in range(self.drives)))

    def start(self, *indexes: int) -> None:
        indexes = indexes or tuple(range(len(self.ports)))
        env = {**os.environ, ENV_CERTS_DIR: str(self.certs), "PYTHONPATH": str(REPO)}
        for i in indexes:
            self.procs[i] = spawn(python_service(
                "services.storage", "--listen", self.address(i), "--data-dir", str(self.root / f"node{i}"),
                "--drives", ",".join(str(self.drive_dir(i, d)) for d in range(self.drives)), "--node-id", f"node{i}"),
                self.root / f"node{i}.log", env)
        for i in indexes:
            wait_listening(self.address(i), self.procs[i], self.root / f"node{i}.log", timeout=20.0)

    def stop(self, *indexes: int) -> None:
        indexes = indexes or tuple(range(len(self.ports)))
        for i in indexes:  # all asked at once: the nodes stop in parallel
            proc = self.procs[i]
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for i in indexes:
            stop_process(self.procs[i])
            self.procs[i] = None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, certs):
    """A 4-node (2 data + 2 parity) cluster shared by a module's tests; tests must not stop nodes."""
    c = StorageCluster(tmp_path_factory.mktemp("cluster"), certs)
    c.start()
    yield c
    c.stop()


@pytest.fixture
def fresh_cluster(tmp_path, certs):
    """A 4-node cluster of the test's own, which the test may stop and restart."""
    c = StorageCluster(tmp_path, certs)
    c.start()
    yield c
    c.stop()


@pytest.fixture
def make_cluster(tmp_path, certs):
    """Builds and starts clusters of other shapes: make_cluster(size=2, drives=2)."""
    made: list[StorageCluster] = []

    def make(**shape) -> StorageCluster:
        c = StorageCluster(tmp_path / f"cluster{len(made)}", certs, **shape)
        c.root.mkdir()
        made.append(c)
        c.start()
        return c
    yield make
    for c in made:
        c.stop()
