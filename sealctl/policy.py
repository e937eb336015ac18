"""`sealstore identity list|of` and `sealstore policy list|show`: the kms's identities and
policies, read back from its policy file.

They read the file the kms reads (`<data>/kms/policy.json`, or `--policy FILE` for a kms started
with its own `--policy`), not the running kms: the kms loads that file once at start, so this
shows what a kms (re)started now enforces, and it works whether or not the kms is running.
The kms writes the default file on its first start; before that there is nothing to show.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sealstore import config

COMMANDS = ("identity", "policy")


def register(subparsers: argparse._SubParsersAction) -> None:
    identity = subparsers.add_parser("identity", help="kms identities (SHA-256 of a certificate's public key)")
    identity_sub = identity.add_subparsers(dest="action", required=True)
    listing = identity_sub.add_parser("list", help="every identity with its policy; the admin is marked")
    _policy_file_option(listing)
    of = identity_sub.add_parser("of", help="the identity of a PEM certificate")
    of.add_argument("cert", help="PEM certificate file")

    policy = subparsers.add_parser("policy", help="kms policies (allow/deny patterns over Method/key)")
    policy_sub = policy.add_subparsers(dest="action", required=True)
    _policy_file_option(policy_sub.add_parser("list", help="every policy and how many identities use it"))
    show = policy_sub.add_parser("show", help="a policy's allow and deny patterns, and who has it")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print the policy as JSON")
    _policy_file_option(show)


def _policy_file_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", type=Path, default=None,
                        help="policy file (default <data>/kms/policy.json)")


def dispatch(args: argparse.Namespace) -> int | None:
    if args.command not in COMMANDS:
        return None
    if args.command == "identity" and args.action == "of":
        return _identity_of(Path(args.cert))
    from services.kms.policy import PolicyConfig
    path = args.policy or config.data_dir() / "kms" / "policy.json"
    if not path.exists():
        return _fail(f"no policy file at {path}: the kms writes it on its first start "
                     "(start a cluster with `make run`, or pass --policy FILE)")
    try:
        policy = PolicyConfig.load(path)
    except (ValueError, OSError) as exc:
        return _fail(f"cannot read the policy file {path}: {exc}")
    if args.command == "identity":
        return _identity_list(policy)
    if args.action == "list":
        return _policy_list(policy)
    return _policy_show(policy, args.name, as_json=args.json)


def _fail(message: str) -> int:
    print(f"sealstore: {message}", file=sys.stderr)
    return 1


def _role_names() -> dict[str, str]:
    """identity -> instance name (kms, crypto-0, storage-2...) of the cluster's dev certificates,
    to make the listing readable."""
    from sealstore import tls
    certs = config.certs_dir(config.data_dir())
    try:
        return {identity: instance for instance, identity in tls.instance_identities(certs).items()}
    except (OSError, ValueError):
        return {}  # no dev PKI here (certificates from elsewhere): identities stay bare


def _identity_of(cert: Path) -> int:
    from sealstore import tls
    try:
        print(tls.identity_of(cert.read_bytes()))
    except OSError as exc:
        return _fail(f"cannot read {cert}: {exc.strerror}")
    except ValueError:
        return _fail(f"{cert} is not a PEM certificate")
    return 0


def _identity_list(policy) -> int:
    roles = _role_names()
    rows = []
    if policy.admin:
        rows.append((policy.admin, "(admin: everything)", roles.get(policy.admin, "")))
    for identity, policy_name in sorted(policy.identities.items(), key=lambda item: (item[1], item[0])):
        if identity != policy.admin:
            rows.append((identity, policy_name, roles.get(identity, "")))
    if not rows:
        print("no identities: every call is denied")
    for identity, policy_name, role in rows:
        print(f"{identity}  {policy_name:<20} {('certificate ' + role) if role else ''}".rstrip())
    return 0


def _policy_list(policy) -> int:
    users: dict[str, int] = {}
    for policy_name in policy.identities.values():
        users[policy_name] = users.get(policy_name, 0) + 1
    for name in sorted(policy.policies):
        p = policy.policies[name]
        print(f"{name:<20} {len(p.allow)} allow, {len(p.deny)} deny, {users.get(name, 0)} identities")
    return 0


def _policy_show(policy, name: str, *, as_json: bool) -> int:
    found = policy.policies.get(name)
    if found is None:
        known = ", ".join(sorted(policy.policies)) or "none"
        return _fail(f"no policy {name!r} (policies: {known})")
    holders = sorted(identity for identity, policy_name in policy.identities.items() if policy_name == name)
    if as_json:
        print(json.dumps({"name": name, "allow": list(found.allow), "deny": list(found.deny),
                          "identities": holders}, indent=2))
        return 0
    roles = _role_names()
    print(f"policy {name}")
    print("  allow:")
    for pattern in found.allow or ("(nothing)",):
        print(f"    {pattern}")
    print("  deny:")
    for pattern in found.deny or ("(nothing)",):
        print(f"    {pattern}")
    print("  identities:")
    for identity in holders or ("(none)",):
        role = roles.get(identity)
        print(f"    {identity}" + (f"  certificate {role}" if role else ""))
    return 0
