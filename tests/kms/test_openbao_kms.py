"""The kms gRPC service on real OpenBao servers, driven over mTLS with the cluster's certificates:
dev mode for the API, raft + static seal for restarts and for the offline cache."""
from __future__ import annotations

import time
import urllib.request
import uuid

import grpc
import pytest

from sealstore import errors
from sealstore.v1 import kms_pb2
from tests.kms.conftest import free_port, start_kms, stop_kms
from tests.kms.openbao_harness import RaftOpenBao

CTX = b'{"bucket-a":"bucket-a/dir/obj"}'
KEYSTORES = ["openbao-transit", "openbao-kv"]


def rpc_error(fn, request) -> errors.SealstoreError:
    with pytest.raises(grpc.RpcError) as info:
        fn(request, timeout=20)
    return errors.from_rpc_error(info.value)


def metric(port: int, line_start: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))


@pytest.fixture(params=KEYSTORES)
def dev_kms(request, openbao_dev, tmp_path):
    kv_prefix = {"SEALSTORE_OPENBAO_KV_PREFIX": f"grpc/{uuid.uuid4().hex}"}
    metrics_port = free_port()
    kms = start_kms(tmp_path / "data", tmp_path / "log", openbao_dev.kms_env(request.param, **kv_prefix),
                    ["--metrics-port", str(metrics_port)])
    kms.keystore, kms.metrics_port = request.param, metrics_port
    try:
        yield kms
    finally:
        stop_kms(kms.process)


def test_key_lifecycle_over_grpc(dev_kms):
    admin, crypto = dev_kms.stub("admin"), dev_kms.stub("crypto")
    name = f"bucket-{uuid.uuid4().hex[:8]}"
    assert admin.Status(kms_pb2.StatusRequest()).keystore == dev_kms.keystore
    info = admin.CreateKey(kms_pb2.CreateKeyRequest(name=name))
    assert (info.enabled, info.version, info.min_version) == (True, 1, 1)
    assert isinstance(rpc_error(admin.CreateKey, kms_pb2.CreateKeyRequest(name=name)), errors.KMSKeyExists)

    dek = crypto.GenerateKey(kms_pb2.GenerateKeyRequest(name=name, context=CTX))
    assert len(dek.plaintext) == 32 and dek.version == 1
    opened = crypto.Decrypt(kms_pb2.DecryptRequest(name=name, ciphertext=dek.ciphertext, context=CTX))
    assert (opened.plaintext, opened.version) == (dek.plaintext, 1)
    if dev_kms.keystore == "openbao-transit":
        assert dek.ciphertext.startswith(b"vault:v1:")  # made by OpenBao, not by the kms

    assert admin.RotateKey(kms_pb2.KeyRequest(name=name)).version == 2
    newer = crypto.GenerateKey(kms_pb2.GenerateKeyRequest(name=name, context=CTX))
    assert newer.version == 2
    rewrapped = admin.ReWrap(kms_pb2.ReWrapRequest(name=name, ciphertext=dek.ciphertext, context=CTX))  # rewrap runs as admin
    assert rewrapped.version == 2
    assert admin.SetMinVersion(kms_pb2.SetMinVersionRequest(name=name, min_version=2)).min_version == 2
    assert isinstance(rpc_error(crypto.Decrypt, kms_pb2.DecryptRequest(
        name=name, ciphertext=dek.ciphertext, context=CTX)), errors.KMSInvalidCiphertext)
    assert crypto.Decrypt(kms_pb2.DecryptRequest(
        name=name, ciphertext=rewrapped.ciphertext, context=CTX)).plaintext == dek.plaintext

    admin.DisableKey(kms_pb2.KeyRequest(name=name))
    err = rpc_error(crypto.Decrypt, kms_pb2.DecryptRequest(name=name, ciphertext=newer.ciphertext, context=CTX))
    assert isinstance(err, errors.KMSDisabled) and err.code == "KMS.DisabledException"
    admin.EnableKey(kms_pb2.KeyRequest(name=name))

    admin.DeleteKey(kms_pb2.DeleteKeyRequest(name=name, pending_window_days=7))
    err = rpc_error(crypto.GenerateKey, kms_pb2.GenerateKeyRequest(name=name, context=CTX))
    assert isinstance(err, errors.KMSPendingDeletion) and err.code == "KMS.KMSInvalidStateException"
    assert admin.DescribeKey(kms_pb2.KeyRequest(name=name)).deletion_ns > time.time_ns() + 6 * 86_400 * 10**9
    assert admin.CancelKeyDeletion(kms_pb2.KeyRequest(name=name)).enabled is False
    admin.EnableKey(kms_pb2.KeyRequest(name=name))
    assert crypto.Decrypt(kms_pb2.DecryptRequest(
        name=name, ciphertext=newer.ciphertext, context=CTX)).plaintext == newer.plaintext

    admin.DeleteKey(kms_pb2.DeleteKeyRequest(name=name))
    assert isinstance(rpc_error(crypto.Decrypt, kms_pb2.DecryptRequest(
        name=name, ciphertext=newer.ciphertext, context=CTX)), errors.KMSNotFound)
    assert name not in [k.name for k in admin.ListKeys(kms_pb2.ListKeysRequest()).keys]
    assert metric(dev_kms.metrics_port, "sealstore_kms_cache_total{") > 0


@pytest.fixture(scope="module")
def raft_openbao(tmp_path_factory):
    server = RaftOpenBao(tmp_path_factory.mktemp("openbao-raft"))
    server.start()
    server.init()
    try:
        yield server
    finally:
        server.stop()


def wait_for(check, what: str, timeout: float = 120):
    """Polls `check` until it returns something truthy (functional waiting, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


@pytest.mark.parametrize("keystore", KEYSTORES)
def test_outage_served_from_cache_for_offline_window_then_503_then_recovers(raft_openbao, tmp_path, keystore):
    """Stop the real OpenBao: cached keys keep working for the offline window, then calls fail
    with KMSUnavailable (gRPC UNAVAILABLE, S3 503); restart it: the kms recovers by itself, and
    the keys survived OpenBao's restart (raft storage, static seal)."""
    metrics_port = free_port()
    env = raft_openbao.kms_env(keystore, SEALSTORE_KMS_CACHE_OFFLINE="3", SEALSTORE_KMS_RETRY_INTERVAL="0.2",
                               SEALSTORE_KMS_MAINTENANCE_INTERVAL="0.5", SEALSTORE_OPENBAO_TIMEOUT="10")
    kms = start_kms(tmp_path / "data", tmp_path / "log", env, ["--metrics-port", str(metrics_port)])
    try:
        admin, crypto = kms.stub("admin"), kms.stub("crypto")
        name = f"outage-{uuid.uuid4().hex[:8]}"
        admin.CreateKey(kms_pb2.CreateKeyRequest(name=name))
        dek = crypto.GenerateKey(kms_pb2.GenerateKeyRequest(name=name, context=CTX))
        decrypt = kms_pb2.DecryptRequest(name=name, ciphertext=dek.ciphertext, context=CTX)
        assert crypto.Decrypt(decrypt, timeout=20).plaintext == dek.plaintext  # cached now

        raft_openbao.stop()
        # Reads under the cached key keep working while OpenBao is down...
        assert crypto.Decrypt(decrypt, timeout=20).plaintext == dek.plaintext
        if keystore == "openbao-kv":
            # ...and so do writes: the key record is cached, the cryptography is local.
            fresh = crypto.GenerateKey(kms_pb2.GenerateKeyRequest(name=name, context=CTX), timeout=20)
            assert crypto.Decrypt(kms_pb2.DecryptRequest(name=name, ciphertext=fresh.ciphertext, context=CTX),
                                  timeout=20).plaintext == fresh.plaintext
        else:
            # Transit makes every data key inside OpenBao: no write can be served from a cache.
            assert isinstance(rpc_error(crypto.GenerateKey, kms_pb2.GenerateKeyRequest(name=name, context=CTX)),
                              errors.KMSUnavailable)
        assert metric(metrics_port, 'sealstore_kms_cache_total{cache="openbao-') > 0
        assert metric(metrics_port, "sealstore_kms_keystore_reachable") == 0
        assert not admin.Status(kms_pb2.StatusRequest(), timeout=20).keystore_reachable

        def refused_unavailable():
            try:
                crypto.Decrypt(decrypt, timeout=20)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
                err = errors.from_rpc_error(exc)
                return err if isinstance(err, errors.KMSUnavailable) else None
            return None

        err = wait_for(refused_unavailable, "the offline window to pass")
        assert err.http_status == 503 and "unreachable" in err.message

        raft_openbao.start()

        def served_again():
            try:
                return crypto.Decrypt(decrypt, timeout=20).plaintext == dek.plaintext
            except grpc.RpcError:
                return False

        wait_for(served_again, "the kms to recover after OpenBao restarted")
        again = crypto.GenerateKey(kms_pb2.GenerateKeyRequest(name=name, context=CTX), timeout=20)
        assert crypto.Decrypt(kms_pb2.DecryptRequest(name=name, ciphertext=again.ciphertext, context=CTX),
                              timeout=20).plaintext == again.plaintext
        assert admin.Status(kms_pb2.StatusRequest(), timeout=20).keystore_reachable
        assert 'result="offline"' in urllib.request.urlopen(
            f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    finally:
        stop_kms(kms.process)
        if raft_openbao.process is None:
            raft_openbao.start()
