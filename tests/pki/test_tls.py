"""The dev PKI and the name checks on every channel, with real gRPC servers and handshakes.

Issue 7 finding 3: every role's certificate carried the same names (localhost, 127.0.0.1, kms,
crypto, gateway) and both usages, so any role could answer as the kms or the crypto worker."""
from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from sealstore import rpc, tls
from tests.pki.certs import CLIENT, SERVER, issue, legacy_certificate, new_ca


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pki") / "certs"
    tls.ensure_dev_pki(folder, layout=tls.PkiLayout(storage_nodes=3, crypto_workers=2, gateways=2))
    return folder


def load(certs: Path, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(tls.tls_files(certs, name).cert.read_bytes())


def sans(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = {str(n) for n in ext.get_values_for_type(x509.DNSName)} | \
            {str(n) for n in ext.get_values_for_type(x509.IPAddress)}
    return names, set(ext.get_values_for_type(x509.UniformResourceIdentifier))


def usages(cert: x509.Certificate) -> set:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_each_instance_has_its_own_key_and_only_its_own_names(certs):
    expected = {
        "kms": ({"kms", "localhost", "127.0.0.1"}, {SERVER}),
        "crypto-0": ({"crypto", "crypto-0"}, {SERVER, CLIENT}),
        "crypto-1": ({"crypto", "crypto-1"}, {SERVER, CLIENT}),
        "storage-0": ({"storage", "storage-0"}, {SERVER}),
        "storage-2": ({"storage", "storage-2"}, {SERVER}),
        "gateway-0": (set(), {CLIENT}),
        "gateway-1": (set(), {CLIENT}),
        "admin": (set(), {CLIENT}),
        # A server for its own API, a client of the storage nodes.
        "heal-0": ({"heal", "heal-0"}, {SERVER, CLIENT}),
    }
    for name, (dns, eku) in expected.items():
        cert = load(certs, name)
        names, uris = sans(cert)
        role = tls.role_of_instance(name)
        assert names == dns, name
        assert uris == {f"spiffe://sealstore/{role}/{name}"}, name
        assert usages(cert) == eku, name
        assert tls.principal_of(tls.tls_files(certs, name).cert.read_bytes()).role == role
    identities = tls.instance_identities(certs)
    assert len(identities) == 10 and len(set(identities.values())) == 10  # no key shared


def test_a_role_name_means_its_first_instance(certs):
    assert tls.tls_files(certs, "storage").cert.name == "storage-0.pem"
    assert tls.tls_files(certs, "crypto").cert.name == "crypto-0.pem"
    assert tls.tls_files(certs, "kms").cert.name == "kms.pem"
    assert tls.tls_files(certs, "heal").cert.name == "heal-0.pem"


def test_identities_file_lists_every_instance_for_the_kms(certs, tmp_path):
    bundle = tmp_path / "kms-bundle"
    written = tls.write_bundle(certs, "kms", bundle)
    assert sorted(p.name for p in written) == ["ca.pem", "identities.json", "kms-key.pem", "kms.pem"]
    assert not (bundle / "certs" / "ca-key.pem").exists()
    # The kms container sees only its own certificate, yet knows every instance's identity.
    assert tls.instance_identities(bundle / "certs") == tls.instance_identities(certs)
    storage = tls.write_bundle(certs, "storage-1", tmp_path / "s1")
    assert sorted(p.name for p in storage) == ["ca.pem", "storage-1-key.pem", "storage-1.pem"]


def test_certificates_of_an_earlier_version_are_replaced(tmp_path):
    certs = tmp_path / "certs"
    tls.ensure_dev_pki(certs)
    ca_before = (certs / "ca.pem").read_bytes()
    for role in ("storage", "gateway", "crypto", "kms"):
        legacy_certificate(certs, role)
    old_kms = (certs / "kms.pem").read_bytes()
    removed = tls.ensure_dev_pki(certs)
    assert set(removed) >= {"storage.pem", "storage-key.pem", "gateway.pem", "crypto.pem", "kms.pem"}
    assert not (certs / "storage.pem").exists() and not (certs / "gateway.pem").exists()
    assert (certs / "kms.pem").read_bytes() != old_kms  # reissued with its own names
    assert sans(load(certs, "kms"))[1] == {"spiffe://sealstore/kms/kms"}
    assert (certs / "ca.pem").read_bytes() == ca_before  # same CA: nothing else to redistribute
    assert tls.legacy_certificates(certs) == []


class Server:
    """A real gRPC server with health, presenting one certificate."""

    def __init__(self, certs: Path, name: str):
        self.certs, self.name = certs, name

    async def __aenter__(self):
        self.server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), self.server)
        self.port = self.server.add_secure_port("127.0.0.1:0", rpc.server_credentials(self.certs, self.name))
        await self.server.start()
        return self

    async def __aexit__(self, *exc):
        await self.server.stop(0)


async def health_code(channel: grpc.aio.Channel) -> grpc.StatusCode:
    try:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()
    finally:
        await channel.close()


def test_a_storage_certificate_cannot_pose_as_the_kms_or_the_worker(certs):
    async def go():
        async with Server(certs, "storage-1") as impostor:
            target = f"127.0.0.1:{impostor.port}"
            assert await health_code(rpc.aio_channel(certs, "admin", target, server="storage")) == grpc.StatusCode.OK
            for server in ("kms", "crypto"):
                for client in ("admin", "gateway-1", "crypto-0"):
                    code = await health_code(rpc.aio_channel(certs, client, target, server=server))
                    assert code == grpc.StatusCode.UNAVAILABLE, (server, client)
        async with Server(certs, "crypto-1") as worker:  # nor a worker as the kms or a storage node
            target = f"127.0.0.1:{worker.port}"
            assert await health_code(rpc.aio_channel(certs, "gateway", target, server="crypto")) == grpc.StatusCode.OK
            for server in ("kms", "storage"):
                assert await health_code(rpc.aio_channel(certs, "gateway", target, server=server)) == \
                    grpc.StatusCode.UNAVAILABLE
    asyncio.run(go())


def test_client_only_certificates_cannot_serve(certs, tmp_path):
    # A gateway certificate with a stolen service name still lacks serverAuth.
    name = issue(certs, tmp_path, "gateway-5", role="gateway", dns=("kms",), usages=(CLIENT,))

    async def go():
        async with Server(tmp_path, name) as fake_kms:
            code = await health_code(rpc.aio_channel(certs, "crypto-0", f"127.0.0.1:{fake_kms.port}", server="kms"))
            assert code == grpc.StatusCode.UNAVAILABLE
    asyncio.run(go())


def test_server_only_certificates_cannot_call(certs):
    async def go():
        async with Server(certs, "storage-0") as node:
            for client in ("storage-1", "kms"):
                code = await health_code(rpc.aio_channel(certs, client, f"127.0.0.1:{node.port}", server="storage"))
                assert code == grpc.StatusCode.UNAVAILABLE, client
    asyncio.run(go())


def test_certificates_of_another_ca_are_refused(certs, tmp_path):
    other = new_ca(tmp_path / "other-ca")
    issue(other, other, "admin", role="admin", usages=(CLIENT,))
    issue(other, other, "kms", role="kms", dns=("kms",), usages=(SERVER,))

    async def go():
        async with Server(certs, "kms") as real_kms:  # a client of another CA, same role and names
            code = await health_code(rpc.aio_channel(other, "admin", f"127.0.0.1:{real_kms.port}", server="kms"))
            assert code == grpc.StatusCode.UNAVAILABLE
        async with Server(other, "kms") as fake_kms:  # a server of another CA with the right name
            code = await health_code(rpc.aio_channel(certs, "crypto-0", f"127.0.0.1:{fake_kms.port}", server="kms"))
            assert code == grpc.StatusCode.UNAVAILABLE
    asyncio.run(go())


def test_a_channel_must_name_the_service_it_expects(certs):
    with pytest.raises(TypeError):
        rpc.sync_channel(certs, "admin", "127.0.0.1:1")  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        rpc.sync_channel(certs, "admin", "127.0.0.1:1", server="gateway")
