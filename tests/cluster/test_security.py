"""Key material stays where it belongs: scans every drive, the kms folder and every log of
the running cluster for plaintext, DEK and OEK bytes; checks the kms policy and mTLS."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from sealstore import errors, rpc
from sealstore.v1 import kms_pb2, kms_pb2_grpc, types_pb2
from services.crypto import keys

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def stored_meta(data: Path, bucket: str, key: str) -> types_pb2.ObjectMeta:
    for path in (data / "drives").rglob("meta.json"):
        raw = json.loads(path.read_text())
        if raw.get("bucket") == bucket and raw.get("key") == key:
            return json_format.ParseDict(raw, types_pb2.ObjectMeta(), ignore_unknown_fields=True)
    raise AssertionError(f"no meta.json for {bucket}/{key} on any drive")


def kms_stub(cluster, role: str):
    topology = json.loads((cluster.data / "cluster.json").read_text())
    kms = next(s["address"] for s in topology["services"] if s["role"] == "kms")
    return kms_pb2_grpc.KeyServiceStub(rpc.sync_channel(cluster.data / "certs", role, kms, server="kms"))


def every_file(data: Path):
    for path in data.rglob("*"):
        if path.is_file() and "certs" not in path.parts:
            yield path


def test_no_plaintext_dek_or_oek_on_disk_or_in_logs(cluster):
    s3 = cluster.s3()
    key_name, bucket = f"scan-{uuid.uuid4().hex[:8]}", f"scan-{uuid.uuid4().hex[:8]}"
    cluster.cli("key", "create", key_name)
    s3.create_bucket(Bucket=bucket)
    canary = b"SEALSTORE-CANARY-" + uuid.uuid4().hex.encode()
    body = b"".join(canary + os.urandom(4000) for _ in range(600))  # ~2.4 MiB, canary every 4 KiB
    context = base64.b64encode(json.dumps({"case": "scan"}).encode()).decode()
    s3.put_object(Bucket=bucket, Key="secret.bin", Body=body, ServerSideEncryption="aws:kms",
                  SSEKMSKeyId=key_name, SSEKMSEncryptionContext=context)
    assert s3.get_object(Bucket=bucket, Key="secret.bin")["Body"].read() == body

    # Recover the object's DEK and OEK the way the crypto worker does, with its certificate.
    meta = stored_meta(cluster.data, bucket, "secret.bin")
    envelope = meta.encryption
    assert envelope.kms_key_name == key_name and len(envelope.sealed_oek) == 64
    aad = keys.kms_context(bucket, "secret.bin", keys.parse_context_json(envelope.context_json))
    dek = kms_stub(cluster, "crypto").Decrypt(kms_pb2.DecryptRequest(
        name=key_name, ciphertext=envelope.encrypted_dek, context=aad)).plaintext
    oek = bytes(keys.unseal_oek(dek, envelope.sealed_oek, keys.SealContext(bucket, "secret.bin", envelope.iv)))
    assert len(dek) == 32 and len(oek) == 32

    needles = {"plaintext canary": canary, "plaintext sample": body[5000:5064]}
    for label, secret in (("DEK", dek), ("OEK", oek)):
        needles[label] = secret
        needles[f"{label} hex"] = secret.hex().encode()
        needles[f"{label} base64"] = base64.b64encode(secret)
    scanned = 0
    for path in every_file(cluster.data):
        content = path.read_bytes()
        scanned += 1
        for label, needle in needles.items():
            assert needle not in content, f"{label} found in {path}"
    # Also the launcher's own output.
    launcher_output = cluster.output.read_bytes()
    assert all(needle not in launcher_output for needle in needles.values())
    assert scanned > 10  # drives, metadata, kms keys and logs were really there to scan
    assert any(p.suffix == ".log" for p in every_file(cluster.data))


def test_kms_refuses_data_keys_to_the_gateway(cluster):
    key_name = f"policy-{uuid.uuid4().hex[:8]}"
    gateway = kms_stub(cluster, "gateway")
    kms_stub(cluster, "admin").CreateKey(kms_pb2.CreateKeyRequest(name=key_name))  # the gateway may not
    assert gateway.DescribeKey(kms_pb2.KeyRequest(name=key_name)).name == key_name
    for call, request in ((gateway.GenerateKey, kms_pb2.GenerateKeyRequest(name=key_name, context=b"{}")),
                          (gateway.Decrypt, kms_pb2.DecryptRequest(name=key_name, ciphertext=b"x" * 76)),
                          (gateway.ReWrap, kms_pb2.ReWrapRequest(name=key_name, ciphertext=b"x" * 76))):
        with pytest.raises(grpc.RpcError) as exc:
            call(request)
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert isinstance(errors.from_rpc_error(exc.value), errors.KMSAccessDenied)
    generated = kms_stub(cluster, "crypto").GenerateKey(kms_pb2.GenerateKeyRequest(name=key_name, context=b"{}"))
    assert len(generated.plaintext) == 32


def test_services_need_a_client_certificate(cluster):
    topology = cluster.cluster_json()
    storage = next(s["address"] for s in topology["services"] if s["role"] == "storage")
    ca = (cluster.data / "certs" / "ca.pem").read_bytes()
    channel = grpc.secure_channel(storage, grpc.ssl_channel_credentials(root_certificates=ca))
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    with pytest.raises(grpc.RpcError) as exc:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("role", ["kms", "crypto", "storage"])
def test_grpcurl_reflection_and_health(cluster, role):
    address = next(s["address"] for s in cluster.cluster_json()["services"] if s["role"] == role)
    certs = cluster.data / "certs"
    # The name each service's certificate carries (only the kms's also has 127.0.0.1).
    tls_args = ["-cacert", str(certs / "ca.pem"), "-cert", str(certs / "admin.pem"), "-key", str(certs / "admin-key.pem"),
                "-servername", role]
    listing = subprocess.run([GRPCURL, *tls_args, address, "list"], capture_output=True, text=True, timeout=30)
    assert listing.returncode == 0, listing.stderr
    expected = {"kms": "sealstore.v1.KeyService", "crypto": "sealstore.v1.CryptoService",
                "storage": "sealstore.v1.StorageService"}[role]
    assert expected in listing.stdout.split()
    assert "grpc.health.v1.Health" in listing.stdout.split()
    health = subprocess.run([GRPCURL, *tls_args, "-d", '{"service":""}', address, "grpc.health.v1.Health/Check"],
                            capture_output=True, text=True, timeout=30)
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout)["status"] == "SERVING"
    described = subprocess.run([GRPCURL, *tls_args, address, "describe", expected],
                               capture_output=True, text=True, timeout=30)
    assert described.returncode == 0 and "rpc " in described.stdout
