"""Fault tests: a real `sealstore run` cluster (SEALSTORE_KEEP_GOING=1, so a killed service does
not stop the others), real S3 clients, kill -9 of a service, drives on small tmpfs mounts that
are remounted read-only or filled up. Each test runs well under a minute."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.cluster.harness import RunningCluster, start_cluster, stop_cluster


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/faults/" in str(item.fspath):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture
def cluster(tmp_path):
    c = start_cluster(tmp_path, extra_env={"SEALSTORE_KEEP_GOING": "1"})
    yield c
    stop_cluster(c)


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


class Mounts:
    """tmpfs mounts made by one test; all unmounted at its end, whatever happened."""

    def __init__(self):
        self.points: list[Path] = []

    def tmpfs(self, path: Path, size: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        result = _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}): the drive fault tests need "
                        f"real mounts (chmod does not stop root)")
        self.points.append(path)
        return path

    def remount(self, path: Path, mode: str) -> None:
        result = _mount("-o", f"remount,{mode}", str(path))
        assert result.returncode == 0, result.stderr

    def release(self) -> None:
        for point in reversed(self.points):
            subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=30)


@pytest.fixture
def mounts():
    if os.geteuid() != 0:
        pytest.skip("needs root to mount the small tmpfs drives (chmod does not stop root, and a "
                    "non-root user cannot mount)")
    m = Mounts()
    yield m
    m.release()


def drive_paths(data: Path, nodes: int = 4) -> list[Path]:
    """Where the launcher puts drive 1 of each node (it keeps an existing folder, or mount point)."""
    return [data / "drives" / f"node{n + 1}" / "drive1" for n in range(nodes)]


@pytest.fixture
def cluster_on_tmpfs(tmp_path, mounts):
    """cluster_on_tmpfs(["2m", "64m", ...]): a 4-node cluster (2 data + 2 parity) whose drives are
    tmpfs mounts of these sizes; stopped before the mounts go."""
    made: list[RunningCluster] = []

    def make(sizes: list[str]) -> RunningCluster:
        for path, size in zip(drive_paths(tmp_path / "data"), sizes):
            mounts.tmpfs(path, size)
        made.append(start_cluster(tmp_path, extra_env={"SEALSTORE_KEEP_GOING": "1"}))
        return made[-1]
    yield make
    for c in made:
        stop_cluster(c)
