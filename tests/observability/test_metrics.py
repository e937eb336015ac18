"""Every service's /metrics after real traffic, scraped by a real Prometheus server (Debian's
`prometheus`, installed by `make system-tools`) and asked through its query API; the counters
must have moved. Without the server the test says so and reads the endpoints with
prometheus_client's parser instead (the same checks)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.ports import free_port
from tests.support.processes import spawn, stop_process

pytestmark = pytest.mark.process

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = shutil.which("prometheus")


def _get(url: str, timeout: float = 10) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


class RealPrometheus:
    """A Prometheus server scraping the cluster every second; `value(promql)` asks it."""

    def __init__(self, cluster, tmp: Path):
        self.port = free_port()
        jobs: dict[str, list[tuple[str, str]]] = {}
        for s in cluster.cluster_json()["services"]:
            jobs.setdefault(s["role"], []).append((s["metrics"], s["name"]))
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                  "scrape_configs": [{"job_name": role, "static_configs": [
                      {"targets": [target], "labels": {"service": name}} for target, name in targets]}
                      for role, targets in jobs.items()]}
        (tmp / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.log = tmp / "prometheus.log"
        self.process = spawn([PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}",
                              f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}"],
                             self.log)
        self.targets = sum(len(t) for t in jobs.values())
        self._wait(lambda: _get(self.url("/-/ready"), 2) and True, "Prometheus ready")
        self._wait(self._all_up, "every target up")
        self.next_scrape()  # a target is "up" a moment before its first samples can be queried

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _wait(self, ready, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.log.read_text()[-2000:]}")
            try:
                if ready():
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}: {_get(self.url('/api/v1/targets')).decode()[:3000]}")

    def _all_up(self) -> bool:
        active = json.loads(_get(self.url("/api/v1/targets")))["data"]["activeTargets"]
        return len(active) == self.targets and all(t["health"] == "up" for t in active)

    def value(self, promql: str) -> float:
        answer = json.loads(_get(self.url("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))))
        assert answer["status"] == "success", answer
        result = answer["data"]["result"]
        return float(result[0]["value"][1]) if result else 0.0

    def sum(self, job: str, metric: str, **labels: str) -> float:
        selector = ",".join([f'job="{job}"', *(f'{k}="{v}"' for k, v in labels.items())])
        return self.value(f"sum({metric}{{{selector}}})")

    def count_positive(self, job: str, metric: str) -> float:
        return self.value(f'count({metric}{{job="{job}"}} > 0)')

    def next_scrape(self) -> None:
        time.sleep(2.5)

    def close(self) -> None:
        stop_process(self.process)


class ParsedEndpoints:
    """The fallback: each endpoint read and parsed by prometheus_client, same questions."""

    def __init__(self, cluster):
        self.endpoints = [(s["role"], s["metrics"]) for s in cluster.cluster_json()["services"]]

    def _samples(self, job: str):
        for role, address in self.endpoints:
            if role == job:
                for family in text_string_to_metric_families(_get(f"http://{address}/metrics").decode()):
                    yield from family.samples

    def sum(self, job: str, metric: str, **labels: str) -> float:
        return sum(s.value for s in self._samples(job)
                   if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items()))

    def count_positive(self, job: str, metric: str) -> float:
        return sum(1 for s in self._samples(job) if s.name == metric and s.value > 0)

    def next_scrape(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def metrics(observed_cluster, traffic, tmp_path):
    if PROMETHEUS:
        source = RealPrometheus(observed_cluster, tmp_path)
    else:
        warnings.warn("no `prometheus` binary (Debian package prometheus, `make system-tools` as root): "
                      "the endpoints are read with prometheus_client's parser instead of a real server")
        source = ParsedEndpoints(observed_cluster)
    yield source
    source.close()


def test_every_service_exports_what_the_traffic_moved(observed_cluster, traffic, metrics):
    m, sizes = metrics, traffic.sizes
    # gateway: operations by status, latency histogram, bytes in and out.
    assert m.sum("gateway", "sealstore_s3_requests_total", operation="PutObject", status="200") >= 3
    assert m.sum("gateway", "sealstore_s3_requests_total", operation="GetObject", status="200") >= 3
    assert m.sum("gateway", "sealstore_s3_requests_total", operation="GetObject", status="404") >= 1
    assert m.sum("gateway", "sealstore_s3_requests_total", operation="CreateBucket", status="200") >= 1
    assert m.sum("gateway", "sealstore_s3_request_duration_seconds_count", operation="PutObject") >= 3
    assert m.sum("gateway", "sealstore_s3_request_duration_seconds_sum", operation="PutObject") > 0
    assert m.sum("gateway", "sealstore_s3_received_bytes_total", operation="PutObject") >= sum(sizes.values())
    assert m.sum("gateway", "sealstore_s3_sent_bytes_total", operation="GetObject") >= \
        sizes["kms"] + sizes["c"] + sizes["s3"]
    # kms: operations, cache lookups, the key store's state.
    assert m.sum("kms", "sealstore_kms_calls_total", method="GenerateKey", outcome="ok") >= 2
    assert m.sum("kms", "sealstore_kms_calls_total", method="Decrypt", outcome="ok") >= 1
    assert m.sum("kms", "sealstore_kms_cache_total") >= 1
    assert m.sum("kms", "sealstore_kms_keystore_reachable") == 1
    # crypto: plaintext sealed and opened, by SSE mode.
    assert m.sum("crypto", "sealstore_crypto_sealed_bytes_total", sse="SSE-KMS") >= sizes["kms"]
    assert m.sum("crypto", "sealstore_crypto_sealed_bytes_total", sse="SSE-S3") >= sizes["s3"]
    assert m.sum("crypto", "sealstore_crypto_sealed_bytes_total", sse="SSE-C") >= sizes["c"]
    assert m.sum("crypto", "sealstore_crypto_opened_bytes_total", sse="SSE-KMS") >= sizes["kms"]
    assert m.sum("crypto", "sealstore_crypto_opened_bytes_total", sse="SSE-C") >= sizes["c"]
    assert m.sum("crypto", "sealstore_crypto_objects_total", operation="put", sse="SSE-KMS") >= 1
    # storage: every drive wrote and reports its space and state.
    assert m.count_positive("storage", "sealstore_storage_drive_written_bytes_total") == 4, \
        [(s["name"], [line for line in _get(f"http://{s['metrics']}/metrics").decode().splitlines()
                      if line.startswith("sealstore_storage_drive_written_bytes_total")])
         for s in observed_cluster.cluster_json()["services"] if s["role"] == "storage"]
    assert m.count_positive("storage", "sealstore_storage_drive_read_bytes_total") >= 2
    assert m.count_positive("storage", "sealstore_storage_drive_free_bytes") == 4
    assert m.sum("storage", "sealstore_storage_drive_online") == 4
    assert m.sum("storage", "sealstore_storage_drive_state", state="online") == 4
    # heal: the scanner (every second here) examined the objects.
    assert m.sum("heal", "sealstore_heal_objects_total", result="healthy") >= 3
    # Every gRPC service counts the calls it answered.
    for job in ("kms", "crypto", "storage", "heal"):
        assert m.sum(job, "sealstore_grpc_server_handled_total") >= 1, job


def test_counters_move_with_the_next_request(observed_cluster, traffic, metrics):
    s3 = observed_cluster.s3()
    before = (metrics.sum("gateway", "sealstore_s3_requests_total", operation="PutObject", status="200"),
              metrics.sum("gateway", "sealstore_s3_received_bytes_total", operation="PutObject"),
              metrics.sum("crypto", "sealstore_crypto_sealed_bytes_total", sse="SSE-KMS"))
    s3.put_object(Bucket=traffic.bucket, Key="kms/again", Body=os.urandom(123_457), ServerSideEncryption="aws:kms",
                  SSEKMSKeyId=traffic.kms_key)
    deadline = time.monotonic() + 20
    while True:
        metrics.next_scrape()
        after = (metrics.sum("gateway", "sealstore_s3_requests_total", operation="PutObject", status="200"),
                 metrics.sum("gateway", "sealstore_s3_received_bytes_total", operation="PutObject"),
                 metrics.sum("crypto", "sealstore_crypto_sealed_bytes_total", sse="SSE-KMS"))
        if after != before or time.monotonic() > deadline:
            break
    assert after[0] == before[0] + 1
    assert after[1] == before[1] + 123_457
    assert after[2] == before[2] + 123_457


def test_the_compose_scrape_config_is_valid():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus, `make system-tools`) is not installed")
    result = subprocess.run([promtool, "check", "config", str(REPO / "deploy" / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
