"""`make run` with SEALSTORE_KES_ADDR: the kms answers the KES API that MinIO's KES client uses,
over HTTPS with the same client certificates, beside a running cluster."""
from __future__ import annotations

import base64

import pytest

from tests.cluster.harness import start_cluster, stop_cluster
from tests.kms.kes_harness import KesClient, free_port


@pytest.fixture(scope="module")
def kes_cluster(tmp_path_factory):
    address = f"127.0.0.1:{free_port()}"
    running = start_cluster(tmp_path_factory.mktemp("kes"), extra_env={"SEALSTORE_KES_ADDR": address})
    yield running, address
    stop_cluster(running)


def test_kes_api_serves_keys_of_the_running_cluster(kes_cluster):
    cluster, address = kes_cluster
    cluster.cli("key", "create", "minio-sse-key")
    certs = cluster.data / "certs"
    crypto = KesClient(certs, "crypto", address)
    described = KesClient(certs, "admin", address).request("GET", "/v1/key/describe/minio-sse-key")
    assert described.status == 200 and described.json()["name"] == "minio-sse-key"
    context = base64.b64encode(b'{"bucket":"bucket/object"}').decode()
    generated = crypto.request("POST", "/v1/key/generate/minio-sse-key", {"context": context})
    assert generated.status == 200
    plaintext = base64.b64decode(generated.json()["plaintext"])
    decrypted = crypto.request("POST", "/v1/key/decrypt/minio-sse-key",
                               {"ciphertext": generated.json()["ciphertext"], "context": context})
    assert decrypted.status == 200 and base64.b64decode(decrypted.json()["plaintext"]) == plaintext
    refused = KesClient(certs, "gateway", address).request("POST", "/v1/key/generate/minio-sse-key", {})
    assert refused.status == 403
