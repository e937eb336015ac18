"""Certificates the dev PKI would never issue, made for tests: extra instances, a role with a
usage it should not have, or a certificate from another CA."""
from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sealstore import tls

SERVER, CLIENT = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def new_ca(folder: Path, name: str = "another CA") -> Path:
    """A self-signed CA of its own in `folder` (ca.pem, ca-key.pem); returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256()))
    (folder / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "ca-key.pem").write_bytes(_pem(key))
    return folder


def issue(ca_folder: Path, out: Path, name: str, *, role: str | None, instance: str | None = None,
          dns: tuple[str, ...] = (), usages: tuple = (SERVER, CLIENT)) -> str:
    """Writes out/<name>.pem and out/<name>-key.pem signed by the CA in `ca_folder` (and copies its
    ca.pem to out/ if out has none); the URI SAN names `role`/`instance` unless role is None.
    Returns `name`, for tls_files(out, name)."""
    ca_key = serialization.load_pem_private_key((ca_folder / "ca-key.pem").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((ca_folder / "ca.pem").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    if role is not None:
        names.append(x509.UniformResourceIdentifier(tls.spiffe_id(role, instance or name)))
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test {name}")]))
               .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / f"{name}-key.pem").write_bytes(_pem(key))
    if not (out / "ca.pem").exists():
        (out / "ca.pem").write_bytes((ca_folder / "ca.pem").read_bytes())
    return name


def stranger(cluster_certs: Path, out: Path) -> str:
    """A client certificate from the cluster CA that no policy names (a gateway instance the
    cluster never configured): it may connect, and must be allowed nothing but health."""
    return issue(cluster_certs, out, "gateway-99", role="gateway", usages=(CLIENT,))


def legacy_certificate(certs: Path, role: str) -> None:
    """<certs>/<role>.pem as ensure_dev_pki made them before role identities: signed by the
    cluster CA, every service name, both usages, no role URI."""
    ca_key = serialization.load_pem_private_key((certs / "ca-key.pem").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    names = [x509.DNSName(n) for n in ("localhost", "kms", "crypto", "gateway")]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"sealstore-{role}")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([SERVER, CLIENT]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (certs / f"{role}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (certs / f"{role}-key.pem").write_bytes(_pem(key))
