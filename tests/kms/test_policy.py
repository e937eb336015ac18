"""KES-style allow/deny matching and the default policy the kms writes on first start."""
from __future__ import annotations

import json
import stat

import pytest

from services.kms.policy import Policy, PolicyConfig, default_policy, ensure_policy_file, resource

IDS = {role: role[0] * 64 for role in ("kms", "crypto", "gateway", "storage", "admin")}
# e.g. crypto -> "ccc...c", gateway -> "ggg...g" (not hex, but identities are opaque strings here)


def test_resource_strings():
    assert resource("GenerateKey", "bucket-a") == "GenerateKey/bucket-a"
    assert resource("Status") == "Status/"


def test_deny_wins_over_allow():
    policy = Policy(allow=("*",), deny=("Decrypt/secret-*",))
    assert policy.allows("Decrypt/public")
    assert not policy.allows("Decrypt/secret-1")


def test_nothing_allowed_without_allow_patterns():
    assert not Policy(allow=(), deny=()).allows("Status/")


def test_patterns_are_case_sensitive_globs():
    policy = Policy(allow=("GenerateKey/bucket-?",))
    assert policy.allows("GenerateKey/bucket-a")
    assert not policy.allows("GenerateKey/bucket-ab")
    assert not policy.allows("generatekey/bucket-a")


def test_admin_may_do_everything_unknown_nothing():
    config = PolicyConfig.from_dict({"admin": "AA" * 32, "policies": {}, "identities": {}})
    assert config.is_allowed("aa" * 32, "DeleteKey", "anything")
    assert not config.is_allowed("bb" * 32, "Status")
    assert not config.is_allowed("", "Status")


def test_empty_admin_matches_nobody():
    config = PolicyConfig.from_dict({"admin": "", "policies": {}, "identities": {}})
    assert not config.is_allowed("", "Status")


def test_identity_bound_to_unknown_policy_is_refused_at_load():
    with pytest.raises(ValueError):
        PolicyConfig.from_dict({"admin": "", "policies": {}, "identities": {"ab" * 32: "nope"}})


def test_default_policy_separates_gateway_and_crypto():
    config = PolicyConfig.from_dict(default_policy(IDS))
    gw, crypto = IDS["gateway"], IDS["crypto"]
    # Issue 7 finding 3: the gateway could create, import, disable and delete any key.
    assert config.is_allowed(gw, "DescribeKey", "bucket-a")
    for method in ("CreateKey", "ImportKey", "DeleteKey", "DisableKey", "EnableKey", "CancelKeyDeletion",
                   "RotateKey", "SetMinVersion", "ListKeys", "Status", "GenerateKey", "Decrypt", "ReWrap"):
        assert not config.is_allowed(gw, method, "bucket-a"), method

    for method in ("GenerateKey", "Decrypt"):
        assert config.is_allowed(crypto, method, "bucket-a")
    for method in ("CreateKey", "ImportKey", "DeleteKey", "DisableKey", "EnableKey", "ListKeys", "Status",
                   "DescribeKey", "ReWrap"):
        assert not config.is_allowed(crypto, method, "bucket-a"), method

    assert config.is_allowed(IDS["admin"], "GenerateKey", "bucket-a")
    assert not config.is_allowed(IDS["storage"], "Status")
    assert not config.is_allowed(IDS["kms"], "DescribeKey", "bucket-a")


def test_default_policy_lists_every_instance():
    ids = {"admin": "a" * 64, "kms": "k" * 64, "crypto-0": "c" * 64, "crypto-1": "d" * 64,
           "gateway-0": "g" * 64, "gateway-1": "h" * 64, "storage-0": "s" * 64}
    raw = default_policy(ids)
    assert raw["identities"] == {"c" * 64: "crypto", "d" * 64: "crypto", "g" * 64: "gateway", "h" * 64: "gateway"}
    config = PolicyConfig.from_dict(raw)
    assert config.is_allowed("d" * 64, "Decrypt", "k1") and not config.is_allowed("h" * 64, "Decrypt", "k1")


def test_untouched_default_follows_new_certificates(tmp_path):
    path = tmp_path / "policy.json"
    ensure_policy_file(path, IDS)
    reissued = {**IDS, "gateway": "f" * 64}
    config = ensure_policy_file(path, reissued)
    assert config.identities.get("f" * 64) == "gateway" and IDS["gateway"] not in config.identities


def test_earlier_versions_default_is_replaced(tmp_path):
    from services.kms import policy as kms_policy
    legacy = {"admin": IDS["admin"], "policies": kms_policy._LEGACY_DEFAULT_POLICIES,
              "identities": {IDS["gateway"]: "gateway", IDS["crypto"]: "crypto"}}
    assert PolicyConfig.from_dict(legacy).is_allowed(IDS["gateway"], "DeleteKey", "k")
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(legacy))
    config = ensure_policy_file(path, IDS)
    assert not config.is_allowed(IDS["gateway"], "DeleteKey", "k")
    assert json.loads(path.read_text()) == default_policy(IDS)


def test_ensure_policy_file_writes_default_once(tmp_path):
    path = tmp_path / "kms" / "policy.json"
    first = ensure_policy_file(path, IDS)
    assert json.loads(path.read_text()) == default_policy(IDS)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.admin == IDS["admin"]
    # An operator's edit survives the next start.
    edited = default_policy(IDS)
    edited["policies"]["crypto"]["deny"] = ["Decrypt/*"]
    path.write_text(json.dumps(edited))
    second = ensure_policy_file(path, IDS)
    assert not second.is_allowed(IDS["crypto"], "Decrypt", "bucket-a")
