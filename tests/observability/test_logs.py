"""Structured logs of a real cluster: JSON lines, one request followed through every service by
the id the gateway answered with, and no secret of the traffic in any line."""
from __future__ import annotations

import base64
import json
import urllib.parse

import pytest

pytestmark = pytest.mark.process


def _logs(cluster) -> dict[str, list[dict]]:
    out = {}
    for path in sorted((cluster.data / "logs").glob("*.log")):
        lines = path.read_text(errors="replace").splitlines()
        bad = [line for line in lines if line.strip() and not line.startswith("{")]
        assert not bad, f"{path.name}: lines that are not JSON: {bad[:5]}"
        out[path.stem] = [json.loads(line) for line in lines if line.strip()]
    return out


def _with_id(lines: list[dict], request_id: str) -> list[dict]:
    return [line for line in lines if line.get("request_id") == request_id]


def test_every_line_is_one_json_object_with_time_level_service_and_message(observed_cluster, traffic):
    logs = _logs(observed_cluster)
    assert set(logs) >= {"gateway", "kms", "crypto", "heal", "storage1", "storage2", "storage3", "storage4"}
    for name, lines in logs.items():
        assert lines, f"{name}.log is empty"
        for line in lines:
            assert {"time", "level", "service", "logger", "msg"} <= set(line), (name, line)


def test_one_sse_kms_put_is_followed_through_every_service(observed_cluster, traffic):
    request_id = traffic.request_ids["put-kms"]
    logs = _logs(observed_cluster)
    gateway = _with_id(logs["gateway"], request_id)
    access = [line for line in gateway if line["logger"] == "services.gateway.access"]
    assert len(access) == 1, gateway
    assert access[0]["operation"] == "PutObject" and access[0]["method"] == "PUT"
    assert access[0]["bucket"] == traffic.bucket and access[0]["key"] == "kms/object"
    assert access[0]["status"] == 200 and access[0]["bytes_in"] == traffic.sizes["kms"]
    assert access[0]["duration_ms"] > 0
    assert [line["rpc"] for line in _with_id(logs["crypto"], request_id)
            if line.get("caller") == "gateway-0"] == ["/sealstore.v1.CryptoService/PutObject"]
    assert "/sealstore.v1.KeyService/GenerateKey" in [line.get("rpc") for line in _with_id(logs["kms"], request_id)]
    for node in ("storage1", "storage2", "storage3", "storage4"):
        calls = {line.get("rpc") for line in _with_id(logs[node], request_id)}
        assert {"/sealstore.v1.StorageService/WriteShard", "/sealstore.v1.StorageService/CommitObject"} <= calls, \
            (node, calls)
    # The heal scanner's walk is no request: its calls carry no id of a client's.
    assert not _with_id(logs["heal"], request_id)


def test_an_sse_c_get_reaches_worker_and_drives_but_not_the_kms(observed_cluster, traffic):
    request_id = traffic.request_ids["get-c"]
    logs = _logs(observed_cluster)
    access = [line for line in _with_id(logs["gateway"], request_id) if line["logger"] == "services.gateway.access"]
    assert len(access) == 1 and access[0]["operation"] == "GetObject" and access[0]["tls"] is True
    assert access[0]["bytes_out"] == traffic.sizes["c"]
    assert any(line.get("rpc") == "/sealstore.v1.CryptoService/GetObject" for line in _with_id(logs["crypto"], request_id))
    assert not _with_id(logs["kms"], request_id)  # SSE-C: no key of the kms involved
    assert sum(bool(_with_id(logs[f"storage{i}"], request_id)) for i in range(1, 5)) >= 2  # k members read


def test_a_miss_is_logged_with_its_status(observed_cluster, traffic):
    request_id = traffic.request_ids["get-missing"]
    access = [line for line in _with_id(_logs(observed_cluster)["gateway"], request_id)
              if line["logger"] == "services.gateway.access"]
    assert len(access) == 1 and access[0]["status"] == 404 and access[0]["key"] == "no/such/key"


def _forms(secret: bytes) -> list[bytes]:
    forms = [secret, secret.hex().encode(), secret.hex().upper().encode(), base64.b64encode(secret),
             base64.urlsafe_b64encode(secret).rstrip(b"=")]
    if secret.isascii():
        forms.append(urllib.parse.quote(secret.decode(), safe="").encode())
    return [f for f in forms if len(f) >= 16]


def test_no_key_or_credential_of_the_traffic_is_in_any_log(observed_cluster, traffic):
    blobs = {p.name: p.read_bytes() for p in (observed_cluster.data / "logs").glob("*.log")}
    assert len(blobs) >= 8
    for secret in traffic.secrets:
        for form in _forms(secret):
            for name, blob in blobs.items():
                assert form not in blob, f"{name} holds a secret of the traffic ({form[:6]!r}...)"
    for name, blob in blobs.items():
        for word in (b"X-Amz-Signature", b"X-Amz-Credential", b"AWS4-HMAC-SHA256 Credential",
                     b"x-amz-server-side-encryption-customer-key"):
            assert word.lower() not in blob.lower(), f"{name} logs {word!r}"
