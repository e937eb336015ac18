"""The drive's conditional metadata update, on real files."""
from __future__ import annotations

import pytest

from sealstore import errors
from sealstore.v1 import types_pb2
from services.storage.drive import Drive


def _meta(data_id: str) -> types_pb2.ObjectMeta:
    return types_pb2.ObjectMeta(
        format_version=1, bucket="bucket-a", key="obj", data_id=data_id, size=5, stored_size=5, inline=True,
        erasure=types_pb2.ErasureLayout(data_shards=2, parity_shards=2, stripe_count=1),
        encryption=types_pb2.EncryptionEnvelope(kms_key_name="k", encrypted_dek=b"old", sealed_oek=b"s" * 64,
                                                iv=b"i" * 32))


def test_update_encryption_replaces_only_the_dek_and_only_if_current(tmp_path):
    drive = Drive(tmp_path / "d0")
    drive.make_bucket("bucket-a", 1)
    drive.commit_object("v1", _meta("v1"), inline_block=b"block")
    before = drive.open_shard("bucket-a", "obj", "v1")
    blocks_before = list(before.read_blocks(0, 1))
    before.close()

    with pytest.raises(errors.PreconditionFailed):
        drive.update_encryption("bucket-a", "obj", "v0", b"new", 2)
    assert drive.get_object_meta("bucket-a", "obj").encryption.encrypted_dek == b"old"

    drive.update_encryption("bucket-a", "obj", "v1", b"new", 2)
    meta = drive.get_object_meta("bucket-a", "obj")
    assert meta.encryption.encrypted_dek == b"new" and meta.encryption.kms_key_version == 2
    assert meta.encryption.sealed_oek == b"s" * 64 and meta.data_id == "v1"
    after = drive.open_shard("bucket-a", "obj", "v1")
    assert list(after.read_blocks(0, 1)) == blocks_before  # the inline shard is kept as it was
    after.close()

    with pytest.raises(errors.PreconditionFailed):
        drive.update_encryption("bucket-a", "missing", "v1", b"new", 2)
