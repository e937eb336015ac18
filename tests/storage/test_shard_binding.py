"""Shard block checksums are bound to the data id the shard is stored as (framing.binding_seed):
read as another data id it fails; shards written before the binding still read."""
from __future__ import annotations

import pytest

from sealstore import errors
from services.storage.shardfile import ShardReader, ShardWriter, verify_shard

BLOCKS = [b"a" * 1000, b"b" * 1000, b"c" * 10]


def write(path, data_id: str = "") -> None:
    writer = ShardWriter(path, data_id)
    for block in BLOCKS:
        writer.write_block(block)
    writer.finish()


def read(path, data_id: str = "") -> list[bytes]:
    with ShardReader(path, len(BLOCKS), data_id) as reader:
        return [b for _, b in reader.read_blocks(0, len(BLOCKS))]


def test_a_bound_shard_reads_only_as_its_own_data_id(tmp_path):
    path = tmp_path / "s.shard"
    write(path, "data-a")
    assert read(path, "data-a") == BLOCKS
    for other in ("data-b", ""):
        with pytest.raises(errors.ObjectTampered):
            read(path, other)
        assert "mismatch" in verify_shard(path, len(BLOCKS), deep=True, data_id=other)
    assert verify_shard(path, len(BLOCKS), deep=True, data_id="data-a") == ""


def test_a_shard_written_before_the_binding_still_reads(tmp_path):
    path = tmp_path / "old.shard"
    write(path)
    assert read(path, "any-data-id") == BLOCKS
    assert verify_shard(path, len(BLOCKS), deep=True, data_id="any-data-id") == ""
