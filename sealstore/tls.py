"""The development PKI: a CA and one certificate per service instance, made with `cryptography`.

Every gRPC channel is mutually authenticated with these. Each certificate says who holds it in
two ways:
- a URI SAN `spiffe://sealstore/<role>/<instance>`: the role the servers authorise calls by
  (sealstore/authz.py);
- its public key: the kms's KES identity (hex SHA-256 of the DER SubjectPublicKeyInfo), which
  policy.json names.

Server roles (kms, crypto, storage, heal) carry their service name and instance name as DNS SANs
and serverAuth; client-only roles (gateway, admin) carry no DNS name and only clientAuth. Clients
check the service name on every connection (sealstore/rpc.py), so no certificate but the kms's
can answer as "kms", and so on. Only the kms also carries `localhost`/`127.0.0.1` (and any
`extra_sans`): its KES-compatible HTTPS API is dialled by address by MinIO and kms-go clients,
which cannot override the name they check.
"""
from __future__ import annotations

import datetime
import functools
import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sealstore.config import write_file_atomic

ROLES = ("kms", "crypto", "gateway", "storage", "admin", "heal")
"""`admin` is the command line's client certificate (key management, heal requests, rewrap);
`heal` the in-cluster heal service (a server for its own API, a client of the storage nodes)."""
SINGLE_INSTANCE_ROLES = ("kms", "admin")
"""Roles with one instance, named as the role; the others are `<role>-<index>` from 0."""
SERVER_ROLES = ("kms", "crypto", "storage", "heal")
CLIENT_ROLES = ("crypto", "gateway", "admin", "heal")
"""Roles that dial other services. The kms and storage nodes call nobody: no clientAuth."""
SERVICE_NAMES = {"kms": "kms", "crypto": "crypto", "storage": "storage", "heal": "heal"}
"""The DNS name a client expects in the certificate of each kind of server."""
KMS_LOCAL_SANS = ("localhost", "127.0.0.1")
SPIFFE_PREFIX = "spiffe://sealstore/"
IDENTITIES_FILE = "identities.json"
"""<certs>/identities.json: instance -> role and KES identity (public), for the kms's default
policy where the kms cannot see the other instances' certificates (containers)."""
VALIDITY = datetime.timedelta(days=825)
_INSTANCE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class PkiLayout:
    """How many instances of each multi-instance role get a certificate."""

    storage_nodes: int = 4
    crypto_workers: int = 1
    gateways: int = 1
    healers: int = 1

    def instances(self) -> list[tuple[str, str]]:
        """(role, instance name) of every certificate, in a stable order."""
        counts = {"crypto": self.crypto_workers, "gateway": self.gateways, "storage": self.storage_nodes,
                  "heal": self.healers}
        out: list[tuple[str, str]] = []
        for role in ROLES:
            if role in SINGLE_INSTANCE_ROLES:
                out.append((role, role))
            else:
                out.extend((role, instance_name(role, i)) for i in range(counts[role]))
        return out


def instance_name(role: str, index: int = 0) -> str:
    return role if role in SINGLE_INSTANCE_ROLES else f"{role}-{index}"


def role_of_instance(name: str) -> str:
    """`storage-2` -> `storage`; a role name is its own role."""
    role = name if name in ROLES else name.rsplit("-", 1)[0]
    if role not in ROLES:
        raise ValueError(f"{name!r} is not an instance of any role ({', '.join(ROLES)})")
    return role


def spiffe_id(role: str, instance: str) -> str:
    return f"{SPIFFE_PREFIX}{role}/{instance}"


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        return self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()


def tls_files(certs: Path, name: str) -> TlsFiles:
    """The CA and the certificate/key of instance `name`; a bare role name (`storage`, `crypto`)
    means that role's first instance (`storage-0`), so role-level callers keep working."""
    if not (certs / f"{name}.pem").exists() and name in ROLES and name not in SINGLE_INSTANCE_ROLES:
        name = instance_name(name, 0)
    return TlsFiles(certs / "ca.pem", certs / f"{name}.pem", certs / f"{name}-key.pem")


def identity_of(cert_pem: bytes) -> str:
    """KES identity: hex SHA-256 of the certificate's DER-encoded public key info."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who a verified certificate says it is."""

    role: str
    instance: str
    identity: str


@functools.lru_cache(maxsize=512)
def principal_of(cert_pem: bytes) -> Principal | None:
    """The role and instance in the certificate's `spiffe://sealstore/<role>/<instance>` URI SAN
    (None without exactly one such SAN naming a known role). Only meaningful for a certificate
    the TLS handshake verified against the cluster CA."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
            .get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        return None
    ours = [u for u in uris if u.startswith(SPIFFE_PREFIX)]
    if len(ours) != 1:
        return None
    role, _, instance = ours[0][len(SPIFFE_PREFIX):].partition("/")
    if role not in ROLES or not _INSTANCE_NAME.match(instance) or role_of_instance(instance) != role:
        return None
    return Principal(role, instance, identity_of(cert_pem))


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _general_names(role: str, instance: str, extra_sans: tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id(role, instance))]
    if role not in SERVER_ROLES:
        return names
    dns = [SERVICE_NAMES[role], instance]
    if role == "kms":
        dns += [*KMS_LOCAL_SANS, *extra_sans]
    for name in dict.fromkeys(dns):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            names.append(x509.DNSName(name))
    return names


def _usages(role: str) -> list:
    return ([ExtendedKeyUsageOID.SERVER_AUTH] if role in SERVER_ROLES else []) + \
           ([ExtendedKeyUsageOID.CLIENT_AUTH] if role in CLIENT_ROLES else [])


def _issue(ca_cert: x509.Certificate, ca_key, role: str, instance: str, extra_sans: tuple[str, ...],
           now: datetime.datetime) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"sealstore {role} {instance}")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, True, False, False, False, False), critical=True)
            .add_extension(x509.SubjectAlternativeName(_general_names(role, instance, extra_sans)), critical=False)
            .add_extension(x509.ExtendedKeyUsage(_usages(role)), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _current(path: Path, role: str, instance: str, extra_sans: tuple[str, ...]) -> bool:
    """Whether the certificate at `path` is of today's layout for this instance."""
    pem = path.read_bytes()
    principal = principal_of(pem)
    if principal is None or (principal.role, principal.instance) != (role, instance):
        return False
    if role == "kms" and extra_sans:
        sans = x509.load_pem_x509_certificate(pem).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        have = {str(v) for v in sans.get_values_for_type(x509.DNSName)} | \
               {str(v) for v in sans.get_values_for_type(x509.IPAddress)}
        return set(extra_sans) <= have
    return True


def legacy_certificates(certs: Path) -> list[Path]:
    """Certificates in `certs` from before role identities (no sealstore URI SAN): one shared
    set of names and both usages for every role. They must not stay usable."""
    found = []
    for path in sorted(certs.glob("*.pem")):
        if path.name == "ca.pem" or path.name.endswith("-key.pem") or path.name.startswith("ca-"):
            continue
        try:
            if principal_of(path.read_bytes()) is None:
                found.append(path)
        except ValueError:
            continue
    return found


def ensure_dev_pki(certs: Path, extra_sans: tuple[str, ...] = (), layout: PkiLayout = PkiLayout()) -> list[str]:
    """Creates the CA and a certificate for every instance of `layout` under `certs` unless they
    exist (idempotent), and writes identities.json. Certificates of the old layout (no role URI)
    are deleted and reissued from the same CA: this is a dev PKI, and leaving them would keep
    every role able to pose as every other. Returns the file names it deleted."""
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
    removed = []
    for path in legacy_certificates(certs):
        for stale in (path, path.with_name(path.stem + "-key.pem")):
            if stale.exists():
                stale.unlink()
                removed.append(stale.name)
    extra = tuple(dict.fromkeys(extra_sans))
    for role, instance in layout.instances():
        files = tls_files(certs, instance)
        if files.cert.exists() and files.key.exists() and _current(files.cert, role, instance, extra):
            continue
        cert_pem, key_pem = _issue(ca_cert, ca_key, role, instance, extra, now)
        write_file_atomic(files.key, key_pem, mode=0o600)
        write_file_atomic(files.cert, cert_pem, mode=0o644)
    write_identities(certs)
    return removed


def instance_identities(certs: Path) -> dict[str, str]:
    """instance name -> KES identity of every instance certificate in `certs`; where the
    certificates are not there (a container that holds only its own), from identities.json."""
    found = instance_identities_from_files(certs)
    listed = certs / IDENTITIES_FILE
    if listed.exists():
        for instance, entry in json.loads(listed.read_text()).items():
            found.setdefault(instance, entry["identity"])
    return found


def write_identities(certs: Path, target: Path | None = None) -> None:
    entries = {name: {"role": role_of_instance(name), "identity": identity}
               for name, identity in instance_identities_from_files(certs).items()}
    write_file_atomic(target or certs / IDENTITIES_FILE, json.dumps(entries, indent=2).encode(), mode=0o644)


def instance_identities_from_files(certs: Path) -> dict[str, str]:
    found = {}
    for path in sorted(certs.glob("*.pem")):
        if path.name == "ca.pem" or path.name.endswith("-key.pem"):
            continue
        try:
            principal = principal_of(path.read_bytes())
        except ValueError:
            continue
        if principal is not None and path.stem == principal.instance:
            found[principal.instance] = principal.identity
    return found


def role_identities(certs: Path) -> dict[str, str]:
    """Each role's identity (its first instance's), for tests and readable listings."""
    out: dict[str, str] = {}
    for name, identity in instance_identities(certs).items():
        out.setdefault(role_of_instance(name), identity)
    return out


def write_bundle(certs: Path, instance: str, out: Path) -> list[Path]:
    """What one container of `instance` may hold, copied into `out/certs/`: the CA certificate
    (never its key) and that instance's certificate and key; the kms also gets identities.json
    (public) to write its default policy. Returns the files written."""
    files = tls_files(certs, instance)
    target = out / "certs"
    written = []
    for source, mode in ((files.ca, 0o644), (files.cert, 0o644), (files.key, 0o600)):
        write_file_atomic(target / source.name, source.read_bytes(), mode=mode)
        written.append(target / source.name)
    if role_of_instance(instance) == "kms":
        write_identities(certs, target / IDENTITIES_FILE)
        written.append(target / IDENTITIES_FILE)
    return written


HTTPS_DIR = "https"
"""<certs>/https/: the gateway's S3-over-HTTPS certificate. Not in <certs> itself, whose *.pem are
the service identities (identities.json, the legacy sweep): this one names no role and so
authenticates to no service; it only lets S3 clients that trust ca.pem check the endpoint."""
GATEWAY_HTTPS_SANS = ("localhost", "127.0.0.1")


def https_files(certs: Path) -> tuple[Path, Path]:
    """The dev CA's certificate and key for the gateway's HTTPS endpoint."""
    folder = certs / HTTPS_DIR
    return folder / "gateway.pem", folder / "gateway-key.pem"


def ensure_gateway_https_certificate(certs: Path, extra_sans: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """Issues the gateway's HTTPS certificate from the dev CA (made by ensure_dev_pki) unless one
    with these names, from this CA, is already there. serverAuth only, no sealstore identity."""
    cert_path, key_path = https_files(certs)
    names = tuple(dict.fromkeys((*GATEWAY_HTTPS_SANS, *extra_sans)))
    ca_cert = x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes())
    if cert_path.exists() and key_path.exists():
        current = x509.load_pem_x509_certificate(cert_path.read_bytes())
        sans = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        have = {str(v) for v in sans.get_values_for_type(x509.DNSName)} | \
               {str(v) for v in sans.get_values_for_type(x509.IPAddress)}
        now = datetime.datetime.now(datetime.timezone.utc)
        if current.issuer == ca_cert.subject and set(names) <= have and current.not_valid_after_utc > now:
            return cert_path, key_path
    ca_key = serialization.load_pem_private_key((certs / "ca-key.pem").read_bytes(), None)
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    general: list[x509.GeneralName] = []
    for name in names:
        try:
            general.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            general.append(x509.DNSName(name))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sealstore S3 gateway (HTTPS)")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, True, False, False, False, False), critical=True)
            .add_extension(x509.SubjectAlternativeName(general), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomic(key_path, _key_pem(key), mode=0o600)
    write_file_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert_path, key_path
