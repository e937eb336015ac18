"""`sealstore run` supervises (issue 8, item 3): a service that dies is logged and restarted
with backoff while the others keep serving; killing m = 2 of 4 storage nodes leaves PUT and GET
working (reads at once; writes, which need 3 of 4 drives with 2 + 2, as soon as the launcher has
them back); `sealstore status` shows the restarts; SIGINT still stops everything."""
from __future__ import annotations

import os
import re
import signal
import time

from botocore.exceptions import ClientError

from tests.cluster.harness import start_cluster, stop_cluster
from tests.durability.conftest import error_code, http_status, payload, wait_until


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return open(f"/proc/{pid}/stat").read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _status_rows(c) -> dict[str, str]:
    out = c.cli("status", check=False).stdout.decode()
    return {line.split()[0]: line for line in out.splitlines() if line and not line.startswith("kms:")}


def test_killing_two_of_four_storage_nodes_keeps_the_cluster_serving(tmp_path):
    c = start_cluster(tmp_path)  # no SEALSTORE_KEEP_GOING: the launcher restarts
    try:
        s3 = c.s3()
        s3.create_bucket(Bucket="supervised")
        before = payload(2 * 1024 * 1024, 1)
        s3.put_object(Bucket="supervised", Key="before", Body=before)
        old = {name: c.service(name)["pid"] for name in ("storage2", "storage4")}
        for pid in old.values():
            os.kill(pid, signal.SIGKILL)

        # Right away, while they are down: 2 data + 2 parity reads with any 2 drives. A write needs
        # 3 (data = parity, as MinIO), so until the launcher has them back a PUT may get a clean
        # 503 SlowDown, never a hang or a half object; it succeeds once they are back.
        assert s3.get_object(Bucket="supervised", Key="before")["Body"].read() == before
        during = payload(1024 * 1024, 2)
        refusals = []
        deadline = time.monotonic() + 30
        while True:
            try:
                s3.put_object(Bucket="supervised", Key="during", Body=during)
                break
            except ClientError as exc:
                assert error_code(exc) == "SlowDown" and http_status(exc) == 503, exc
                refusals.append(exc)
                assert time.monotonic() < deadline, "writes did not come back"
                time.sleep(0.2)
        assert s3.get_object(Bucket="supervised", Key="during")["Body"].read() == during

        def restarted() -> bool:
            services = {s["name"]: s for s in c.cluster_json()["services"]}
            return all(services[n]["restarts"] == 1 and services[n]["pid"] not in (None, old[n]) for n in old)
        wait_until(restarted, timeout=30, what="storage2 and storage4 restarted")
        wait_until(lambda: all(_status_rows(c)[n].rstrip().endswith("SERVING") for n in old), timeout=30,
                   what="the restarted nodes serving")
        rows = _status_rows(c)
        assert all("restarts 1 " in rows[n] for n in old) and "restarts 0 " in rows["storage1"], rows
        assert c.process.poll() is None
        out = c.output.read_text()
        assert "storage2 exited with code -9; restarting it in 0.5 s" in out and "storage4 restarted" in out

        after = payload(1024 * 1024, 3)
        s3.put_object(Bucket="supervised", Key="after", Body=after)
        for key, body in (("before", before), ("during", during), ("after", after)):
            assert s3.get_object(Bucket="supervised", Key=key)["Body"].read() == body

        # Dying again soon after a restart doubles the wait.
        os.kill(c.service("storage2")["pid"], signal.SIGKILL)
        wait_until(lambda: "storage2 exited with code -9; restarting it in 1 s" in c.output.read_text(),
                   timeout=15, what="the second backoff")
        wait_until(lambda: c.service("storage2")["restarts"] == 2, timeout=30, what="second restart")
    finally:
        pids = [s["pid"] for s in c.cluster_json()["services"] if s["pid"]]
        assert stop_cluster(c) == 0  # SIGINT
    assert "sealstore: stopped." in c.output.read_text()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if _alive(p)]


def test_sigterm_stops_a_supervised_cluster_and_nothing_is_restarted(tmp_path):
    c = start_cluster(tmp_path)
    pids = [s["pid"] for s in c.cluster_json()["services"]]
    c.process.send_signal(signal.SIGTERM)
    assert c.process.wait(timeout=30) == 0
    assert not [p for p in pids if _alive(p)]
    assert not re.search(r"restarting it in", c.output.read_text())
    assert all(s["pid"] is None for s in c.cluster_json()["services"])
