"""The kms's configuration from the environment, validated at start, and the backend factory.

| variable | default | meaning |
|---|---|---|
| SEALSTORE_KMS_KEYSTORE | fs | fs, openbao-kv or openbao-transit |
| SEALSTORE_OPENBAO_ADDR | (required for openbao-*) | e.g. http://127.0.0.1:8200 |
| SEALSTORE_OPENBAO_TOKEN / SEALSTORE_OPENBAO_TOKEN_FILE | (one required for openbao-*) | the kms's OpenBao token |
| SEALSTORE_OPENBAO_MOUNT | secret (kv) / transit (transit) | mount path of the secrets engine |
| SEALSTORE_OPENBAO_KV_PREFIX | sealstore/keys | path inside the KV mount |
| SEALSTORE_OPENBAO_CACERT | system CAs | CA bundle for an https address |
| SEALSTORE_OPENBAO_TIMEOUT | 5 | seconds per OpenBao request |
| SEALSTORE_KMS_CACHE_ANY / _UNUSED / _OFFLINE, SEALSTORE_KMS_RETRY_INTERVAL | 300 / 30 / 300 / 1 | cache.py |
| SEALSTORE_KMS_MAINTENANCE_INTERVAL | 60 | seconds between health checks and due-deletion sweeps |
| SEALSTORE_SSE_S3_KEY | sealstore-sse-s3 | the deployment's SSE-S3 key, created at start if missing |
| SEALSTORE_DEFAULT_KMS_KEY | sealstore-default | the key of `aws:kms` without a key id, created likewise |
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sealstore import config
from services.kms.backend import KeyBackend
from services.kms.cache import CacheSettings

if TYPE_CHECKING:  # hvac is only needed (and imported) for the openbao-* keystores
    from services.kms.openbao import OpenBaoSettings

ENV_KEYSTORE = "SEALSTORE_KMS_KEYSTORE"
ENV_OPENBAO_ADDR = "SEALSTORE_OPENBAO_ADDR"
ENV_OPENBAO_TOKEN = "SEALSTORE_OPENBAO_TOKEN"
ENV_OPENBAO_TOKEN_FILE = "SEALSTORE_OPENBAO_TOKEN_FILE"
ENV_OPENBAO_MOUNT = "SEALSTORE_OPENBAO_MOUNT"
ENV_OPENBAO_KV_PREFIX = "SEALSTORE_OPENBAO_KV_PREFIX"
ENV_OPENBAO_CACERT = "SEALSTORE_OPENBAO_CACERT"
ENV_OPENBAO_TIMEOUT = "SEALSTORE_OPENBAO_TIMEOUT"
ENV_MAINTENANCE_INTERVAL = "SEALSTORE_KMS_MAINTENANCE_INTERVAL"

KEYSTORES = ("fs", "openbao-kv", "openbao-transit")
DEFAULT_MOUNTS = {"openbao-kv": "secret", "openbao-transit": "transit"}


@dataclass(frozen=True)
class KmsSettings:
    keystore: str = "fs"
    """Which backend holds the keys."""
    openbao: "OpenBaoSettings | None" = None
    """Connection settings; set for the openbao-* keystores only."""
    cache: CacheSettings = CacheSettings()
    maintenance_seconds: float = 60.0
    """How often the kms checks the backend's health and deletes keys whose deletion is due."""
    deployment_keys: tuple[str, ...] = (config.DEFAULT_SSE_S3_KEY, config.DEFAULT_KMS_KEY)
    """Keys the deployment itself uses (SSE-S3, aws:kms without a key id): made at start if missing."""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "KmsSettings":
        env = dict(os.environ if env is None else env)
        keystore = env.get(ENV_KEYSTORE, "fs") or "fs"
        if keystore not in KEYSTORES:
            raise ValueError(f"{ENV_KEYSTORE}={keystore!r}: choose one of {', '.join(KEYSTORES)}")
        openbao = None
        if keystore != "fs":
            from services.kms.openbao import OpenBaoSettings
            address = env.get(ENV_OPENBAO_ADDR, "")
            if not address:
                raise ValueError(f"{ENV_KEYSTORE}={keystore} needs {ENV_OPENBAO_ADDR}")
            token = env.get(ENV_OPENBAO_TOKEN, "")
            if not token and env.get(ENV_OPENBAO_TOKEN_FILE):
                token = Path(env[ENV_OPENBAO_TOKEN_FILE]).read_text().strip()
            if not token:
                raise ValueError(f"{ENV_KEYSTORE}={keystore} needs {ENV_OPENBAO_TOKEN} or {ENV_OPENBAO_TOKEN_FILE}")
            openbao = OpenBaoSettings(
                address=address, token=token,
                mount=(env.get(ENV_OPENBAO_MOUNT) or DEFAULT_MOUNTS[keystore]).strip("/"),
                kv_prefix=env.get(ENV_OPENBAO_KV_PREFIX) or "sealstore/keys",
                ca_cert=env.get(ENV_OPENBAO_CACERT) or None,
                timeout_seconds=float(env.get(ENV_OPENBAO_TIMEOUT) or 5))
        maintenance = float(env.get(ENV_MAINTENANCE_INTERVAL) or 60)
        if maintenance <= 0:
            raise ValueError(f"{ENV_MAINTENANCE_INTERVAL} must be > 0")
        deployment_keys = tuple(dict.fromkeys((env.get(config.ENV_SSE_S3_KEY) or config.DEFAULT_SSE_S3_KEY,
                                               env.get(config.ENV_DEFAULT_KMS_KEY) or config.DEFAULT_KMS_KEY)))
        return cls(keystore=keystore, openbao=openbao, cache=CacheSettings.from_env(env),
                   maintenance_seconds=maintenance, deployment_keys=deployment_keys)


def open_backend(settings: KmsSettings, kms_dir: Path) -> KeyBackend:
    """The backend `settings` choose; `kms_dir` is `<data>/kms` (fs keys, transit's state file)."""
    kms_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if settings.keystore == "fs":
        from services.kms.keystore import FileKeyStore
        return FileKeyStore(kms_dir, settings.cache)
    assert settings.openbao is not None
    if settings.keystore == "openbao-kv":
        from services.kms.openbao_kv import OpenBaoKVKeyStore
        return OpenBaoKVKeyStore(settings.openbao, settings.cache)
    from services.kms.openbao_transit import OpenBaoTransitKeyStore
    return OpenBaoTransitKeyStore(settings.openbao, kms_dir, settings.cache)
