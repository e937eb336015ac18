"""Fixtures for the whole-system tests: one real local cluster for the session."""
from __future__ import annotations

import pytest

from tests.cluster.harness import start_cluster, stop_cluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    running = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield running
    stop_cluster(running)


@pytest.fixture
def s3(cluster):
    """A boto3 S3 client (SigV4, no retries) with the cluster's root credentials."""
    return cluster.s3()


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/cluster/" in str(item.fspath):
            item.add_marker(pytest.mark.cluster)
