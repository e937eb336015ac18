"""Helpers for the audit, KES API and policy tests: a real kms process started with extra
options (KES API, audit file, policy file), and a KES client over real HTTPS with mTLS."""
from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sealstore import rpc
from sealstore.tls import ensure_dev_pki, tls_files
from sealstore.v1 import kms_pb2_grpc
from tests.support.processes import REPO, clean_env, free_port, python_service, spawn, stop_process

__all__ = ["REPO", "free_port", "KesClient", "KmsWithKes", "launch_kms", "start_kms"]


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

    def channel(self, role: str) -> grpc.Channel:
        return rpc.sync_channel(self.certs, role, self.address, server="kms")

    def stop(self) -> None:
        stop_process(self.process)


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


def launch_kms(data_dir: Path, log_dir: Path, args: list[str] | tuple[str, ...] = (), *, kes: bool = False,
               extra_env: dict[str, str] | None = None, append_log: bool = False) -> KmsWithKes:
    """The one kms launcher of the tests: `python -m services.kms` over `data_dir` (dev PKI made
    there), environment without SEALSTORE_* except `extra_env`, optionally the KES API on a
    second free port; returns once it is SERVING (and the KES port listens). Stop with .stop()."""
    certs = data_dir / "certs"
    ensure_dev_pki(certs)
    address = f"127.0.0.1:{free_port()}"
    kes_address = f"127.0.0.1:{free_port()}" if kes else ""
    argv = python_service("services.kms", "--listen", address, "--data-dir", str(data_dir), *args)
    if kes:
        argv += ["--kes-listen", kes_address]
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "kms.log"
    proc = spawn(argv, log_path, clean_env(PYTHONUNBUFFERED="1", **(extra_env or {})), append=append_log)
    kms = KmsWithKes(data_dir, certs, address, kes_address, proc, log_path)
    try:
        _wait_ready(kms)
    except BaseException:
        kms.stop()
        raise
    return kms


def start_kms(data_dir: Path, log_dir: Path, *extra_args: str, kes: bool = True) -> KmsWithKes:
    """A kms with `extra_args` and (by default) its KES API."""
    return launch_kms(data_dir, log_dir, extra_args, kes=kes)
