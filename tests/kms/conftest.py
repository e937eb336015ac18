"""Fixtures for the kms tests: a dev PKI and a real kms server process talking mTLS on loopback."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sealstore import rpc
from sealstore.tls import ensure_dev_pki
from sealstore.v1 import kms_pb2_grpc

from tests.kms.kes_harness import REPO, free_port  # noqa: E402  (one definition for the kms tests)


@dataclass
class KmsProcess:
    data_dir: Path
    certs: Path
    address: str
    process: subprocess.Popen
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text()

    def channel(self, role: str) -> grpc.Channel:
        return rpc.sync_channel(self.certs, role, self.address, server="kms")

    def stub(self, role: str) -> kms_pb2_grpc.KeyServiceStub:
        return kms_pb2_grpc.KeyServiceStub(self.channel(role))


def _wait_serving(certs: Path, address: str, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"kms exited with {proc.returncode}")
        try:
            with rpc.sync_channel(certs, "admin", address, server="kms") as ch:
                reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"kms on {address} did not become SERVING")


def start_kms(data_dir: Path, log_dir: Path, extra_env: dict[str, str] | None = None,
              extra_args: list[str] | None = None) -> KmsProcess:
    """A kms process over `data_dir` (dev PKI made if missing), environment without SEALSTORE_*
    except `extra_env`. Stop it with `stop_kms`."""
    certs = data_dir / "certs"
    ensure_dev_pki(certs)
    address = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALSTORE_")}
    env.update(extra_env or {})
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "kms.log"
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.kms", "--listen", address, "--data-dir", str(data_dir),
             *(extra_args or [])],
            cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_serving(certs, address, proc)
    except BaseException:
        stop_kms(proc)
        raise
    return KmsProcess(data_dir, certs, address, proc, log_path)


def stop_kms(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def kms(tmp_path_factory) -> KmsProcess:
    running = start_kms(tmp_path_factory.mktemp("kms-data"), tmp_path_factory.mktemp("kms-log"))
    try:
        yield running
    finally:
        stop_kms(running.process)


@pytest.fixture(scope="session")
def openbao_dev(tmp_path_factory):
    """A real `bao server -dev` (in memory) with transit and KV v2 mounted, for the whole session."""
    from tests.kms.openbao_harness import start_dev
    server = start_dev(tmp_path_factory.mktemp("openbao-dev"))
    try:
        yield server
    finally:
        server.stop()
