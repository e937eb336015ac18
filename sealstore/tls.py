"""The development PKI: a CA and one certificate per service, made with `cryptography`.

Every gRPC channel is mutually authenticated with these. A caller's identity, as KES
defines it, is the hex SHA-256 of its certificate's DER SubjectPublicKeyInfo.
"""
from __future__ import annotations

import datetime
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sealstore.config import write_file_atomic

ROLES = ("kms", "crypto", "gateway", "storage", "admin")
"""One certificate per role; `admin` is the command line's client certificate."""

DEFAULT_SANS = ("localhost", "127.0.0.1", "kms", "crypto", "gateway")
VALIDITY = datetime.timedelta(days=825)


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        return self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()


def tls_files(certs: Path, role: str) -> TlsFiles:
    return TlsFiles(certs / "ca.pem", certs / f"{role}.pem", certs / f"{role}-key.pem")


def identity_of(cert_pem: bytes) -> str:
    """KES identity: hex SHA-256 of the certificate's DER-encoded public key info."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san(names: tuple[str, ...]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def ensure_dev_pki(certs: Path, extra_sans: tuple[str, ...] = ()) -> None:
    """Creates the CA and every role's certificate under `certs` unless they exist (idempotent)."""
    certs.mkdir(parents=True, exist_ok=True)
    ca_cert_path, ca_key_path = certs / "ca.pem", certs / "ca-key.pem"
    now = datetime.datetime.now(datetime.timezone.utc)
    if ca_cert_path.exists() and ca_key_path.exists():
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sealstore dev CA")])
        ca_cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
                   .sign(ca_key, hashes.SHA256()))
        write_file_atomic(ca_key_path, _key_pem(ca_key), mode=0o600)
        write_file_atomic(ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    sans = tuple(dict.fromkeys(DEFAULT_SANS + extra_sans))
    for role in ROLES:
        files = tls_files(certs, role)
        if files.cert.exists() and files.key.exists():
            continue
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"sealstore-{role}")]))
                .issuer_name(ca_cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(_san(sans), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        write_file_atomic(files.key, _key_pem(key), mode=0o600)
        write_file_atomic(files.cert, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def role_identities(certs: Path) -> dict[str, str]:
    """Each role's identity, for the kms policy configuration."""
    return {role: identity_of(tls_files(certs, role).cert.read_bytes()) for role in ROLES}
