"""The one process harness of the tests: starting a service process, waiting until it listens,
stopping it. The per-area harnesses (tests/cluster/harness.py, tests/storage/conftest.py,
tests/crypto/conftest.py, tests/kms/*) build their fixtures on these, so a process test in any
folder starts, waits and cleans up alike. Every test that uses them is a process test (see
tests/conftest.py): `make unit` never reaches them."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from tests.support.ports import free_port  # noqa: F401  (re-exported: the harnesses' one source)

REPO = Path(__file__).resolve().parents[2]


def clean_env(drop_prefixes: tuple[str, ...] = ("SEALSTORE_",), **extra: str) -> dict[str, str]:
    """This process's environment without variables that would point a child at another
    cluster (a developer's shell may export SEALSTORE_*), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop_prefixes)}
    env.update(extra)
    return env


def spawn(argv: list[str], log_path: Path, env: dict[str, str] | None = None, *, append: bool = True,
          cwd: Path = REPO, new_session: bool = False) -> subprocess.Popen:
    """Starts `argv` with stdout and stderr into `log_path` and no stdin."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab" if append else "wb") as log:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=new_session)


def python_service(module: str, *args: str) -> list[str]:
    """The command line of `python -m <module> args` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def log_tail(log_path: Path, chars: int = 3000) -> str:
    try:
        return log_path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return "(no log)"


def wait_until_ready(ready: Callable[[], bool], proc: subprocess.Popen | None, what: str, log_path: Path | None,
                     timeout: float = 30.0, interval: float = 0.1) -> None:
    """Polls `ready()` until true; fails early, with the log's tail, if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log_tail(log_path) if log_path else ''}")
        try:
            if ready():
                return
        except Exception:  # not up yet
            pass
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready within {timeout}s: {log_tail(log_path) if log_path else ''}")


def listening(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=0.3):
            return True
    except OSError:
        return False


def wait_listening(address: str, proc: subprocess.Popen | None, log_path: Path | None,
                   timeout: float = 30.0) -> None:
    wait_until_ready(lambda: listening(address), proc, address, log_path, timeout, interval=0.05)


def stop_process(proc: subprocess.Popen | None, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
    """Asks `proc` to stop with `sig`, kills it after `timeout` seconds; returns its exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()
