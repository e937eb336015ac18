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

import json
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from sealstore.config import write_file_atomic

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


def default_policy(identities: dict[str, str]) -> dict:
    """The default policy.json for a cluster whose role identities are `identities`
    (as `sealstore.tls.role_identities` returns them).

    The gateway manages keys but can never see or re-wrap a data key; the crypto worker only
    generates and decrypts data keys (and may re-wrap them). The rewrap walker runs as admin.
    """
    return {
        "admin": identities["admin"],
        "policies": {
            "gateway": {
                "allow": [resource(m, "*") for m in ("CreateKey", "ImportKey", "DescribeKey", "ListKeys",
                                                      "DeleteKey", "DisableKey", "EnableKey", "CancelKeyDeletion",
                                                      "RotateKey", "SetMinVersion", "Status")],
                "deny": [resource("GenerateKey", "*"), resource("Decrypt", "*"), resource("ReWrap", "*")],
            },
            "crypto": {
                "allow": [resource(m, "*") for m in ("GenerateKey", "Decrypt", "ReWrap", "DescribeKey", "Status")],
                "deny": [],
            },
        },
        "identities": {
            identities["gateway"]: "gateway",
            identities["crypto"]: "crypto",
        },
    }


def ensure_policy_file(path: Path, identities: dict[str, str]) -> PolicyConfig:
    """Loads `path`, first writing the default policy there if it does not exist."""
    if not path.exists():
        write_file_atomic(path, json.dumps(default_policy(identities), indent=2).encode(), mode=0o600)
    return PolicyConfig.load(path)
