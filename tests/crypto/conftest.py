"""A real mini cluster for the worker's integration tests: kms, 4 storage nodes and the
crypto worker as subprocesses, mTLS with a temporary dev PKI, wired by cluster.json."""
from __future__ import annotations

import asyncio
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from sealstore import config, rpc, tls
from sealstore.erasure.client import ErasureSetClient
from sealstore.v1 import crypto_pb2_grpc, kms_pb2, kms_pb2_grpc
from tests.support.processes import free_port, python_service, spawn, stop_process, wait_listening

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "268435456"}
STORAGE_NODES = 4


@dataclass
class Proc:
    role: str
    address: str
    args: list[str]
    log: Path
    process: subprocess.Popen | None = None

    def start(self, data: Path) -> None:
        env = {**os.environ, **MALLOC_ENV, "PYTHONUNBUFFERED": "1"}
        # The topology and certificates must come from our data folder, whatever the caller set.
        for var in (config.ENV_STORAGE_SET, config.ENV_CERTS_DIR, config.ENV_DATA_DIR):
            env.pop(var, None)
        self.process = spawn(python_service(f"services.{self.role}", "--listen", self.address,
                                            "--data-dir", str(data), *self.args), self.log, env)

    def wait(self) -> None:
        wait_listening(self.address, self.process, self.log)

    def stop(self) -> None:
        stop_process(self.process)


@dataclass
class MiniCluster:
    data: Path
    certs: Path
    kms: Proc
    storage: list[Proc]
    workers: dict[str, Proc] = field(default_factory=dict)

    def channel(self, role: str, target: str, server: str) -> grpc.Channel:
        return rpc.sync_channel(self.certs, role, target, server=server)

    def worker(self, name: str = "aes") -> crypto_pb2_grpc.CryptoServiceStub:
        return crypto_pb2_grpc.CryptoServiceStub(self.channel("gateway", self.workers[name].address, "crypto"))

    def admin_kms(self) -> kms_pb2_grpc.KeyServiceStub:
        return kms_pb2_grpc.KeyServiceStub(self.channel("admin", self.kms.address, "kms"))

    def run_store(self, fn):
        """Runs `fn(ErasureSetClient)` on a fresh event loop."""
        async def go():
            store = ErasureSetClient(config.load_topology(self.data), self.certs, "gateway")
            try:
                return await fn(store)
            finally:
                await store.close()
        return asyncio.run(go())

    def drives(self) -> list[Path]:
        return [self.data / "drives" / f"node{i}" for i in range(len(self.storage))]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    data = tmp_path_factory.mktemp("crypto-cluster")
    certs = data / "certs"
    tls.ensure_dev_pki(certs)
    logs = data / "logs"
    logs.mkdir()
    kms = Proc("kms", f"127.0.0.1:{free_port()}", [], logs / "kms.log")
    storage = []
    for i in range(STORAGE_NODES):
        drive = data / "drives" / f"node{i}"
        drive.mkdir(parents=True)
        storage.append(Proc("storage", f"127.0.0.1:{free_port()}", ["--drives", str(drive), "--node-id", f"n{i}"],
                            logs / f"storage{i}.log"))
    mc = MiniCluster(data, certs, kms, storage)
    started = [kms, *storage]
    try:
        for p in started:
            p.start(data)
        for p in started:
            p.wait()
        workers = {"aes": Proc("crypto", f"127.0.0.1:{free_port()}", [], logs / "crypto.log"),
                   "chacha": Proc("crypto", f"127.0.0.1:{free_port()}", ["--cipher", "chacha20"],
                                  logs / "crypto-chacha.log")}
        cluster_file = config.ClusterFile(
            services=[{"role": p.role, "address": p.address, "pid": p.process.pid} for p in started]
            + [{"role": "crypto", "address": w.address, "pid": None} for w in workers.values()],
            parity_shards=2, storage_set=[f"{p.address}/0" for p in storage])
        cluster_file.save(data / "cluster.json")
        for w in workers.values():
            w.start(data)
            started.append(w)
        for w in workers.values():
            w.wait()
        mc.workers = workers
        yield mc
    finally:
        for p in reversed(started):
            p.stop()
