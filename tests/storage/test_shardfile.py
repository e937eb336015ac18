"""The shard file framing: round trip, corruption and truncation are detected."""
from __future__ import annotations

import os

import pytest

from sealstore import errors
from sealstore.erasure.framing import HEADER_SIZE
from services.storage.shardfile import ShardReader, ShardWriter


def write(path, blocks):
    w = ShardWriter(path)
    for b in blocks:
        w.write_block(b)
    return w.finish()


BLOCKS = [os.urandom(1000), os.urandom(1000), os.urandom(1000), os.urandom(317)]


def test_round_trip_any_range(tmp_path):
    path = tmp_path / "a.shard"
    assert write(path, BLOCKS) == (4, 3317)
    assert path.stat().st_size == 3317 + 4 * HEADER_SIZE
    with ShardReader(path, 4) as r:
        assert [b for _, b in r.read_blocks(0, 4)] == BLOCKS
        assert list(r.read_blocks(3, 1)) == [(3, BLOCKS[3])]
        assert list(r.read_blocks(1, 2)) == [(1, BLOCKS[1]), (2, BLOCKS[2])]
        assert r.read_block(2) == BLOCKS[2]
        with pytest.raises(errors.InvalidRange):
            list(r.read_blocks(3, 2))


def test_empty_shard(tmp_path):
    path = tmp_path / "e.shard"
    assert write(path, []) == (0, 0)
    with ShardReader(path, 0) as r:
        assert list(r.read_blocks(0, 0)) == []


def test_only_last_block_may_be_shorter(tmp_path):
    w = ShardWriter(tmp_path / "b.shard")
    w.write_block(b"x" * 10)
    with pytest.raises(errors.InvalidArgument):
        w.write_block(b"x" * 11)
    w.write_block(b"x" * 5)
    with pytest.raises(errors.InvalidArgument):
        w.write_block(b"x" * 5)
    w.discard()
    assert not (tmp_path / "b.shard").exists()


@pytest.mark.parametrize("where", ["block", "digest", "length"])
def test_corruption_detected(tmp_path, where):
    path = tmp_path / "c.shard"
    write(path, BLOCKS)
    frame = HEADER_SIZE + 1000
    offset = {"block": 2 * frame + HEADER_SIZE + 500, "digest": 2 * frame + 4, "length": 2 * frame}[where]
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    with ShardReader(path, 4) as r:
        assert r.read_block(1) == BLOCKS[1]  # neighbours are still readable
        assert r.read_block(3) == BLOCKS[3]
        with pytest.raises(errors.ObjectTampered, match="block 2"):
            r.read_block(2)
        with pytest.raises(errors.ObjectTampered):
            list(r.read_blocks(0, 4))


@pytest.mark.parametrize("cut", [1, 317, 317 + HEADER_SIZE, 317 + HEADER_SIZE + 3])
def test_truncation_detected(tmp_path, cut):
    path = tmp_path / "t.shard"
    write(path, BLOCKS)
    os.truncate(path, path.stat().st_size - cut)
    with ShardReader(path, 4) as r:
        assert r.read_block(0) == BLOCKS[0]
        with pytest.raises(errors.ObjectTampered):
            list(r.read_blocks(0, 4))


def test_writer_refuses_existing_file(tmp_path):
    path = tmp_path / "d.shard"
    write(path, BLOCKS[:1])
    with pytest.raises(FileExistsError):
        ShardWriter(path)
