"""kill -9 in the middle of a PUT, of each service in turn: no partial object is ever visible,
an interrupted overwrite leaves the previous version, and after a restart (+ heal) no
temporary or orphan shard file is left on any drive."""
from __future__ import annotations

import pytest

from tests.durability.conftest import heal, leftovers, payload, slow_put, wait_until

SIZE = 24 * 1024 * 1024
OLD = payload(2_000_000, 99)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from tests.cluster.harness import start_cluster, stop_cluster
    c = start_cluster(tmp_path_factory.mktemp("crash"), extra_env={"SEALSTORE_KEEP_GOING": "1"})
    c.s3().create_bucket(Bucket="crash")
    yield c
    stop_cluster(c)


@pytest.mark.parametrize("victim", ["storage2", "crypto", "gateway"])
def test_kill_9_mid_put_leaves_no_partial_object_and_no_leftovers(cluster, victim):
    s3 = cluster.s3()
    key = f"big-{victim}"
    s3.put_object(Bucket="crash", Key=key, Body=OLD)
    status = slow_put(cluster, "crash", key, SIZE, on_half=lambda: cluster.kill(victim))
    cluster.restart(victim)

    new = payload(SIZE, 7)
    wait_until(lambda: _readable(s3, key), what="the cluster answering again")
    body = s3.get_object(Bucket="crash", Key=key)["Body"].read()
    if victim.startswith("storage"):
        # One storage node of four is within parity: the PUT itself went through.
        assert status == 200 and body == new
    else:
        # The PUT never completed: the previous version, whole, and nothing else.
        assert status != 200
        assert body == OLD
    heal(cluster)
    assert leftovers(cluster, "crash") == []
    assert heal(cluster)["shards_rebuilt"] == 0


def _readable(s3, key) -> bool:
    """The key answers a GET (a restarted service may take a moment to be reachable again; a
    HEAD never reaches the crypto worker, so it could answer while the worker still refused)."""
    try:
        s3.get_object(Bucket="crash", Key=key)["Body"].read()
        return True
    except Exception:  # connection refused while the gateway restarts, or a 5xx meanwhile
        return False
