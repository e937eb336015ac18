"""Bucket policy and tags live on every drive like the encryption configuration: a drive that
lost the bucket gets it back from healing with all of it (MakeBucket carrying the quorum's
BucketInfo), and restoring a bucket never rewrites one that a drive still has."""
from __future__ import annotations

import shutil

from sealstore.erasure.heal import heal_all
from sealstore.v1 import types_pb2
from tests.fakes.real_storage import RealStorage

BUCKET = "configured"
POLICY = '{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Principal":"*","Action":"s3:PutObject"}]}'


def test_a_wiped_drive_gets_the_bucket_back_with_encryption_policy_and_tags(tmp_path):
    storage = RealStorage(tmp_path)

    async def test(store):
        await store.make_bucket(BUCKET)
        await store.set_bucket_encryption(BUCKET, types_pb2.BucketEncryption(sse_algorithm="aws:kms",
                                                                             kms_master_key_id="k1"))
        await store.update_bucket(BUCKET, policy_json=POLICY, tags={"team": "blue"})
        drive = storage.drive(3)
        shutil.rmtree(drive.root / "buckets" / BUCKET)
        report = await heal_all(store)
        assert report.buckets_healed == 1
        got = drive.get_bucket(BUCKET)
        assert (got.policy_json, dict(got.tags), got.encryption.kms_master_key_id) == (POLICY, {"team": "blue"}, "k1")
        # A restore never changes a bucket a drive has: healing from a stale view sets nothing.
        stale = types_pb2.BucketInfo(name=BUCKET, created_ns=got.created_ns, policy_json="{}")
        assert not await store.make_bucket_on(store.members[0].address, stale)
        assert storage.drive(0).get_bucket(BUCKET).policy_json == POLICY
    storage.run(test)
