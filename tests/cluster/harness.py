"""A real local cluster: `sealstore run` in a subprocess, as a user starts it, with its own data
directory and free ports; real S3 clients talk to it. Used by the tests and by `make bench`."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.config import Config

from tests.support.ports import free_port_block
from tests.support.processes import REPO, listening, spawn, stop_process, wait_until_ready
SEALSTORE = str(Path(sys.executable).parent / "sealstore")


def unique(prefix: str) -> str:
    """A bucket or key name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def error_code(exc) -> str:
    """The S3 error code of a botocore ClientError."""
    return exc.response["Error"]["Code"]


def _pick_ports(storage_nodes: int) -> tuple[int, int]:
    """`sealstore run` numbers its services from one base port (kms +1, crypto +2, heal +3,
    storage +11...); the gateway gets +99 here and its HTTPS endpoint +98; metrics +50 (gateway)
    and each gRPC port +50. Returns (base, gateway port)."""
    grpc_ports = [1, 2, 3, *(11 + i for i in range(storage_nodes))]
    base = free_port_block([*grpc_ports, 98, 99, 50, *(p + 50 for p in grpc_ports)])
    return base, base + 99


@dataclass
class RunningCluster:
    data: Path
    endpoint: str
    access_key: str
    secret_key: str
    env: dict
    process: subprocess.Popen
    output: Path
    # Services the tests restarted themselves (the launcher only knows its own children).
    restarted: dict = None
    # The gateway's HTTPS endpoint (certificate from the cluster's dev CA, <data>/certs/ca.pem).
    https_endpoint: str = ""

    @property
    def ca_bundle(self) -> str:
        return str(self.data / "certs" / "ca.pem")

    def service(self, name: str) -> dict:
        return next(s for s in self.cluster_json()["services"] if s["name"] == name)

    def kill(self, name: str) -> None:
        """kill -9 one service (by its name in cluster.json; needs SEALSTORE_KEEP_GOING=1)."""
        proc = (self.restarted or {}).get(name)
        pid = proc.pid if proc is not None else self.service(name)["pid"]
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if proc is not None:
            proc.wait()
        else:
            _wait_gone(pid)

    def restart(self, name: str) -> None:
        """Starts the service again with its recorded command line; waits until it listens."""
        from sealctl.launcher import service_env
        svc = self.service(name)
        log = self.data / "logs" / f"{name}.log"
        env = {**service_env(self.data), **{k: v for k, v in self.env.items() if k.startswith("SEALSTORE_")}}
        proc = spawn(svc["argv"], log, env, new_session=True)
        self.restarted = {**(self.restarted or {}), name: proc}
        wait_until_ready(lambda: listening(svc["address"]), proc, f"{name} (restarted)", log, timeout=30)

    def cli(self, *args: str, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run([SEALSTORE, *args], env=self.env, capture_output=True, input=input, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"sealstore {' '.join(args)} failed ({result.returncode}): "
                                 f"{result.stdout.decode()} {result.stderr.decode()}")
        return result

    def s3(self, https: bool = False, **config):
        """boto3 over HTTP, or with `https` over TLS, trusting only the cluster's CA."""
        return boto3.client("s3", endpoint_url=self.https_endpoint if https else self.endpoint,
                            region_name="us-east-1", verify=self.ca_bundle if https else None,
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                            config=Config(signature_version="s3v4", retries={"max_attempts": 1}, **config))

    def aws(self, *args: str, check: bool = True, config_file: str = "/dev/null") -> subprocess.CompletedProcess:
        env = {**self.env, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": config_file,
               "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}
        result = subprocess.run([str(Path(sys.executable).parent / "aws"), "--endpoint-url", self.endpoint, *args],
                                env=env, capture_output=True, timeout=600)
        if check and result.returncode != 0:
            raise AssertionError(f"aws {' '.join(args)} failed: {result.stdout.decode()} {result.stderr.decode()}")
        return result

    def cluster_json(self) -> dict:
        return json.loads((self.data / "cluster.json").read_text())


class _PortTaken(RuntimeError):
    """A service of the launcher lost its port to another process between the pick and its bind."""


def start_cluster(tmp: Path, extra_env: dict | None = None, storage_nodes: int = 4,
                  cwd: Path = REPO) -> RunningCluster:
    """`cwd`: the tree whose code runs (services start as `python -m`, which imports from the
    working folder first; bench/compare_commits.py runs another revision's tree).

    A launch whose service found its port taken (the ports are only checked free, not held) is
    tried again on fresh ports, from an empty data folder, when the folder did not exist before."""
    data = tmp / "data"
    fresh = not data.exists()
    for attempt in range(3):
        try:
            return _launch(tmp, data, extra_env, storage_nodes, cwd)
        except _PortTaken:
            if not fresh or attempt == 2:
                raise
            shutil.rmtree(data, ignore_errors=True)
    raise AssertionError("unreachable")


def _launch(tmp: Path, data: Path, extra_env: dict | None, storage_nodes: int, cwd: Path) -> RunningCluster:
    base, gateway_port = _pick_ports(storage_nodes)
    env = {**os.environ, "SEALSTORE_DATA_DIR": str(data), "SEALSTORE_BASE_PORT": str(base),
           "SEALSTORE_GATEWAY_ADDR": f"127.0.0.1:{gateway_port}",
           "SEALSTORE_GATEWAY_HTTPS_ADDR": f"127.0.0.1:{base + 98}", **(extra_env or {})}
    for name in ("SEALSTORE_ROOT_USER", "SEALSTORE_ROOT_PASSWORD"):
        env.pop(name, None)
    output = tmp / "launcher.out"
    process = subprocess.Popen([SEALSTORE, "run"], env=env, stdout=open(output, "wb"),
                               stderr=subprocess.STDOUT, cwd=cwd)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            printed = output.read_text()
            if "address already in use" in printed.lower():
                raise _PortTaken(f"sealstore run lost a port: {printed}")
            raise RuntimeError(f"sealstore run exited: {printed}")
        path = data / "cluster.json"
        if path.exists():
            try:
                if json.loads(path.read_text()).get("ready"):
                    break
            except ValueError:
                pass
        time.sleep(0.2)
    else:
        process.kill()
        raise RuntimeError(f"cluster did not become ready: {output.read_text()}")
    creds = json.loads((data / "credentials.json").read_text())
    https = json.loads((data / "cluster.json").read_text()).get("gateway_https_url", "")
    return RunningCluster(data, f"http://127.0.0.1:{gateway_port}", creds["access_key"], creds["secret_key"],
                          env, process, output, https_endpoint=https)


def _wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def stop_cluster(cluster: RunningCluster) -> int:
    for proc in (cluster.restarted or {}).values():
        stop_process(proc)
    # SIGINT: the launcher's Ctrl-C path, which stops every service it started.
    return stop_process(cluster.process, timeout=30, sig=signal.SIGINT)


