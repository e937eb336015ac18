"""Fixtures for the kms tests: a dev PKI and a real kms server process talking mTLS on loopback."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.kms.kes_harness import KmsWithKes, launch_kms
from tests.support.processes import REPO, free_port, stop_process  # noqa: F401  (imported from here by tests)

KmsProcess = KmsWithKes
"""A kms process of the tests (tests/kms/kes_harness.py: the one kms launcher)."""


def start_kms(data_dir: Path, log_dir: Path, extra_env: dict[str, str] | None = None,
              extra_args: list[str] | None = None) -> KmsProcess:
    """A kms process over `data_dir` (dev PKI made if missing), environment without SEALSTORE_*
    except `extra_env`. Stop it with `stop_kms`."""
    return launch_kms(data_dir, log_dir, extra_args or [], extra_env=extra_env, append_log=True)


def stop_kms(proc: subprocess.Popen) -> None:
    stop_process(proc)


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
