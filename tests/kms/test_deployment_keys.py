"""The kms makes the deployment's own keys (SSE-S3, the default for aws:kms without a key id) at
start when they are missing, and leaves existing ones alone, whatever their state."""
from __future__ import annotations

from services.kms.local_backend import MemoryKeyStore
from services.kms.policy import PolicyConfig, default_policy
from services.kms.server import ensure_deployment_keys
from services.kms.service import KeyManager
from services.kms.settings import KmsSettings


def test_names_from_the_environment():
    assert KmsSettings.from_env({}).deployment_keys == ("sealstore-sse-s3", "sealstore-default")
    env = {"SEALSTORE_SSE_S3_KEY": "site-s3", "SEALSTORE_DEFAULT_KMS_KEY": "site-kms"}
    assert KmsSettings.from_env(env).deployment_keys == ("site-s3", "site-kms")
    assert KmsSettings.from_env({"SEALSTORE_SSE_S3_KEY": "one", "SEALSTORE_DEFAULT_KMS_KEY": "one"}).deployment_keys \
        == ("one",)


def test_created_once_and_never_replaced():
    manager = KeyManager(MemoryKeyStore())
    names = ("sealstore-sse-s3", "sealstore-default")
    assert ensure_deployment_keys(manager, names) == list(names)
    data_key = manager.generate_key("sealstore-sse-s3", b"ctx")
    assert ensure_deployment_keys(manager, names) == []
    # Same key material after a second start: earlier data keys still open.
    assert manager.decrypt("sealstore-sse-s3", data_key.ciphertext, b"ctx") == data_key.plaintext
    # A disabled deployment key is the operator's decision: not recreated, still disabled.
    manager.disable_key("sealstore-default", "admin")
    assert ensure_deployment_keys(manager, names) == []
    assert not manager.describe_key("sealstore-default").enabled


def test_the_crypto_role_may_use_them_and_the_gateway_may_not():
    policy = PolicyConfig.from_dict(default_policy({"crypto-0": "c" * 64, "gateway-0": "g" * 64, "admin": "a" * 64}))
    for name in ("sealstore-sse-s3", "sealstore-default"):
        for method in ("GenerateKey", "Decrypt"):
            assert policy.is_allowed("c" * 64, method, name)
            assert not policy.is_allowed("g" * 64, method, name)
        assert policy.is_allowed("g" * 64, "DescribeKey", name)
