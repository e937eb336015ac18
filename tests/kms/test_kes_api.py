"""The KES-compatible HTTPS API of a real kms process, called over real mTLS HTTPS with the
admin, crypto, gateway and storage certificates, in the JSON shapes of minio/kms-go's KES client."""
from __future__ import annotations

import base64
import datetime
import re
import ssl

import pytest

from sealstore.tls import role_identities
from sealstore.v1 import kms_pb2
from tests.kms.kes_harness import KesClient, start_kms

CTX = b'{"bucket-a":"bucket-a/dir/obj"}'
B64_CTX = base64.b64encode(CTX).decode()


@pytest.fixture(scope="module")
def kms(tmp_path_factory):
    server = start_kms(tmp_path_factory.mktemp("kes-data"), tmp_path_factory.mktemp("kes-log"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ids(kms):
    return role_identities(kms.certs)


def assert_kes_error(response, status: int, message: str | None = None) -> None:
    assert response.status == status, (response.status, response.body)
    assert response.headers["content-type"].startswith("application/json")  # kms-go parses only JSON errors
    if message is not None:
        assert response.json() == {"message": message}


def test_version_status_and_api_listing(kms):
    admin = kms.kes("admin")
    assert admin.request("GET", "/version").json()["version"] == "0.1.0"

    status = admin.request("GET", "/v1/status")
    assert status.status == 200
    state = status.json()
    assert state["version"] == "0.1.0" and state["os"] == "linux"
    assert state["num_cpu"] >= state["num_cpu_used"] >= 1
    assert isinstance(state["uptime"], (int, float)) and state["uptime"] >= 0
    assert isinstance(state["keystore_latency"], int) and state["keystore_latency"] > 0  # Go Duration, ns
    assert not state.get("keystore_unreachable") and not state.get("keystore_unavailable")

    apis = admin.request("GET", "/v1/api").json()
    listed = {(a["method"], a["path"]) for a in apis}
    for expected in [("GET", "/version"), ("GET", "/v1/status"), ("GET", "/v1/metrics"),
                     ("POST", "/v1/key/create"), ("PUT", "/v1/key/create"), ("POST", "/v1/key/import"),
                     ("GET", "/v1/key/describe"), ("GET", "/v1/key/list"), ("DELETE", "/v1/key/delete"),
                     ("POST", "/v1/key/generate"), ("POST", "/v1/key/decrypt"), ("POST", "/v1/key/encrypt"),
                     ("GET", "/v1/identity/self/describe")]:
        assert expected in listed
    for api in apis:
        assert set(api) == {"method", "path", "max_body", "timeout"} and api["timeout"] > 0
    assert {a["max_body"] for a in apis if a["path"] == "/v1/key/generate"} == {1 << 20}


def test_metrics_are_prometheus_text_with_one_sample_per_family(kms):
    admin = kms.kes("admin")
    admin.request("GET", "/v1/key/describe/no-such-key-for-metrics")  # a 4xx to count
    response = admin.request("GET", "/v1/metrics")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.body.decode()
    samples: dict[str, list[str]] = {}
    families = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            samples.setdefault(name, []).append(line)
    for family, kind in families:
        if kind == "histogram":
            assert f"{family}_count" in samples
        else:
            # kms-go's Metrics() rejects any non-counter family holding several samples.
            assert len(samples[family]) == 1, family
    values = {name: float(lines[0].rsplit(" ", 1)[1]) for name, lines in samples.items() if len(lines) == 1}
    assert values["kes_http_request_success"] >= 1
    assert values["kes_http_request_error"] >= 1
    assert values["kes_http_request_active"] == 1  # this very request
    assert values["kes_system_num_cpu"] >= 1


def test_create_describe_list_delete(kms, ids):
    admin = kms.kes("admin")
    assert admin.request("POST", "/v1/key/create/kes-a").status == 200
    assert admin.request("PUT", "/v1/key/create/kes-b").status == 200
    assert_kes_error(admin.request("POST", "/v1/key/create/kes-a"), 400, "key already exists")
    assert_kes_error(admin.request("POST", "/v1/key/create/bad.name"), 400)

    described = admin.request("GET", "/v1/key/describe/kes-a").json()
    assert described["name"] == "kes-a" and described["algorithm"] == "AES256"
    assert described["created_by"] == ids["admin"]
    created = datetime.datetime.fromisoformat(described["created_at"].replace("Z", "+00:00"))
    assert abs((datetime.datetime.now(datetime.timezone.utc) - created).total_seconds()) < 3600

    assert admin.request("GET", "/v1/key/list/kes-").json() == {"names": ["kes-a", "kes-b"], "continue_at": ""}
    everything = admin.request("GET", "/v1/key/list").json()["names"]  # kms-go's ListKeys with prefix ""
    assert {"kes-a", "kes-b"} <= set(everything) and everything == sorted(everything)
    assert admin.request("GET", "/v1/key/list/*").json()["names"] == everything  # older clients' pattern
    assert admin.request("GET", "/v1/key/list/nothing-like-this").json() == {"names": [], "continue_at": ""}

    assert admin.request("DELETE", "/v1/key/delete/kes-b").status == 200
    assert_kes_error(admin.request("GET", "/v1/key/describe/kes-b"), 404, "key does not exist")
    assert_kes_error(admin.request("DELETE", "/v1/key/delete/kes-b"), 404, "key does not exist")
    assert admin.request("GET", "/v1/key/list/kes-").json()["names"] == ["kes-a"]


def test_generate_decrypt_round_trip_bound_to_context(kms):
    kms.kes("admin").request("POST", "/v1/key/create/kes-bucket")
    crypto = kms.kes("crypto")
    generated = crypto.request("POST", "/v1/key/generate/kes-bucket", {"context": B64_CTX})
    assert generated.status == 200 and generated.headers["content-type"].startswith("application/json")
    dek = generated.json()
    assert set(dek) == {"plaintext", "ciphertext"}
    plaintext, ciphertext = base64.b64decode(dek["plaintext"]), base64.b64decode(dek["ciphertext"])
    assert len(plaintext) == 32 and len(ciphertext) > 32 and plaintext not in ciphertext

    opened = crypto.request("PUT", "/v1/key/decrypt/kes-bucket", {"ciphertext": dek["ciphertext"], "context": B64_CTX})
    assert opened.status == 200 and opened.json() == {"plaintext": dek["plaintext"]}

    other = base64.b64encode(b'{"bucket-a":"bucket-a/other"}').decode()
    assert_kes_error(crypto.request("POST", "/v1/key/decrypt/kes-bucket",
                                    {"ciphertext": dek["ciphertext"], "context": other}),
                     400, "decryption failed: ciphertext is not authentic")
    # kms-go omits an empty context ("omitempty"): that is a different context too.
    assert_kes_error(crypto.request("POST", "/v1/key/decrypt/kes-bucket", {"ciphertext": dek["ciphertext"]}), 400)
    tampered = bytearray(ciphertext)
    tampered[len(tampered) // 2] ^= 0x40
    assert_kes_error(crypto.request("POST", "/v1/key/decrypt/kes-bucket",
                                    {"ciphertext": base64.b64encode(bytes(tampered)).decode(), "context": B64_CTX}),
                     400, "decryption failed: ciphertext is not authentic")


def test_generate_without_body_or_context(kms):
    kms.kes("admin").request("POST", "/v1/key/create/kes-noctx")
    crypto = kms.kes("crypto")
    for body in (None, {}):
        dek = crypto.request("POST", "/v1/key/generate/kes-noctx", body).json()
        opened = crypto.request("POST", "/v1/key/decrypt/kes-noctx", {"ciphertext": dek["ciphertext"]}).json()
        assert opened["plaintext"] == dek["plaintext"]


def test_kes_and_grpc_share_keys_and_ciphertexts(kms):
    crypto_kes, crypto_grpc = kms.kes("crypto"), kms.stub("crypto")
    kms.stub("admin").CreateKey(kms_pb2.CreateKeyRequest(name="shared-key"))
    dek = crypto_kes.request("POST", "/v1/key/generate/shared-key", {"context": B64_CTX}).json()
    via_grpc = crypto_grpc.Decrypt(kms_pb2.DecryptRequest(
        name="shared-key", ciphertext=base64.b64decode(dek["ciphertext"]), context=CTX))
    assert via_grpc.plaintext == base64.b64decode(dek["plaintext"])

    grpc_dek = crypto_grpc.GenerateKey(kms_pb2.GenerateKeyRequest(name="shared-key", context=CTX))
    via_kes = crypto_kes.request("POST", "/v1/key/decrypt/shared-key",
                                 {"ciphertext": base64.b64encode(grpc_dek.ciphertext).decode(), "context": B64_CTX})
    assert base64.b64decode(via_kes.json()["plaintext"]) == grpc_dek.plaintext


def test_import_then_use(kms):
    admin = kms.kes("admin")
    material = bytes(range(32))
    assert admin.request("POST", "/v1/key/import/kes-imported",
                         {"key": base64.b64encode(material).decode(), "cipher": "AES256"}).status == 200
    assert_kes_error(admin.request("POST", "/v1/key/import/kes-imported",
                                   {"key": base64.b64encode(material).decode(), "cipher": "AES256"}),
                     400, "key already exists")
    assert_kes_error(admin.request("POST", "/v1/key/import/kes-short",
                                   {"key": base64.b64encode(b"x" * 16).decode(), "cipher": "AES256"}), 400)
    assert_kes_error(admin.request("POST", "/v1/key/import/kes-chacha",
                                   {"key": base64.b64encode(material).decode(), "cipher": "ChaCha20"}), 400)
    dek = kms.kes("crypto").request("POST", "/v1/key/generate/kes-imported", {"context": B64_CTX}).json()
    assert len(base64.b64decode(dek["plaintext"])) == 32


def test_bad_bodies_are_400(kms):
    kms.kes("admin").request("POST", "/v1/key/create/kes-bodies")
    crypto = kms.kes("crypto")
    assert_kes_error(crypto.request("POST", "/v1/key/generate/kes-bodies", b"{not json"), 400)
    assert_kes_error(crypto.request("POST", "/v1/key/generate/kes-bodies", {"context": "***"}), 400)
    assert_kes_error(crypto.request("POST", "/v1/key/decrypt/kes-bodies", {"context": B64_CTX}), 400)
    assert_kes_error(crypto.request("POST", "/v1/key/decrypt/kes-bodies",
                                    {"ciphertext": base64.b64encode(b"short").decode()}), 400)
    too_big = crypto.request("POST", "/v1/key/generate/kes-bodies", b" " * ((1 << 20) + 1))
    assert_kes_error(too_big, 400)
    assert "limited to 1048576 bytes" in too_big.json()["message"]


def test_missing_key_is_404(kms):
    crypto, admin = kms.kes("crypto"), kms.kes("admin")
    ciphertext = base64.b64encode(b"\0" * 76).decode()
    assert_kes_error(crypto.request("POST", "/v1/key/generate/kes-missing", {}), 404, "key does not exist")
    assert_kes_error(crypto.request("POST", "/v1/key/decrypt/kes-missing", {"ciphertext": ciphertext}),
                     404, "key does not exist")
    assert_kes_error(admin.request("GET", "/v1/key/describe/kes-missing"), 404, "key does not exist")
    assert_kes_error(admin.request("DELETE", "/v1/key/delete/kes-missing"), 404, "key does not exist")


def stranger_client(kms, folder) -> tuple[KesClient, str]:
    """A KES client with a cluster certificate that no policy names, and its identity."""
    from sealstore.tls import identity_of, tls_files
    from tests.pki.certs import stranger
    name = stranger(kms.certs, folder)
    return KesClient(folder, name, kms.kes_address), identity_of(tls_files(folder, name).cert.read_bytes())


def test_policies_apply_to_kes_routes(kms, ids, tmp_path):
    kms.kes("admin").request("POST", "/v1/key/create/kes-policy")
    gateway, crypto = kms.kes("gateway"), kms.kes("crypto")
    stranger, _ = stranger_client(kms, tmp_path)
    denied = "not authorized: insufficient permissions"
    # The gateway describes keys but never sees a data key.
    assert gateway.request("GET", "/v1/key/describe/kes-policy").status == 200
    assert_kes_error(gateway.request("POST", "/v1/key/generate/kes-policy", {"context": B64_CTX}), 403, denied)
    dek = crypto.request("POST", "/v1/key/generate/kes-policy", {"context": B64_CTX}).json()
    assert_kes_error(gateway.request("POST", "/v1/key/decrypt/kes-policy",
                                     {"ciphertext": dek["ciphertext"], "context": B64_CTX}), 403, denied)
    # The crypto worker uses data keys but manages nothing.
    assert_kes_error(crypto.request("POST", "/v1/key/create/kes-by-crypto"), 403, denied)
    assert_kes_error(crypto.request("DELETE", "/v1/key/delete/kes-policy"), 403, denied)
    assert_kes_error(crypto.request("GET", "/v1/key/list"), 403, denied)
    # An identity without a policy gets nothing but /version and its own description.
    assert_kes_error(stranger.request("GET", "/v1/status"), 403, denied)
    assert_kes_error(stranger.request("GET", "/v1/metrics"), 403, denied)
    assert stranger.request("GET", "/version").status == 200
    assert kms.kes("admin").request("GET", "/v1/key/describe/kes-policy").status == 200  # nothing was deleted
    assert f"denied GenerateKey on key 'kes-policy' for identity {ids['gateway']}" in kms.log_text()


def test_describe_self(kms, ids, tmp_path):
    me = kms.kes("crypto").request("GET", "/v1/identity/self/describe").json()
    assert me["identity"] == ids["crypto"] and me["admin"] is False and me["policy"] == "crypto"
    assert "GenerateKey/*" in me["allow"] and me["allow"]["GenerateKey/*"] == {}
    gateway = kms.kes("gateway").request("GET", "/v1/identity/self/describe").json()
    assert "GenerateKey/*" in gateway["deny"]
    admin = kms.kes("admin").request("GET", "/v1/identity/self/describe").json()
    assert admin["identity"] == ids["admin"] and admin["admin"] is True
    client, stranger_id = stranger_client(kms, tmp_path)
    stranger = client.request("GET", "/v1/identity/self/describe").json()
    assert stranger["identity"] == stranger_id and stranger["policy"] == "" and stranger["allow"] == {}


def test_encrypt_is_not_implemented(kms):
    kms.kes("admin").request("POST", "/v1/key/create/kes-enc")
    response = kms.kes("admin").request("POST", "/v1/key/encrypt/kes-enc",
                                        {"plaintext": base64.b64encode(b"hello").decode()})
    assert_kes_error(response, 501)
    assert "generate" in response.json()["message"]


def test_client_certificate_is_required(kms):
    context = ssl.create_default_context(cafile=str(kms.certs / "ca.pem"))
    client = KesClient(kms.certs, "admin", kms.kes_address)
    client.context = context  # trusts the server, presents nothing
    with pytest.raises((ssl.SSLError, ConnectionError)):
        client.request("GET", "/version")
