"""`sealstore probe`, the container health check, against real service processes: each instance
checks its own service over its own TLS with only its own bundle, and fails when it should."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sealstore import tls
from tests.support.processes import clean_env, free_port, python_service, spawn, stop_process, wait_listening

SEALSTORE = [sys.executable, "-m", "sealctl"]


def bundle(pki: Path, instance: str, root: Path) -> Path:
    """What the container of `instance` holds: ca.pem, its certificate and key (sealstore init --bundles)."""
    out = root / instance
    tls.write_bundle(pki, instance, out)
    return out / "certs"


def probe(certs: Path, instance: str, *args: str) -> subprocess.CompletedProcess:
    env = clean_env(SEALSTORE_CERTS_DIR=str(certs), SEALSTORE_INSTANCE=instance)
    return subprocess.run([*SEALSTORE, "probe", *args], env=env, capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    pki = root / "pki"
    tls.ensure_dev_pki(pki, layout=tls.PkiLayout(crypto_workers=2))
    socket_path = root / "storage-0.sock"
    storage_addr, crypto_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    storage_env = clean_env(SEALSTORE_CERTS_DIR=str(bundle(pki, "storage-0", root / "bundles")),
                            SEALSTORE_INSTANCE="storage-0", SEALSTORE_HEALTH_SOCKET=str(socket_path))
    storage = spawn(python_service("services.storage", "--listen", storage_addr, "--data-dir", str(root / "st"),
                                   "--drives", str(root / "st" / "d1")), root / "storage.log", storage_env)
    crypto_env = clean_env(SEALSTORE_CERTS_DIR=str(bundle(pki, "crypto-1", root / "bundles")),
                           SEALSTORE_INSTANCE="crypto-1", SEALSTORE_PARITY="1",
                           SEALSTORE_STORAGE_SET=f"{storage_addr}/0,127.0.0.1:1/0")
    crypto = spawn(python_service("services.crypto", "--listen", crypto_addr, "--data-dir", str(root / "cr")),
                   root / "crypto.log", crypto_env)
    try:
        wait_listening(storage_addr, storage, root / "storage.log")
        wait_listening(crypto_addr, crypto, root / "crypto.log")
        yield {"root": root, "pki": pki, "socket": socket_path, "storage": storage_addr, "crypto": crypto_addr,
               "storage_proc": storage}
    finally:
        stop_process(crypto)
        stop_process(storage)


def test_crypto_probes_its_port_over_mutual_tls(services):
    certs = services["root"] / "bundles" / "crypto-1" / "certs"
    assert sorted(p.name for p in certs.iterdir()) == ["ca.pem", "crypto-1-key.pem", "crypto-1.pem"]
    ok = probe(certs, "crypto-1", "--address", services["crypto"])
    assert ok.returncode == 0 and "crypto-1: SERVING" in ok.stdout, ok.stderr
    # The storage node's port does not answer as crypto: the name in its certificate is checked.
    wrong = probe(certs, "crypto-1", "--address", services["storage"])
    assert wrong.returncode == 1 and "Hostname Verification" in wrong.stderr, wrong.stderr


def test_storage_probes_its_health_socket_with_its_own_certificate(services):
    certs = services["root"] / "bundles" / "storage-0" / "certs"
    ok = probe(certs, "storage-0", "--socket", str(services["socket"]))
    assert ok.returncode == 0 and "storage-0: SERVING" in ok.stdout, ok.stderr
    # A storage certificate cannot dial (serverAuth only): without the socket the probe says so.
    no_socket = probe(certs, "storage-0", "--socket", "")
    assert no_socket.returncode == 1 and "SEALSTORE_HEALTH_SOCKET" in no_socket.stderr
    # The socket presents the storage certificate: a probe expecting the kms refuses it.
    kms_certs = bundle(services["pki"], "kms", services["root"] / "bundles")
    as_kms = probe(kms_certs, "kms", "--socket", str(services["socket"]))
    assert as_kms.returncode == 1 and "kms" in as_kms.stderr


def test_the_health_socket_serves_health_and_nothing_else(services):
    """The socket takes callers without a client certificate: any storage method there must be
    UNIMPLEMENTED (not served), while health answers."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from sealstore.v1 import storage_pb2, storage_pb2_grpc, types_pb2
    certs = services["root"] / "bundles" / "storage-0" / "certs"
    credentials = grpc.ssl_channel_credentials(root_certificates=(certs / "ca.pem").read_bytes())
    with grpc.secure_channel(f"unix:{services['socket']}", credentials,
                             options=[("grpc.ssl_target_name_override", "storage")]) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        for call, request in ((stub.ListBuckets, storage_pb2.ListBucketsRequest()),
                              (stub.NodeStatus, types_pb2.Empty()),
                              (stub.GetObjectMeta, storage_pb2.ObjectRequest(bucket="b", key="k"))):
            with pytest.raises(grpc.RpcError) as refused:
                call(request, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_different_ca_is_refused(services, tmp_path):
    other = tmp_path / "other"
    tls.ensure_dev_pki(other, layout=tls.PkiLayout(crypto_workers=2))
    certs = bundle(other, "crypto-1", tmp_path / "bundles")
    assert probe(certs, "crypto-1", "--address", services["crypto"]).returncode == 1


def test_probe_fails_once_the_service_stops(services):
    certs = services["root"] / "bundles" / "storage-0" / "certs"
    stop_process(services["storage_proc"])
    gone = probe(certs, "storage-0", "--socket", str(services["socket"]), "--timeout", "1")
    assert gone.returncode == 1 and "storage" in gone.stderr


def test_gateway_probe_checks_s3_and_its_https_certificate(tmp_path):
    pki = tmp_path / "pki"
    tls.ensure_dev_pki(pki)
    tls.ensure_gateway_https_certificate(pki)
    certs = bundle(pki, "gateway-0", tmp_path / "bundles")
    http_addr, https_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = clean_env(SEALSTORE_CERTS_DIR=str(pki), SEALSTORE_INSTANCE="gateway-0", SEALSTORE_ROOT_USER="probeuser",
                    SEALSTORE_ROOT_PASSWORD="probe-password-0123456789", SEALSTORE_STORAGE_SET=
                    "127.0.0.1:1/0,127.0.0.1:2/0,127.0.0.1:3/0,127.0.0.1:4/0")
    gateway = spawn(python_service("services.gateway", "--listen", http_addr, "--data-dir", str(tmp_path / "gw"),
                                   "--https-listen", https_addr), tmp_path / "gateway.log", env)
    try:
        wait_listening(https_addr, gateway, tmp_path / "gateway.log")
        ok = probe(certs, "gateway-0", "--address", http_addr, "--https", https_addr)
        assert ok.returncode == 0 and "gateway-0: SERVING" in ok.stdout, ok.stderr
        # A bundle from another CA does not trust the gateway's HTTPS certificate.
        other = tmp_path / "other"
        tls.ensure_dev_pki(other)
        stranger = probe(bundle(other, "gateway-0", tmp_path / "other-bundles"), "gateway-0",
                         "--address", http_addr, "--https", https_addr)
        assert stranger.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in stranger.stderr, stranger.stderr
    finally:
        stop_process(gateway)
    down = probe(certs, "gateway-0", "--address", http_addr, "--timeout", "1")
    assert down.returncode == 1 and "gateway http://" in down.stderr

