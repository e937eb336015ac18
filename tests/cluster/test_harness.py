"""The harness itself: a launch that loses a port to another process is tried again on fresh
ports (CI once failed on "Address already in use" between the pick and the bind)."""
from __future__ import annotations

import socket

from tests.cluster import harness


def test_a_launch_that_lost_a_port_is_tried_again_on_fresh_ports(tmp_path, monkeypatch):
    real_pick = harness._pick_ports
    picks: list[int] = []
    with socket.socket() as squatter:
        def pick(storage_nodes):
            base, gateway_port = real_pick(storage_nodes)
            if not picks:
                squatter.bind(("127.0.0.1", base + 2))  # the crypto worker's port, as in the CI failure
                squatter.listen()
            picks.append(base)
            return base, gateway_port
        monkeypatch.setattr(harness, "_pick_ports", pick)
        cluster = harness.start_cluster(tmp_path)
        try:
            assert len(picks) == 2 and picks[0] != picks[1]
            bucket = harness.unique("retried")
            s3 = cluster.s3()
            s3.create_bucket(Bucket=bucket)
            s3.put_object(Bucket=bucket, Key="k", Body=b"after a retry")
            assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"after a retry"
        finally:
            harness.stop_cluster(cluster)


def test_a_launch_into_a_prepared_data_folder_is_not_retried(tmp_path, monkeypatch):
    """The folder may hold mounts or files a test prepared: the harness must not wipe it."""
    (tmp_path / "data").mkdir()
    real_pick = harness._pick_ports
    with socket.socket() as squatter:
        def pick(storage_nodes):
            base, gateway_port = real_pick(storage_nodes)
            squatter.bind(("127.0.0.1", base + 2))
            squatter.listen()
            return base, gateway_port
        monkeypatch.setattr(harness, "_pick_ports", pick)
        try:
            harness.start_cluster(tmp_path)
        except harness._PortTaken as exc:
            assert "address already in use" in str(exc).lower()
        else:
            raise AssertionError("a launch whose port was taken came up")
    assert (tmp_path / "data").is_dir()
