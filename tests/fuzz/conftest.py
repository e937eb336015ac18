"""The fuzz tests that need real processes start their own cluster (and carry the cluster mark)."""
from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/fuzz/" in str(item.fspath) and "cluster" in item.fixturenames:
            item.add_marker(pytest.mark.cluster)
