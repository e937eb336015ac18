"""`sealstore run` and a dying child with SEALSTORE_KEEP_GOING=1: the death is reported, the
others keep serving and the launcher does not restart it (the test does). Without the variable
the launcher restarts it: tests/durability/test_supervisor.py."""
from __future__ import annotations

import os
import signal

from tests.cluster.harness import start_cluster, stop_cluster


def test_keep_going_reports_the_dead_child_and_serves_on(tmp_path):
    c = start_cluster(tmp_path, extra_env={"SEALSTORE_KEEP_GOING": "1"})
    try:
        c.kill("storage3")
        s3 = c.s3()
        s3.create_bucket(Bucket="going")
        s3.put_object(Bucket="going", Key="k", Body=b"still here")
        assert s3.get_object(Bucket="going", Key="k")["Body"].read() == b"still here"
        assert c.process.poll() is None
        assert "storage3 exited" in c.output.read_text() and "keep running" in c.output.read_text()
        assert "storage3 restarted" not in c.output.read_text() and c.service("storage3")["restarts"] == 0
        c.restart("storage3")
        assert c.cli("admin", "heal").returncode == 0
    finally:
        assert stop_cluster(c) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (not yet reaped) counts as gone.
    try:
        return open(f"/proc/{pid}/stat").read().split()[2] != "Z"
    except FileNotFoundError:
        return False
