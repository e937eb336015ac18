"""ReadShard through the real servicer in this process: the blocks a range names, and how many
trips to the drive thread pool a read takes (each costs the node a thread switch and a wake-up
of its event loop; a small object's shard is one block)."""
from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from sealstore import errors, frames
from sealstore.v1 import storage_pb2
from services.storage.node import Node
from services.storage.servicer import StorageServicer
from tests.storage.test_drive import put
from tests.storage.test_listing_index import commit_inline


class CountingExecutor(ThreadPoolExecutor):
    def __init__(self):
        super().__init__(4)
        self.trips = 0

    def submit(self, *args, **kwargs):
        self.trips += 1
        return super().submit(*args, **kwargs)


@pytest.fixture
def node(tmp_path):
    n = Node("n", [tmp_path / "d"])
    n.drive(0).make_bucket("bkt", 1)
    put(n.drive(0), "bkt", "three", "v3", [b"a" * 10, b"b" * 10, b"c" * 4])
    commit_inline(n.drive(0), "bkt", "small", "s1", b"inline block")
    put(n.drive(0), "bkt", "empty", "e1", [])
    return n


def read(node: Node, key: str, first: int = 0, count: int = 0) -> tuple[list[tuple[int, bytes]], int]:
    servicer = StorageServicer(node)
    executor = CountingExecutor()

    async def scenario():
        asyncio.get_running_loop().set_default_executor(executor)
        request = storage_pb2.ReadShardRequest(drive=0, bucket="bkt", key=key, first_block=first, block_count=count)
        # Through the wire format, as the worker reads them (sealstore.frames).
        return [(m.index, m.block) async for b in servicer.ReadShard(request, None)
                for m in [storage_pb2.ShardBlock.FromString(frames.serialize(b))]]
    try:
        return asyncio.run(scenario()), executor.trips
    finally:
        executor.shutdown()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_blocks_of_a_range(node):
    blocks = [(0, b"a" * 10), (1, b"b" * 10), (2, b"c" * 4)]
    assert read(node, "three")[0] == blocks
    assert read(node, "three", 1)[0] == blocks[1:]
    assert read(node, "three", 1, 1)[0] == blocks[1:2]
    assert read(node, "three", 2, 1)[0] == blocks[2:]
    assert read(node, "empty")[0] == []
    with pytest.raises(errors.InvalidRange):
        read(node, "three", 2, 2)
    with pytest.raises(errors.NoSuchKey):
        read(node, "absent")


def test_a_one_block_shard_is_one_trip_to_the_thread_pool(node):
    assert read(node, "small") == ([(0, b"inline block")], 1)
    assert read(node, "three", 2, 1) == ([(2, b"c" * 4)], 1)
    assert read(node, "three")[1] == 3  # one per block, none to learn that there is no more


def test_readers_are_closed(node):
    read(node, "three")  # warm up: the first call opens the listing index and such
    before = open_fds()
    for _ in range(5):
        read(node, "three", 0, 1)
        with pytest.raises(errors.InvalidRange):
            read(node, "three", 3, 1)
    assert open_fds() == before
