"""One real local cluster (`sealstore run`, fs keystore) for the rewrap tests."""
from __future__ import annotations

import pytest

from tests.cluster.harness import start_cluster, stop_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    running = start_cluster(tmp_path_factory.mktemp("rewrap-cluster"))
    yield running
    stop_cluster(running)


@pytest.fixture
def s3(cluster):
    return cluster.s3()
