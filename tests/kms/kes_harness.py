"""Helpers for the audit, KES API and policy tests: a real kms process started with extra
options (KES API, audit file, policy file), and a KES client over real HTTPS with mTLS."""
from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sealstore import rpc
from sealstore.tls import ensure_dev_pki, tls_files
from sealstore.v1 import kms_pb2_grpc

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class KesResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


class KesClient:
    """A KES client presenting one role's certificate, speaking HTTPS as kms-go's client does."""

    def __init__(self, certs: Path, role: str, address: str) -> None:
        files = tls_files(certs, role)
        self.context = ssl.create_default_context(cafile=str(files.ca))
        self.context.load_cert_chain(str(files.cert), str(files.key))
        host, port = address.rsplit(":", 1)
        self.host, self.port = host, int(port)

    def request(self, method: str, path: str, body: bytes | dict | None = None) -> KesResponse:
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return KesResponse(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            conn.close()


@dataclass
class KmsWithKes:
    data_dir: Path
    certs: Path
    address: str
    kes_address: str
    process: subprocess.Popen
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text()

    def stub(self, role: str) -> kms_pb2_grpc.KeyServiceStub:
        return kms_pb2_grpc.KeyServiceStub(rpc.sync_channel(self.certs, role, self.address, server="kms"))

    def kes(self, role: str) -> KesClient:
        return KesClient(self.certs, role, self.kes_address)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _wait_ready(kms: KmsWithKes, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if kms.process.poll() is not None:
            raise RuntimeError(f"kms exited with {kms.process.returncode}:\n{kms.log_text()[-3000:]}")
        try:
            with rpc.sync_channel(kms.certs, "admin", kms.address, server="kms") as ch:
                reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                if not kms.kes_address:
                    return
                with socket.create_connection(kms.kes_address.rsplit(":", 1), timeout=1):
                    return
        except (grpc.RpcError, OSError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"kms on {kms.address} did not become ready")


def start_kms(data_dir: Path, log_dir: Path, *extra_args: str, kes: bool = True) -> KmsWithKes:
    """Starts `python -m services.kms` over `data_dir` (dev PKI made there) with `extra_args`."""
    certs = data_dir / "certs"
    ensure_dev_pki(certs)
    address = f"127.0.0.1:{free_port()}"
    kes_address = f"127.0.0.1:{free_port()}" if kes else ""
    args = [sys.executable, "-m", "services.kms", "--listen", address, "--data-dir", str(data_dir), *extra_args]
    if kes:
        args += ["--kes-listen", kes_address]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALSTORE_")}
    env["PYTHONUNBUFFERED"] = "1"
    log_path = log_dir / "kms.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    kms = KmsWithKes(data_dir, certs, address, kes_address, proc, log_path)
    try:
        _wait_ready(kms)
    except BaseException:
        kms.stop()
        raise
    return kms
