"""Every cell of the identity x method matrix (sealstore/authz.py POLICY_TABLES), called on a
running cluster with each role's real certificate and a minimal request.

Issue 7 finding 3: any certificate of the cluster CA could call every storage and crypto method
(the storage and kms certificates got plaintext from crypto GetObject; any role could write,
commit, delete or re-key objects on storage), and the gateway could create, import, disable and
delete any key."""
from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sealstore import authz, errors, rpc, tls
from sealstore.v1 import crypto_pb2, crypto_pb2_grpc, kms_pb2, kms_pb2_grpc
from tests.cluster.harness import unique
from tests.pki.certs import CLIENT, issue

CALLERS = ("gateway", "crypto", "admin", "heal")
"""Roles whose certificates may open a connection (clientAuth)."""
NON_CALLERS = ("storage", "kms")
"""Roles whose certificates are refused at the handshake as clients (serverAuth only)."""


def address_of(cluster, role: str) -> str:
    return next(s["address"] for s in cluster.cluster_json()["services"] if s["role"] == role)


def call(channel: grpc.Channel, service: str, method_name: str) -> grpc.StatusCode:
    """Calls `method_name` of `service` with an empty request (an empty stream for client
    streams), reads any response stream to its end, and returns the final status code."""
    method = authz.SERVICES[service].methods_by_name[method_name]
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    path = f"/{authz.SERVICES[service].full_name}/{method_name}"
    serialize, deserialize = request_class.SerializeToString, response_class.FromString
    try:
        if method.client_streaming and method.server_streaming:
            for _ in channel.stream_stream(path, serialize, deserialize)(iter(()), timeout=15):
                pass
        elif method.client_streaming:
            channel.stream_unary(path, serialize, deserialize)(iter(()), timeout=15)
        elif method.server_streaming:
            for _ in channel.unary_stream(path, serialize, deserialize)(request_class(), timeout=15):
                pass
        else:
            channel.unary_unary(path, serialize, deserialize)(request_class(), timeout=15)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def policy_probes(cluster, tmp_path_factory) -> Path:
    """Certificates for the roles that cannot connect: same CA, same role URI, but clientAuth,
    as a mis-issued certificate would be. They check the role tables themselves, behind the
    handshake that refuses the real ones."""
    folder = tmp_path_factory.mktemp("probes")
    for role in NON_CALLERS:
        issue(cluster.data / "certs", folder, f"{role}-probe", role=role, instance=tls.instance_name(role, 9)
              if role != "kms" else "kms", usages=(CLIENT,))
    return folder


def every_cell():
    for service in authz.POLICY_TABLES:
        for role in tls.ROLES:
            for method in authz.methods_of(service):
                yield service, role, method


def test_the_matrix_covers_every_method_and_role():
    cells = list(every_cell())
    assert len(cells) == len(tls.ROLES) * sum(len(authz.methods_of(s)) for s in authz.SERVICES)
    authz.check_tables()


def test_every_cell_of_the_matrix(cluster, policy_probes):
    certs = cluster.data / "certs"
    channels = {}
    wrong = []
    for service, role, method in every_cell():
        target = address_of(cluster, service)
        real = channels.setdefault((role, service), rpc.sync_channel(certs, role, target, server=service))
        code = call(real, service, method)
        expected_allowed = authz.allowed(service, role, method)
        if role in NON_CALLERS:
            if code != grpc.StatusCode.UNAVAILABLE:
                wrong.append((service, role, method, "real certificate", code))
            probe = channels.setdefault((role + "-probe", service),
                                        rpc.sync_channel(policy_probes, f"{role}-probe", target, server=service))
            code = call(probe, service, method)
            if code != grpc.StatusCode.PERMISSION_DENIED:
                wrong.append((service, role, method, "probe certificate", code))
        elif expected_allowed and code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAVAILABLE):
            wrong.append((service, role, method, "allowed", code))
        elif not expected_allowed and code != grpc.StatusCode.PERMISSION_DENIED:
            wrong.append((service, role, method, "denied", code))
    for channel in channels.values():
        channel.close()
    assert wrong == []


def test_denials_are_typed_and_logged_once(cluster, tmp_path):
    # A gateway instance of its own, so no other test's denial shares its log line.
    name = issue(cluster.data / "certs", tmp_path, "gateway-8", role="gateway", usages=(CLIENT,))
    with rpc.sync_channel(tmp_path, name, address_of(cluster, "storage"), server="storage") as channel:
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as exc:
                channel.unary_unary("/sealstore.v1.StorageService/NodeStatus")(b"", timeout=10)
            assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert isinstance(errors.from_rpc_error(exc.value), errors.AccessDenied)
    node = next(s for s in cluster.cluster_json()["services"] if s["role"] == "storage")
    log = Path(node["log"]).read_text()
    lines = [line for line in log.splitlines() if "denied NodeStatus to role gateway instance gateway-8" in line]
    identity = tls.identity_of(tls.tls_files(tmp_path, name).cert.read_bytes())
    assert len(lines) == 1 and identity in lines[0]


def test_health_and_reflection_stay_open_to_every_caller(cluster):
    certs = cluster.data / "certs"
    for service in authz.SERVICES:
        for role in CALLERS:
            with rpc.sync_channel(certs, role, address_of(cluster, service), server=service) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_only_the_gateway_gets_plaintext_from_the_worker(cluster, policy_probes):
    s3, bucket = cluster.s3(), unique("authz")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="secret.txt", Body=b"only for the gateway")
    request = crypto_pb2.GetObjectRequest(bucket=bucket, key="secret.txt")
    crypto = address_of(cluster, "crypto")
    certs = cluster.data / "certs"

    def read(folder: Path, name: str) -> bytes | grpc.StatusCode:
        with rpc.sync_channel(folder, name, crypto, server="crypto") as channel:
            try:
                return b"".join(m.data for m in crypto_pb2_grpc.CryptoServiceStub(channel).GetObject(request, timeout=15)
                                if m.WhichOneof("message") == "data")
            except grpc.RpcError as exc:
                return exc.code()

    assert read(certs, "gateway") == b"only for the gateway"
    assert read(certs, "storage") == grpc.StatusCode.UNAVAILABLE  # refused at the handshake
    assert read(certs, "kms") == grpc.StatusCode.UNAVAILABLE
    assert read(policy_probes, "storage-probe") == grpc.StatusCode.PERMISSION_DENIED
    assert read(policy_probes, "kms-probe") == grpc.StatusCode.PERMISSION_DENIED
    assert read(certs, "admin") == grpc.StatusCode.PERMISSION_DENIED  # the admin cannot decrypt through it
    assert read(certs, "crypto") == grpc.StatusCode.PERMISSION_DENIED


def test_only_the_worker_and_the_admin_write_shards_or_rekey_objects(cluster, policy_probes):
    certs = cluster.data / "certs"
    storage = address_of(cluster, "storage")
    # Written out here, not read from the tables, so a widened table fails this test.
    # The heal service rebuilds copies (conditional commits) and removes dangling ones.
    writers = {"WriteShard": {"crypto", "admin", "heal"}, "CommitObject": {"crypto", "admin", "heal"},
               "AbortUpload": {"crypto", "admin", "heal"}, "UpdateObjectEncryption": {"admin"},
               "DeleteObject": {"gateway", "crypto", "admin", "heal"}}  # the gateway's is S3 DELETE
    for role in CALLERS:
        with rpc.sync_channel(certs, role, storage, server="storage") as channel:
            for method, roles in writers.items():
                code = call(channel, "storage", method)
                assert (code == grpc.StatusCode.PERMISSION_DENIED) != (role in roles), (role, method, code)
    for role in NON_CALLERS:
        with rpc.sync_channel(policy_probes, f"{role}-probe", storage, server="storage") as channel:
            assert all(call(channel, "storage", m) == grpc.StatusCode.PERMISSION_DENIED for m in writers)


def test_the_heal_service_holds_no_keys_and_only_the_admin_drives_it(cluster):
    """The heal role gets nothing from the kms or the worker; its own API answers the admin only."""
    certs = cluster.data / "certs"
    with rpc.sync_channel(certs, "heal", address_of(cluster, "kms"), server="kms") as channel:
        for method in authz.methods_of("kms"):
            assert call(channel, "kms", method) == grpc.StatusCode.PERMISSION_DENIED, method
    with rpc.sync_channel(certs, "heal", address_of(cluster, "crypto"), server="crypto") as channel:
        for method in authz.methods_of("crypto"):
            assert call(channel, "crypto", method) == grpc.StatusCode.PERMISSION_DENIED, method
    for role in ("gateway", "crypto", "heal"):
        with rpc.sync_channel(certs, role, address_of(cluster, "heal"), server="heal") as channel:
            assert call(channel, "heal", "StartHeal") == grpc.StatusCode.PERMISSION_DENIED, role
    with rpc.sync_channel(certs, "admin", address_of(cluster, "heal"), server="heal") as channel:
        assert call(channel, "heal", "ScannerStatus") == grpc.StatusCode.OK


def test_the_gateway_cannot_manage_keys(cluster):
    certs = cluster.data / "certs"
    key = unique("gw-key")
    with rpc.sync_channel(certs, "admin", address_of(cluster, "kms"), server="kms") as admin_channel:
        kms_pb2_grpc.KeyServiceStub(admin_channel).CreateKey(kms_pb2.CreateKeyRequest(name=key))
    with rpc.sync_channel(certs, "gateway", address_of(cluster, "kms"), server="kms") as channel:
        gateway = kms_pb2_grpc.KeyServiceStub(channel)
        assert gateway.DescribeKey(kms_pb2.KeyRequest(name=key)).enabled
        for method, request in (("CreateKey", kms_pb2.CreateKeyRequest(name=unique("gw-new"))),
                                ("ImportKey", kms_pb2.ImportKeyRequest(name=unique("gw-imp"), key=b"k" * 32)),
                                ("DisableKey", kms_pb2.KeyRequest(name=key)),
                                ("DeleteKey", kms_pb2.DeleteKeyRequest(name=key)),
                                ("RotateKey", kms_pb2.KeyRequest(name=key))):
            with pytest.raises(grpc.RpcError) as exc:
                getattr(gateway, method)(request, timeout=10)
            assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED, method
            assert isinstance(errors.from_rpc_error(exc.value), errors.KMSAccessDenied)
        info = gateway.DescribeKey(kms_pb2.KeyRequest(name=key))
        assert info.enabled and info.version == 1  # nothing happened to it


def test_threat_model_prints_the_tables():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "threat-model.md").read_text()
    assert authz.matrix_markdown() in doc
    assert "tests/cluster/test_authz.py" in doc


def test_kms_policy_names_each_instance(cluster):
    policy = json.loads((cluster.data / "kms" / "policy.json").read_text())
    ids = tls.instance_identities(cluster.data / "certs")
    assert policy["admin"] == ids["admin"]
    assert policy["identities"] == {ids["gateway-0"]: "gateway", ids["crypto-0"]: "crypto"}


def test_a_data_folder_of_an_earlier_version_is_upgraded(tmp_path):
    """Old certificates (shared names, both usages) and the old default kms policy (the gateway
    managed keys) are replaced on `sealstore run`; the cluster then works with the new ones."""
    from services.kms import policy as kms_policy
    from tests.cluster.harness import start_cluster, stop_cluster
    from tests.pki.certs import legacy_certificate

    certs = tmp_path / "data" / "certs"
    tls.ensure_dev_pki(certs)
    for path in certs.glob("*.pem"):
        if not path.name.startswith("ca"):
            path.unlink()
    for role in tls.ROLES:
        legacy_certificate(certs, role)
    old = {role: tls.identity_of((certs / f"{role}.pem").read_bytes()) for role in tls.ROLES}
    policy_path = tmp_path / "data" / "kms" / "policy.json"
    policy_path.parent.mkdir(parents=True, mode=0o700)
    policy_path.write_text(json.dumps({"admin": old["admin"], "policies": kms_policy._LEGACY_DEFAULT_POLICIES,
                                       "identities": {old["gateway"]: "gateway", old["crypto"]: "crypto"}}))
    cluster = start_cluster(tmp_path)
    try:
        assert "replaced the certificates of an earlier version" in cluster.output.read_text()
        assert not (certs / "gateway.pem").exists() and not (certs / "storage.pem").exists()
        new = tls.instance_identities(certs)
        policy = json.loads(policy_path.read_text())
        assert policy["admin"] == new["admin"] and old["gateway"] not in policy["identities"]
        with rpc.sync_channel(certs, "gateway", address_of(cluster, "kms"), server="kms") as channel:
            with pytest.raises(grpc.RpcError) as exc:
                kms_pb2_grpc.KeyServiceStub(channel).CreateKey(kms_pb2.CreateKeyRequest(name="upgrade-gw"), timeout=10)
            assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        cluster.cli("key", "create", "upgrade-key")
        s3 = cluster.s3()
        s3.create_bucket(Bucket="upgraded")
        s3.put_object(Bucket="upgraded", Key="o", Body=b"after the upgrade", ServerSideEncryption="aws:kms",
                      SSEKMSKeyId="upgrade-key")
        assert s3.get_object(Bucket="upgraded", Key="o")["Body"].read() == b"after the upgrade"
    finally:
        stop_cluster(cluster)
