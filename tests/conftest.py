"""The two layers of the suite.

- unit (`make unit`, `pytest --unit`): in-process tests only. Every test that starts a process
  carries the `process` mark and is deselected; the others run under tests/support/unit_guard,
  which fails any of them that starts a child process or connects beyond loopback anyway.
- everything (`make test`, plain `pytest`): both layers.

A test is a process test when it lives in a folder of whole-system tests, uses a fixture that
starts processes (PROCESS_FIXTURES, directly or through another fixture), or is marked
`@pytest.mark.process` (a test that starts one in its own body).
"""
from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

PROCESS_FOLDERS = ("cluster", "durability", "faults", "deploy", "rewrap")
"""Folders whose every test drives real processes (clusters, docker, mounts)."""

PROCESS_FIXTURES = frozenset({
    "cluster", "fresh_cluster", "make_cluster", "cluster_on_tmpfs", "compose_cluster", "docker_engine",
    "kms", "dev_kms", "openbao_dev", "raft_openbao", "transit_cluster", "kes_cluster",
})
"""Fixtures (by name, in any folder) that start processes: a test using one is a process test."""


def pytest_addoption(parser):
    parser.addoption("--unit", action="store_true", default=False,
                     help="run the unit layer only: deselect process tests and forbid child processes")


def pytest_configure(config):
    config.addinivalue_line("markers", "process: starts processes (services, clusters, OpenBao, CLIs); "
                                       "not part of `make unit`")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Under --unit, each test (its fixtures' setup and teardown included) runs guarded.
    Collection is not: importing a module may legitimately look things up (ctypes.util runs
    ldconfig to find libc), and that is no test starting a service."""
    if not item.config.getoption("--unit"):
        yield
        return
    from tests.support import unit_guard
    unit_guard.install()
    try:
        yield
    finally:
        unit_guard.uninstall()


def is_process_test(item) -> bool:
    if item.get_closest_marker("process") or item.get_closest_marker("cluster"):
        return True
    try:
        folder = Path(str(item.fspath)).resolve().relative_to(TESTS).parts[0]
    except (ValueError, IndexError):
        folder = ""
    if folder in PROCESS_FOLDERS:
        return True
    return bool(PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    process = [item for item in items if is_process_test(item)]
    for item in process:
        item.add_marker(pytest.mark.process)
    if config.getoption("--unit") and process:
        chosen = set(map(id, process))
        config.hook.pytest_deselected(items=process)
        items[:] = [item for item in items if id(item) not in chosen]
