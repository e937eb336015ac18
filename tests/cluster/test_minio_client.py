"""minio-py, the client MinIO users already have, against sealstore's SSE-KMS."""
from __future__ import annotations

import io
import os
import uuid
from urllib.parse import urlsplit

import pytest
from minio import Minio
from minio.commonconfig import ENABLED  # noqa: F401  (import check: the package is the real client)
from minio.error import S3Error
from minio.sse import SseKMS
from minio.sseconfig import Rule, SSEConfig


@pytest.fixture
def mc(cluster):
    return Minio(urlsplit(cluster.endpoint).netloc, access_key=cluster.access_key,
                 secret_key=cluster.secret_key, secure=False, region="us-east-1")


def test_minio_py_sse_kms_and_bucket_encryption(cluster, mc):
    key, other, bucket = (f"mc-{uuid.uuid4().hex[:8]}" for _ in range(3))
    cluster.cli("key", "create", key)
    cluster.cli("key", "create", other)
    mc.make_bucket(bucket)
    mc.set_bucket_encryption(bucket, SSEConfig(Rule.new_sse_kms_rule(key)))
    config = mc.get_bucket_encryption(bucket)
    assert config.rule.kms_master_key_id == key and config.rule.sse_algorithm == "aws:kms"

    body = os.urandom(1_000_003)
    mc.put_object(bucket, "default.bin", io.BytesIO(body), len(body))
    mc.put_object(bucket, "explicit.bin", io.BytesIO(body), len(body),
                  sse=SseKMS(other, {"team": "storage"}))
    default_stat = mc.stat_object(bucket, "default.bin")
    explicit_stat = mc.stat_object(bucket, "explicit.bin")
    assert default_stat.metadata["x-amz-server-side-encryption-aws-kms-key-id"].endswith(key)
    assert explicit_stat.metadata["x-amz-server-side-encryption-aws-kms-key-id"].endswith(other)
    for name in ("default.bin", "explicit.bin"):
        response = mc.get_object(bucket, name)
        try:
            assert response.read() == body
        finally:
            response.close()
            response.release_conn()
    partial = mc.get_object(bucket, "explicit.bin", offset=65530, length=20)
    assert partial.read() == body[65530:65550]
    partial.close()
    partial.release_conn()

    cluster.cli("key", "disable", other)
    try:
        with pytest.raises(S3Error) as exc:
            mc.get_object(bucket, "explicit.bin")
        assert exc.value.code == "KMS.DisabledException"
        response = mc.get_object(bucket, "default.bin")
        assert response.read() == body
        response.close()
        response.release_conn()
    finally:
        cluster.cli("key", "enable", other)
    assert sorted(o.object_name for o in mc.list_objects(bucket)) == ["default.bin", "explicit.bin"]
    mc.delete_bucket_encryption(bucket)
    assert mc.get_bucket_encryption(bucket) is None
