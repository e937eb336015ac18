"""The real kms process over mTLS, called with each role's certificate."""
from __future__ import annotations

import base64
import json

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sealstore import errors
from sealstore.tls import role_identities
from sealstore.v1 import kms_pb2

CTX = b'{"bucket-a":"bucket-a/dir/obj"}'


def call_error(fn, *args) -> tuple[grpc.StatusCode, errors.SealstoreError, grpc.RpcError]:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args)
    return info.value.code(), errors.from_rpc_error(info.value), info.value


def error_code_metadata(rpc_error: grpc.RpcError) -> str:
    return dict(rpc_error.trailing_metadata() or ())[errors.ERROR_CODE_METADATA]


def test_health_is_serving_and_open_to_any_certificate(kms):
    for role in ("admin", "gateway", "crypto"):  # the gateway may call nothing else here
        with kms.channel(role) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            for service in ("", "sealstore.v1.KeyService"):
                reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_default_policy_file_written_on_first_start(kms):
    policy = json.loads((kms.data_dir / "kms" / "policy.json").read_text())
    ids = role_identities(kms.certs)
    assert policy["admin"] == ids["admin"]
    assert {i: r for i, r in policy["identities"].items()} == {ids["gateway"]: "gateway", ids["crypto"]: "crypto"}


def test_admin_manages_key_lifecycle(kms):
    admin = kms.stub("admin")
    admin_id = role_identities(kms.certs)["admin"]
    info = admin.CreateKey(kms_pb2.CreateKeyRequest(name="life-a"))
    assert (info.name, info.algorithm, info.created_by, info.enabled) == ("life-a", "AES256", admin_id, True)
    admin.CreateKey(kms_pb2.CreateKeyRequest(name="life-b"))
    code, err, _ = call_error(admin.CreateKey, kms_pb2.CreateKeyRequest(name="life-a"))
    assert code == grpc.StatusCode.ALREADY_EXISTS and isinstance(err, errors.KMSKeyExists)

    listed = admin.ListKeys(kms_pb2.ListKeysRequest(pattern="life-*")).keys
    assert [k.name for k in listed] == ["life-a", "life-b"]
    assert admin.DescribeKey(kms_pb2.KeyRequest(name="life-a")) == info

    assert admin.DisableKey(kms_pb2.KeyRequest(name="life-a")).enabled is False
    assert admin.DescribeKey(kms_pb2.KeyRequest(name="life-a")).enabled is False
    assert admin.EnableKey(kms_pb2.KeyRequest(name="life-a")).enabled is True

    admin.DeleteKey(kms_pb2.KeyRequest(name="life-a"))
    code, err, _ = call_error(admin.DescribeKey, kms_pb2.KeyRequest(name="life-a"))
    assert code == grpc.StatusCode.NOT_FOUND and isinstance(err, errors.KMSNotFound)
    assert not (kms.data_dir / "kms" / "keys" / "life-a.json").exists()
    assert [k.name for k in admin.ListKeys(kms_pb2.ListKeysRequest(pattern="life-*")).keys] == ["life-b"]


def test_invalid_names_and_import_sizes(kms):
    admin = kms.stub("admin")
    code, err, _ = call_error(admin.CreateKey, kms_pb2.CreateKeyRequest(name="bad/name"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and isinstance(err, errors.KMSInvalidKeyName)
    code, err, _ = call_error(admin.ImportKey, kms_pb2.ImportKeyRequest(name="imp", key=b"x" * 16))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and isinstance(err, errors.InvalidArgument)
    assert admin.ImportKey(kms_pb2.ImportKeyRequest(name="imp", key=b"x" * 32)).name == "imp"


def test_crypto_generates_and_decrypts_bound_to_context(kms):
    kms.stub("admin").CreateKey(kms_pb2.CreateKeyRequest(name="bucket-a"))
    crypto = kms.stub("crypto")
    dek = crypto.GenerateKey(kms_pb2.GenerateKeyRequest(name="bucket-a", context=CTX))
    assert len(dek.plaintext) == 32 and len(dek.ciphertext) == 76
    again = crypto.Decrypt(kms_pb2.DecryptRequest(name="bucket-a", ciphertext=dek.ciphertext, context=CTX))
    assert again.plaintext == dek.plaintext

    code, err, rpc_error = call_error(crypto.Decrypt, kms_pb2.DecryptRequest(
        name="bucket-a", ciphertext=dek.ciphertext, context=b'{"bucket-a":"bucket-a/other"}'))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert error_code_metadata(rpc_error) == "KMSInvalidCiphertext"
    assert isinstance(err, errors.KMSInvalidCiphertext)

    tampered = bytearray(dek.ciphertext)
    tampered[0] ^= 1
    _, err, _ = call_error(crypto.Decrypt, kms_pb2.DecryptRequest(
        name="bucket-a", ciphertext=bytes(tampered), context=CTX))
    assert isinstance(err, errors.KMSInvalidCiphertext)


def test_crypto_may_not_manage_keys(kms):
    crypto = kms.stub("crypto")
    code, err, _ = call_error(crypto.CreateKey, kms_pb2.CreateKeyRequest(name="crypto-made"))
    assert code == grpc.StatusCode.PERMISSION_DENIED and isinstance(err, errors.KMSAccessDenied)
    assert not (kms.data_dir / "kms" / "keys" / "crypto-made.json").exists()


def test_gateway_describes_keys_but_never_manages_them_or_sees_data_keys(kms):
    gateway = kms.stub("gateway")
    gateway_id = role_identities(kms.certs)["gateway"]
    kms.stub("admin").CreateKey(kms_pb2.CreateKeyRequest(name="gw-bucket"))
    assert gateway.DescribeKey(kms_pb2.KeyRequest(name="gw-bucket")).name == "gw-bucket"
    # Issue 7 finding 3: a compromised gateway could create, import, disable or delete every key.
    for call, request in ((gateway.CreateKey, kms_pb2.CreateKeyRequest(name="gw-made")),
                          (gateway.ImportKey, kms_pb2.ImportKeyRequest(name="gw-imported", key=b"k" * 32)),
                          (gateway.DisableKey, kms_pb2.KeyRequest(name="gw-bucket")),
                          (gateway.DeleteKey, kms_pb2.DeleteKeyRequest(name="gw-bucket")),
                          (gateway.Status, kms_pb2.StatusRequest())):
        code, err, _ = call_error(call, request)
        assert code == grpc.StatusCode.PERMISSION_DENIED and isinstance(err, errors.KMSAccessDenied), call
    assert kms.stub("admin").DescribeKey(kms_pb2.KeyRequest(name="gw-bucket")).enabled
    assert not (kms.data_dir / "kms" / "keys" / "gw-made.json").exists()

    code, err, rpc_error = call_error(gateway.GenerateKey, kms_pb2.GenerateKeyRequest(name="gw-bucket", context=CTX))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert isinstance(err, errors.KMSAccessDenied)
    assert error_code_metadata(rpc_error) == "KMSAccessDenied"

    dek = kms.stub("crypto").GenerateKey(kms_pb2.GenerateKeyRequest(name="gw-bucket", context=CTX))
    code, err, _ = call_error(gateway.Decrypt, kms_pb2.DecryptRequest(
        name="gw-bucket", ciphertext=dek.ciphertext, context=CTX))
    assert code == grpc.StatusCode.PERMISSION_DENIED and isinstance(err, errors.KMSAccessDenied)

    # The refusal is logged with identity, method and key name.
    log = kms.log_text()
    assert f"denied GenerateKey on key 'gw-bucket' for identity {gateway_id}" in log
    assert f"denied Decrypt on key 'gw-bucket' for identity {gateway_id}" in log


def test_unknown_identity_is_denied_everything(kms, tmp_path):
    from sealstore import rpc
    from sealstore.v1 import kms_pb2_grpc
    from tests.pki.certs import CLIENT, issue
    # A gateway instance the policy does not list: a cluster certificate, but no kms rights.
    name = issue(kms.certs, tmp_path, "gateway-7", role="gateway", usages=(CLIENT,))
    stranger = kms_pb2_grpc.KeyServiceStub(rpc.sync_channel(tmp_path, name, kms.address, server="kms"))
    code, err, _ = call_error(stranger.DescribeKey, kms_pb2.KeyRequest(name="x"))
    assert code == grpc.StatusCode.PERMISSION_DENIED and isinstance(err, errors.KMSAccessDenied)


def test_storage_and_kms_certificates_cannot_call_at_all(kms):
    for role in ("storage", "kms"):  # serverAuth only: refused at the handshake
        code, _, _ = call_error(kms.stub(role).Status, kms_pb2.StatusRequest())
        assert code == grpc.StatusCode.UNAVAILABLE


def test_disabled_key_refuses_data_keys(kms):
    admin, crypto = kms.stub("admin"), kms.stub("crypto")
    admin.CreateKey(kms_pb2.CreateKeyRequest(name="to-disable"))
    dek = crypto.GenerateKey(kms_pb2.GenerateKeyRequest(name="to-disable", context=CTX))
    admin.DisableKey(kms_pb2.KeyRequest(name="to-disable"))
    code, err, _ = call_error(crypto.GenerateKey, kms_pb2.GenerateKeyRequest(name="to-disable", context=CTX))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and isinstance(err, errors.KMSDisabled)
    code, err, _ = call_error(crypto.Decrypt, kms_pb2.DecryptRequest(
        name="to-disable", ciphertext=dek.ciphertext, context=CTX))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and isinstance(err, errors.KMSDisabled)
    admin.EnableKey(kms_pb2.KeyRequest(name="to-disable"))
    assert crypto.Decrypt(kms_pb2.DecryptRequest(
        name="to-disable", ciphertext=dek.ciphertext, context=CTX)).plaintext == dek.plaintext


def test_deleted_key_is_not_found_and_its_data_keys_are_gone(kms):
    admin, crypto = kms.stub("admin"), kms.stub("crypto")
    admin.CreateKey(kms_pb2.CreateKeyRequest(name="to-delete"))
    dek = crypto.GenerateKey(kms_pb2.GenerateKeyRequest(name="to-delete", context=CTX))
    admin.DeleteKey(kms_pb2.KeyRequest(name="to-delete"))
    code, err, _ = call_error(crypto.Decrypt, kms_pb2.DecryptRequest(
        name="to-delete", ciphertext=dek.ciphertext, context=CTX))
    assert code == grpc.StatusCode.NOT_FOUND and isinstance(err, errors.KMSNotFound)
    _, err, _ = call_error(crypto.GenerateKey, kms_pb2.GenerateKeyRequest(name="to-delete", context=CTX))
    assert isinstance(err, errors.KMSNotFound)
    _, err, _ = call_error(admin.DeleteKey, kms_pb2.KeyRequest(name="to-delete"))
    assert isinstance(err, errors.KMSNotFound)
    # Recreating the name makes a new key: the old ciphertext stays unreadable.
    admin.CreateKey(kms_pb2.CreateKeyRequest(name="to-delete"))
    _, err, _ = call_error(crypto.Decrypt, kms_pb2.DecryptRequest(
        name="to-delete", ciphertext=dek.ciphertext, context=CTX))
    assert isinstance(err, errors.KMSInvalidCiphertext)


def test_status(kms):
    admin = kms.stub("admin")
    admin.CreateKey(kms_pb2.CreateKeyRequest(name="status-key"))
    status = admin.Status(kms_pb2.StatusRequest())
    assert (status.version, status.keystore) == ("0.1.0", "fs")
    assert status.key_count == len(admin.ListKeys(kms_pb2.ListKeysRequest()).keys) >= 1
    assert status.uptime_seconds > 0
    assert status.caller_identity == role_identities(kms.certs)["admin"]


def test_data_keys_and_key_material_never_reach_disk_or_log(kms):
    admin, crypto = kms.stub("admin"), kms.stub("crypto")
    material = bytes(range(200, 232))
    admin.ImportKey(kms_pb2.ImportKeyRequest(name="leak-check", key=material))
    deks = []
    for _ in range(5):
        dek = crypto.GenerateKey(kms_pb2.GenerateKeyRequest(name="leak-check", context=CTX))
        opened = crypto.Decrypt(kms_pb2.DecryptRequest(name="leak-check", ciphertext=dek.ciphertext, context=CTX))
        assert opened.plaintext == dek.plaintext
        deks.append(dek.plaintext)
    secrets = deks + [material]
    blobs = [p.read_bytes() for p in kms.data_dir.rglob("*") if p.is_file()]
    blobs.append(kms.log_path.read_bytes())
    assert len(blobs) > 3
    for secret in secrets:
        forms = (secret, secret.hex().encode(), base64.b64encode(secret), base64.b64encode(secret).rstrip(b"="))
        for blob in blobs:
            for form in forms:
                assert form not in blob
