"""Identities and policies from the kms policy file, as KES: a custom policy enforced by a real
kms over gRPC and the KES API, and read back with `sealstore identity` / `sealstore policy`."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import grpc
import pytest

from sealstore.tls import instance_identities, role_identities, tls_files
from sealstore.v1 import kms_pb2
from services.kms.policy import default_policy
from tests.kms.kes_harness import REPO, start_kms

CTX = b'{"app-a":"app-a/obj"}'
ADMIN = "gateway-1"
"""The admin of the custom policy: a certificate that may call (clientAuth) but is nobody's default."""


def all_identities(certs) -> dict[str, str]:
    """role (its first instance) and instance name -> identity."""
    return {**role_identities(certs), **instance_identities(certs)}


def custom_policy(ids: dict[str, str]) -> dict:
    """The crypto worker may use data keys of app-* keys except app-secret*; the gateway only
    describes. A second gateway's certificate is the admin here."""
    return {
        "admin": ids[ADMIN],
        "policies": {
            "apps": {"allow": ["GenerateKey/app-*", "Decrypt/app-*", "DescribeKey/*"],
                     "deny": ["GenerateKey/app-secret*", "Decrypt/app-secret*"]},
            "viewer": {"allow": ["DescribeKey/*", "ListKeys/*", "Status/"], "deny": []},
        },
        "identities": {ids["crypto"]: "apps", ids["gateway"]: "viewer"},
    }


@pytest.fixture(scope="module")
def kms(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("policy-data")
    from sealstore.tls import PkiLayout, ensure_dev_pki
    ensure_dev_pki(data_dir / "certs", layout=PkiLayout(gateways=2))
    policy_path = data_dir / "custom-policy.json"
    policy_path.write_text(json.dumps(custom_policy(all_identities(data_dir / "certs"))))
    server = start_kms(data_dir, tmp_path_factory.mktemp("policy-log"), "--policy", str(policy_path))
    server.policy_path = policy_path
    yield server
    server.stop()


def sealstore(data_dir, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALSTORE_")}
    env["SEALSTORE_DATA_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, "-m", "sealctl", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def denied(fn, request) -> bool:
    try:
        fn(request)
    except grpc.RpcError as exc:
        return exc.code() == grpc.StatusCode.PERMISSION_DENIED
    return False


def test_custom_policy_file_is_enforced_deny_wins(kms):
    ids = all_identities(kms.certs)
    admin, crypto, gateway = kms.stub(ADMIN), kms.stub("crypto"), kms.stub("gateway")
    for name in ("app-one", "app-secret-1", "other"):
        admin.CreateKey(kms_pb2.CreateKeyRequest(name=name))
    dek = crypto.GenerateKey(kms_pb2.GenerateKeyRequest(name="app-one", context=CTX))
    assert crypto.Decrypt(kms_pb2.DecryptRequest(name="app-one", ciphertext=dek.ciphertext,
                                                 context=CTX)).plaintext == dek.plaintext
    assert denied(crypto.GenerateKey, kms_pb2.GenerateKeyRequest(name="app-secret-1", context=CTX))  # deny wins
    assert denied(crypto.GenerateKey, kms_pb2.GenerateKeyRequest(name="other", context=CTX))  # not allowed
    assert denied(crypto.CreateKey, kms_pb2.CreateKeyRequest(name="app-two"))
    assert gateway.DescribeKey(kms_pb2.KeyRequest(name="other")).name == "other"
    assert denied(gateway.DeleteKey, kms_pb2.KeyRequest(name="other"))
    assert denied(kms.stub("admin").Status, kms_pb2.StatusRequest())  # not the admin in this file
    # The same file governs the KES API.
    assert kms.kes("crypto").request("POST", "/v1/key/generate/app-secret-1", {}).status == 403
    assert kms.kes("crypto").request("POST", "/v1/key/generate/app-one", {}).status == 200
    assert kms.kes(ADMIN).request("GET", "/v1/identity/self/describe").json()["admin"] is True
    assert f"denied GenerateKey on key 'app-secret-1' for identity {ids['crypto']}" in kms.log_text()


def test_rejected_calls_are_logged_with_identity_never_key_bytes(kms):
    ids = all_identities(kms.certs)
    admin, crypto, gateway = kms.stub(ADMIN), kms.stub("crypto"), kms.stub("gateway")
    material = bytes(range(60, 92))
    assert denied(crypto.ImportKey, kms_pb2.ImportKeyRequest(name="app-imported", key=material))
    admin.CreateKey(kms_pb2.CreateKeyRequest(name="app-rejected"))
    dek = crypto.GenerateKey(kms_pb2.GenerateKeyRequest(name="app-rejected", context=CTX))
    assert denied(gateway.Decrypt, kms_pb2.DecryptRequest(name="app-rejected", ciphertext=dek.ciphertext,
                                                          context=CTX))
    log = kms.log_text()
    assert f"denied ImportKey on key 'app-imported' for identity {ids['crypto']}" in log
    assert f"denied Decrypt on key 'app-rejected' for identity {ids['gateway']}" in log
    blobs = [kms.log_path.read_bytes(), (kms.data_dir / "kms" / "audit.log").read_bytes()]
    for secret in (material, dek.plaintext, dek.ciphertext):
        b64 = base64.b64encode(secret)
        for form in (secret, secret.hex().encode(), b64, b64.rstrip(b"=")):
            for blob in blobs:
                assert form not in blob


def test_identity_list_marks_admin_and_policies(kms):
    ids = all_identities(kms.certs)
    result = sealstore(kms.data_dir, "identity", "list", "--policy", str(kms.policy_path))
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert set(rows) == {ids[ADMIN], ids["crypto"], ids["gateway"]}
    assert "(admin: everything)" in rows[ids[ADMIN]] and f"certificate {ADMIN}" in rows[ids[ADMIN]]
    assert rows[ids["crypto"]].split()[1] == "apps" and "certificate crypto" in rows[ids["crypto"]]
    assert rows[ids["gateway"]].split()[1] == "viewer"
    assert result.stdout.splitlines()[0].startswith(ids[ADMIN])  # the admin first


@pytest.mark.process
def test_identity_list_reads_the_default_policy_file(tmp_path):
    kms = start_kms(tmp_path / "data", tmp_path, kes=False)  # writes <data>/kms/policy.json
    kms.stop()
    ids = all_identities(kms.certs)
    result = sealstore(kms.data_dir, "identity", "list")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()}
    assert rows == {ids["admin"]: "(admin:", ids["crypto"]: "crypto", ids["gateway"]: "gateway"}
    shown = sealstore(kms.data_dir, "policy", "show", "gateway", "--json")
    expected = default_policy(ids)["policies"]["gateway"]
    assert json.loads(shown.stdout) == {"name": "gateway", "allow": expected["allow"], "deny": expected["deny"],
                                         "identities": [ids["gateway"]]}
    assert "GenerateKey/*" in expected["deny"] and "DescribeKey/*" in expected["allow"]


def test_identity_of_certificate(kms):
    ids = all_identities(kms.certs)
    for role in ("crypto", "gateway"):
        result = sealstore(kms.data_dir, "identity", "of", str(tls_files(kms.certs, role).cert))
        assert (result.returncode, result.stdout.strip()) == (0, ids[role])
    not_a_cert = sealstore(kms.data_dir, "identity", "of", str(kms.policy_path))
    assert not_a_cert.returncode == 1 and "not a PEM certificate" in not_a_cert.stderr


def test_policy_show_and_list(kms):
    ids = all_identities(kms.certs)
    shown = sealstore(kms.data_dir, "policy", "show", "apps", "--policy", str(kms.policy_path))
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    allow, deny = text.index("allow:"), text.index("deny:")
    for pattern in ("GenerateKey/app-*", "Decrypt/app-*", "DescribeKey/*"):
        assert allow < text.index(pattern) < deny
    for pattern in ("GenerateKey/app-secret*", "Decrypt/app-secret*"):
        assert deny < text.index(pattern) < text.index("identities:")
    assert ids["crypto"] in text[text.index("identities:"):]

    listed = sealstore(kms.data_dir, "policy", "list", "--policy", str(kms.policy_path))
    assert listed.stdout.splitlines() == [
        f"{'apps':<20} 3 allow, 2 deny, 1 identities", f"{'viewer':<20} 3 allow, 0 deny, 1 identities"]

    missing = sealstore(kms.data_dir, "policy", "show", "nope", "--policy", str(kms.policy_path))
    assert missing.returncode == 1 and "no policy 'nope'" in missing.stderr and "apps, viewer" in missing.stderr


@pytest.mark.process
def test_no_policy_file_is_a_clear_error(tmp_path):
    result = sealstore(tmp_path, "identity", "list")
    assert result.returncode == 1 and "no policy file" in result.stderr
