"""SIGTERM drains: a PUT in flight when the gateway or the worker is told to stop completes (or,
past the grace period, fails as a whole), never leaving half an object; the stopped service
takes no new connection or call meanwhile and exits by itself."""
from __future__ import annotations

import hashlib
import http.client
import os
import random
import signal
import socket
import threading
import time
import urllib.parse

import pytest
from botocore.exceptions import ClientError

from tests.cluster.harness import RunningCluster, error_code, start_cluster, stop_cluster, unique

pytestmark = pytest.mark.process

GRACE = 8
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def draining_cluster(tmp_path_factory):
    # Services that exit stay down (the test restarts them): a restart would hide a drain.
    running = start_cluster(tmp_path_factory.mktemp("draining"),
                            {"SEALSTORE_KEEP_GOING": "1", "SEALSTORE_SHUTDOWN_GRACE": str(GRACE)})
    running.cluster_bucket = unique("drain")
    running.s3().create_bucket(Bucket=running.cluster_bucket)
    yield running
    stop_cluster(running)


def _pid(cluster: RunningCluster, name: str) -> int:
    restarted = (cluster.restarted or {}).get(name)
    return restarted.pid if restarted is not None else cluster.service(name)["pid"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A child of this test (restarted) lingers as a zombie until reaped.
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return True


def _wait_exit(pid: int, timeout: float) -> float:
    started = time.monotonic()
    while _alive(pid):
        assert time.monotonic() - started < timeout, f"pid {pid} still running after {timeout} s"
        time.sleep(0.1)
    return time.monotonic() - started


class SlowPut:
    """A presigned PUT whose body goes out 1 MiB at a time with a pause after each, in a thread,
    so a signal can land while it is in flight. `stall` pauses once after `stall_after` bytes."""

    def __init__(self, cluster: RunningCluster, key: str, size: int, pause: float,
                 stall_after: int = -1, stall: float = 0.0):
        self.body = random.Random(key).randbytes(size)
        self.url = urllib.parse.urlsplit(cluster.s3().generate_presigned_url(
            "put_object", Params={"Bucket": cluster.cluster_bucket, "Key": key}, ExpiresIn=600))
        self.pause, self.stall_after, self.stall = pause, stall_after, stall
        self.sent = 0
        self.status: int | None = None
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conn = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=60)
            conn.putrequest("PUT", f"{self.url.path}?{self.url.query}", skip_accept_encoding=True)
            conn.putheader("Content-Length", str(len(self.body)))
            conn.endheaders()
            for start in range(0, len(self.body), MIB):
                conn.send(self.body[start:start + MIB])
                self.sent = start + len(self.body[start:start + MIB])
                time.sleep(self.stall if self.sent == self.stall_after else self.pause)
            response = conn.getresponse()
            response.read()
            self.status = response.status
        except BaseException as exc:  # the connection cut off is one of the outcomes
            self.failure = exc

    def wait_sent(self, nbytes: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.sent < nbytes:
            assert time.monotonic() < deadline and self.thread.is_alive(), f"only {self.sent} bytes sent"
            time.sleep(0.02)

    def join(self, timeout: float = 90) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the PUT never ended"


def _refuses_connections(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def _stored(cluster: RunningCluster, key: str) -> bytes | None:
    deadline = time.monotonic() + 15
    while True:
        try:
            return cluster.s3().get_object(Bucket=cluster.cluster_bucket, Key=key)["Body"].read()
        except ClientError as exc:
            # A restarted service is redialled within ~2 s (sealstore/rpc.py's reconnect backoff).
            if error_code(exc) == "ServiceUnavailable" and time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            assert error_code(exc) == "NoSuchKey"
            return None


def _tmp_shards(cluster: RunningCluster) -> list[str]:
    return [str(p) for p in (cluster.data / "drives").glob("node*/drive*/tmp/*")]


def test_sigterm_to_the_gateway_lets_the_put_in_flight_finish(draining_cluster):
    c = draining_cluster
    gateway = _pid(c, "gateway")
    put = SlowPut(c, "during-gateway-stop", 16 * MIB, pause=0.15)
    put.wait_sent(3 * MIB)
    os.kill(gateway, signal.SIGTERM)
    time.sleep(0.5)
    assert _refuses_connections(c.service("gateway")["address"]), "a stopping gateway still accepts connections"
    put.join()
    assert put.failure is None and put.status == 200, (put.status, put.failure)
    took = _wait_exit(gateway, GRACE + 5)
    log = (c.data / "logs" / "gateway.log").read_text()
    assert "stopping: no new connections" in log and "stopped after" in log
    c.restart("gateway")
    stored = _stored(c, "during-gateway-stop")
    assert stored is not None and hashlib.sha256(stored).digest() == hashlib.sha256(put.body).digest()
    assert took < GRACE + 5


def test_sigterm_to_the_worker_lets_its_put_in_flight_finish(draining_cluster):
    c = draining_cluster
    worker = _pid(c, "crypto")
    put = SlowPut(c, "during-worker-stop", 12 * MIB, pause=0.15)
    put.wait_sent(3 * MIB)
    os.kill(worker, signal.SIGTERM)
    put.join()
    assert put.failure is None and put.status == 200, (put.status, put.failure)
    _wait_exit(worker, GRACE + 5)
    log = (c.data / "logs" / "crypto.log").read_text()
    assert "stopping: new calls refused" in log
    c.restart("crypto")
    stored = _stored(c, "during-worker-stop")
    assert stored is not None and stored == put.body


def test_a_put_still_incomplete_after_the_grace_period_leaves_nothing(draining_cluster):
    c = draining_cluster
    gateway = _pid(c, "gateway")
    # Half the body, then the client stalls past the grace period.
    put = SlowPut(c, "cut-by-shutdown", 8 * MIB, pause=0.05, stall_after=4 * MIB, stall=GRACE + 4)
    put.wait_sent(4 * MIB)
    os.kill(gateway, signal.SIGTERM)
    took = _wait_exit(gateway, GRACE + 5)
    assert took >= GRACE - 1, f"the gateway gave up after {took:.1f} s, not its {GRACE} s of grace"
    put.join()
    assert put.status != 200, "a PUT whose body never arrived was answered 200"
    c.restart("gateway")
    assert _stored(c, "cut-by-shutdown") is None
    deadline = time.monotonic() + 10  # the worker's cancelled shard streams are discarded as they end
    while _tmp_shards(c) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _tmp_shards(c) == []
