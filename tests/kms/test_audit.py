"""The kms audit log: a real kms process driven over gRPC and over the KES HTTPS API, its
audit lines read back from the file (and from stdout with `--audit-file -`)."""
from __future__ import annotations

import base64
import json
import re
import stat

import grpc
import pytest

from sealstore.tls import role_identities
from sealstore.v1 import kms_pb2
from services.kms.audit import AuditLog, rfc3339_ms
from tests.kms.kes_harness import start_kms

CTX = b'{"bucket-a":"bucket-a/dir/obj"}'
FIELDS = ["time", "api", "identity", "operation", "key", "version", "outcome", "latency_ms"]
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(scope="module")
def kms(tmp_path_factory):
    audit_dir = tmp_path_factory.mktemp("audit")
    server = start_kms(tmp_path_factory.mktemp("audit-data"), tmp_path_factory.mktemp("audit-log"),
                       "--audit-file", str(audit_dir / "kms-audit.log"))
    server.audit_path = audit_dir / "kms-audit.log"
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ids(kms):
    return role_identities(kms.certs)


def audit_lines(kms) -> list[dict]:
    lines = kms.audit_path.read_text().splitlines()
    parsed = [json.loads(line) for line in lines]
    for record in parsed:
        assert list(record) == FIELDS  # always every field, always in this order
    return parsed


def lines_for_key(kms, key: str) -> list[tuple]:
    return [(r["api"], r["identity"], r["operation"], r["outcome"]) for r in audit_lines(kms) if r["key"] == key]


def test_rfc3339_ms_format():
    assert rfc3339_ms(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339_ms(1_700_000_000.0456) == "2023-11-14T22:13:20.045Z"


def test_audit_log_records_and_reraises(tmp_path):
    log = AuditLog.open(tmp_path / "sub" / "a.log")
    with log.operation("grpc", "id1", "DescribeKey", "k") as event:
        event.version = 3
    with pytest.raises(KeyError):
        with log.operation("kes", "id2", "Decrypt", "k"):
            raise KeyError("boom")
    log.close()
    records = [json.loads(line) for line in (tmp_path / "sub" / "a.log").read_text().splitlines()]
    assert [(r["api"], r["identity"], r["operation"], r["version"], r["outcome"]) for r in records] == [
        ("grpc", "id1", "DescribeKey", 3, "ok"), ("kes", "id2", "Decrypt", None, "InternalError")]
    assert stat.S_IMODE((tmp_path / "sub" / "a.log").stat().st_mode) == 0o600


def test_every_grpc_call_is_audited_with_identity_and_outcome(kms, ids):
    admin, crypto, gateway = kms.stub("admin"), kms.stub("crypto"), kms.stub("gateway")
    admin.CreateKey(kms_pb2.CreateKeyRequest(name="audit-a"))
    admin.DescribeKey(kms_pb2.KeyRequest(name="audit-a"))
    dek = crypto.GenerateKey(kms_pb2.GenerateKeyRequest(name="audit-a", context=CTX))
    crypto.Decrypt(kms_pb2.DecryptRequest(name="audit-a", ciphertext=dek.ciphertext, context=CTX))
    with pytest.raises(grpc.RpcError):
        crypto.Decrypt(kms_pb2.DecryptRequest(name="audit-a", ciphertext=dek.ciphertext, context=b"{}"))
    with pytest.raises(grpc.RpcError):
        gateway.GenerateKey(kms_pb2.GenerateKeyRequest(name="audit-a", context=CTX))  # refused by policy
    with pytest.raises(grpc.RpcError):
        admin.DescribeKey(kms_pb2.KeyRequest(name="audit-a-missing"))
    admin.ListKeys(kms_pb2.ListKeysRequest(pattern="audit-*"))

    assert lines_for_key(kms, "audit-a") == [
        ("grpc", ids["admin"], "CreateKey", "ok"),
        ("grpc", ids["admin"], "DescribeKey", "ok"),
        ("grpc", ids["crypto"], "GenerateKey", "ok"),
        ("grpc", ids["crypto"], "Decrypt", "ok"),
        ("grpc", ids["crypto"], "Decrypt", "KMSInvalidCiphertext"),
        ("grpc", ids["gateway"], "GenerateKey", "KMSAccessDenied"),
    ]
    assert lines_for_key(kms, "audit-a-missing") == [("grpc", ids["admin"], "DescribeKey", "KMSNotFound")]
    # The version a data-key call used is recorded when the kms reports one.
    reported = getattr(dek, "version", 0) or None
    versions = {r["operation"]: r["version"] for r in audit_lines(kms)
                if r["key"] == "audit-a" and r["outcome"] == "ok"}
    assert versions["GenerateKey"] == versions["Decrypt"] == reported
    assert lines_for_key(kms, "audit-*") == [("grpc", ids["admin"], "ListKeys", "ok")]
    for record in audit_lines(kms):
        assert TIME_RE.match(record["time"])
        assert isinstance(record["latency_ms"], (int, float)) and record["latency_ms"] >= 0
        assert record["version"] is None or (isinstance(record["version"], int) and record["version"] > 0)


def test_refused_call_without_any_policy_is_audited(kms, tmp_path):
    from sealstore import rpc
    from sealstore.tls import identity_of, tls_files
    from sealstore.v1 import kms_pb2_grpc
    from tests.pki.certs import stranger
    name = stranger(kms.certs, tmp_path)
    with pytest.raises(grpc.RpcError):
        kms_pb2_grpc.KeyServiceStub(rpc.sync_channel(tmp_path, name, kms.address, server="kms")).Status(
            kms_pb2.StatusRequest())
    last = audit_lines(kms)[-1]
    expected = identity_of(tls_files(tmp_path, name).cert.read_bytes())
    assert (last["identity"], last["operation"], last["outcome"]) == (expected, "Status", "KMSAccessDenied")


def test_kes_api_calls_are_audited_in_the_same_log(kms, ids):
    admin, crypto, gateway = kms.kes("admin"), kms.kes("crypto"), kms.kes("gateway")
    assert admin.request("POST", "/v1/key/create/audit-kes").status == 200
    b64_ctx = base64.b64encode(CTX).decode()
    dek = crypto.request("POST", "/v1/key/generate/audit-kes", {"context": b64_ctx}).json()
    assert crypto.request("POST", "/v1/key/decrypt/audit-kes",
                          {"ciphertext": dek["ciphertext"], "context": b64_ctx}).status == 200
    assert gateway.request("POST", "/v1/key/decrypt/audit-kes",
                           {"ciphertext": dek["ciphertext"], "context": b64_ctx}).status == 403
    assert admin.request("GET", "/v1/key/describe/audit-kes-missing").status == 404
    assert lines_for_key(kms, "audit-kes") == [
        ("kes", ids["admin"], "CreateKey", "ok"),
        ("kes", ids["crypto"], "GenerateKey", "ok"),
        ("kes", ids["crypto"], "Decrypt", "ok"),
        ("kes", ids["gateway"], "Decrypt", "KMSAccessDenied"),
    ]
    assert lines_for_key(kms, "audit-kes-missing") == [("kes", ids["admin"], "DescribeKey", "KMSNotFound")]
    current = getattr(kms.stub("admin").DescribeKey(kms_pb2.KeyRequest(name="audit-kes")), "version", 0) or None
    kes_versions = {r["operation"]: r["version"] for r in audit_lines(kms)
                    if r["key"] == "audit-kes" and r["api"] == "kes" and r["outcome"] == "ok"}
    assert kes_versions["GenerateKey"] == kes_versions["Decrypt"] == current


def _forms(secret: bytes) -> list[bytes]:
    b64 = base64.b64encode(secret)
    return [secret, secret.hex().encode(), secret.hex().upper().encode(), b64, b64.rstrip(b"="),
            base64.urlsafe_b64encode(secret).rstrip(b"=")]


def test_audit_log_never_holds_key_material_data_keys_or_ciphertexts(kms):
    admin, crypto = kms.stub("admin"), kms.stub("crypto")
    material = bytes(range(100, 132))
    admin.ImportKey(kms_pb2.ImportKeyRequest(name="audit-leak", key=material))
    with pytest.raises(grpc.RpcError):
        crypto.ImportKey(kms_pb2.ImportKeyRequest(name="audit-leak-2", key=material))  # refused, still audited
    secrets = [material]
    for _ in range(3):
        dek = crypto.GenerateKey(kms_pb2.GenerateKeyRequest(name="audit-leak", context=CTX))
        crypto.Decrypt(kms_pb2.DecryptRequest(name="audit-leak", ciphertext=dek.ciphertext, context=CTX))
        secrets += [dek.plaintext, dek.ciphertext]
    b64_ctx = base64.b64encode(CTX).decode()
    kes_dek = kms.kes("crypto").request("POST", "/v1/key/generate/audit-leak", {"context": b64_ctx}).json()
    kms.kes("crypto").request("POST", "/v1/key/decrypt/audit-leak",
                              {"ciphertext": kes_dek["ciphertext"], "context": b64_ctx})
    secrets += [base64.b64decode(kes_dek["plaintext"]), base64.b64decode(kes_dek["ciphertext"])]

    blob = kms.audit_path.read_bytes()
    assert blob.count(b'"key":"audit-leak"') == 9  # import, 3 x (generate, decrypt), KES generate + decrypt
    assert b'"key":"audit-leak-2"' in blob and CTX not in blob  # contexts are not logged either
    for secret in secrets:
        for form in _forms(secret):
            assert form not in blob
    log_blob = kms.log_path.read_bytes()
    for secret in secrets:
        for form in _forms(secret):
            assert form not in log_blob


@pytest.mark.process
def test_default_audit_file_and_stdout(tmp_path):
    """Without --audit-file the log is <data>/kms/audit.log (0600); with `-` it goes to stdout."""
    default = start_kms(tmp_path / "default-data", tmp_path, kes=False)
    try:
        default.stub("admin").CreateKey(kms_pb2.CreateKeyRequest(name="audit-default"))
    finally:
        default.stop()
    path = default.data_dir / "kms" / "audit.log"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [json.loads(line)["operation"] for line in path.read_text().splitlines()
            if '"audit-default"' in line] == ["CreateKey"]

    (tmp_path / "stdout").mkdir()
    to_stdout = start_kms(tmp_path / "stdout-data", tmp_path / "stdout", "--audit-file", "-", kes=False)
    try:
        to_stdout.stub("admin").CreateKey(kms_pb2.CreateKeyRequest(name="audit-stdout"))
    finally:
        to_stdout.stop()
    records = [json.loads(line) for line in to_stdout.log_text().splitlines() if line.startswith("{")]
    # Stdout also carries the service's own JSON log lines; audit records are the ones with an operation.
    assert [r["operation"] for r in records if "operation" in r and r.get("key") == "audit-stdout"] == ["CreateKey"]
    assert not (to_stdout.data_dir / "kms" / "audit.log").exists()
