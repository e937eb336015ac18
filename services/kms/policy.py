"""Who may call what: KES-style policies over "<Method>/<key name>" resources.

`<data>/kms/policy.json`:

    {"admin": "<identity>",
     "policies": {"<policy>": {"allow": ["GenerateKey/*", ...], "deny": [...]}},
     "identities": {"<identity>": "<policy>"}}

An identity is the hex SHA-256 of the caller certificate's public key. The admin may do
everything. Any other identity gets its one policy: a call is allowed iff no deny pattern
and at least one allow pattern matches its resource (fnmatch globs, case-sensitive).
Unknown identities are denied.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from sealstore.config import write_file_atomic

log = logging.getLogger(__name__)

METHODS = ("CreateKey", "ImportKey", "DescribeKey", "ListKeys", "DeleteKey", "DisableKey", "EnableKey",
           "CancelKeyDeletion", "RotateKey", "SetMinVersion", "ReWrap", "GenerateKey", "Decrypt", "Status")


def resource(method: str, key_name: str = "") -> str:
    """The string policies match: e.g. "GenerateKey/bucket-a", or "Status/" for key-less calls."""
    return f"{method}/{key_name}"


@dataclass(frozen=True)
class Policy:
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    def allows(self, resource_: str) -> bool:
        if any(fnmatchcase(resource_, pattern) for pattern in self.deny):
            return False
        return any(fnmatchcase(resource_, pattern) for pattern in self.allow)


@dataclass(frozen=True)
class PolicyConfig:
    admin: str
    """Identity allowed everything; empty for none."""
    policies: dict[str, Policy]
    identities: dict[str, str]
    """Identity -> name of its policy."""

    @classmethod
    def from_dict(cls, raw: dict) -> "PolicyConfig":
        policies = {name: Policy(tuple(p.get("allow", ())), tuple(p.get("deny", ())))
                    for name, p in (raw.get("policies") or {}).items()}
        identities = {ident.lower(): policy for ident, policy in (raw.get("identities") or {}).items()}
        for ident, policy in identities.items():
            if policy not in policies:
                raise ValueError(f"identity {ident} is assigned to unknown policy {policy!r}")
        return cls(admin=(raw.get("admin") or "").lower(), policies=policies, identities=identities)

    @classmethod
    def load(cls, path: Path) -> "PolicyConfig":
        return cls.from_dict(json.loads(path.read_text()))

    def is_allowed(self, identity: str, method: str, key_name: str = "") -> bool:
        identity = identity.lower()
        if not identity:
            return False
        if self.admin and identity == self.admin:
            return True
        policy_name = self.identities.get(identity)
        if policy_name is None:
            return False
        return self.policies[policy_name].allows(resource(method, key_name))


GENERATED_FIELD = "generated"
"""In a policy.json the kms wrote itself: SHA-256 of the rest of the file. While it matches, the
file is the untouched default and is regenerated at start (new instances, reissued
certificates); once an operator edits the file it no longer matches and the file is kept."""

DATA_KEY_METHODS = ("GenerateKey", "Decrypt", "ReWrap")

# The default of earlier versions, which let the gateway manage every key: replaced on start.
_LEGACY_DEFAULT_POLICIES = {
    "gateway": {"allow": [resource(m, "*") for m in ("CreateKey", "ImportKey", "DescribeKey", "ListKeys",
                                                      "DeleteKey", "DisableKey", "EnableKey", "CancelKeyDeletion",
                                                      "RotateKey", "SetMinVersion", "Status")],
                "deny": [resource(m, "*") for m in DATA_KEY_METHODS]},
    "crypto": {"allow": [resource(m, "*") for m in ("GenerateKey", "Decrypt", "ReWrap", "DescribeKey", "Status")],
               "deny": []},
}


def _digest(raw: dict) -> str:
    body = {k: v for k, v in raw.items() if k != GENERATED_FIELD}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def default_policy(identities: dict[str, str]) -> dict:
    """The default policy.json for a cluster whose certificates are `identities`: instance (or
    role) name -> identity, as `sealstore.tls.instance_identities` returns them.

    Generated from the `kms` table of sealstore/authz.py: the admin is the KES admin, every
    other instance gets its role's methods on every key, roles with no kms rights (storage, kms)
    are not listed and so denied everything. Only the crypto role may see data keys; that is
    also an explicit deny for the gateway, so an operator's widened allow cannot give it one.
    """
    from sealstore import authz
    from sealstore.tls import role_of_instance

    table = authz.POLICY_TABLES["kms"]
    roles = {name: role_of_instance(name) for name in identities}
    admins = sorted(identities[n] for n, r in roles.items() if r == "admin")
    policies = {}
    for role in ("gateway", "crypto"):
        policies[role] = {"allow": [resource(m, "*") for m in METHODS if m in table[role]],
                          "deny": [] if role == "crypto" else [resource(m, "*") for m in DATA_KEY_METHODS]}
    raw = {
        "admin": admins[0] if admins else "",
        "policies": policies,
        "identities": {identities[n]: r for n, r in sorted(roles.items()) if r in policies and table[r]},
    }
    raw[GENERATED_FIELD] = _digest(raw)
    return raw


def ensure_policy_file(path: Path, identities: dict[str, str]) -> PolicyConfig:
    """Loads `path`, first writing the default policy there if it does not exist, is the
    untouched default of other certificates, or is the default of an earlier version."""
    wanted = default_policy(identities)
    if path.exists():
        raw = json.loads(path.read_text())
        untouched = raw.get(GENERATED_FIELD) == _digest(raw)
        legacy = GENERATED_FIELD not in raw and raw.get("policies") == _LEGACY_DEFAULT_POLICIES
        if legacy:
            log.warning("kms policy %s is the default of an earlier version (the gateway could manage every "
                        "key): replaced by today's default", path)
        if (untouched or legacy) and raw != wanted:
            write_file_atomic(path, json.dumps(wanted, indent=2).encode(), mode=0o600)
        elif not untouched and not legacy:
            known = set(raw.get("identities") or {}) | {raw.get("admin") or ""}
            from sealstore import authz
            from sealstore.tls import role_of_instance
            missing = sorted(n for n, i in identities.items()
                             if i not in known and authz.POLICY_TABLES["kms"][role_of_instance(n)])
            if missing:
                log.warning("kms policy %s was edited by hand and names no policy for %s", path, ", ".join(missing))
    else:
        write_file_atomic(path, json.dumps(wanted, indent=2).encode(), mode=0o600)
    return PolicyConfig.load(path)
