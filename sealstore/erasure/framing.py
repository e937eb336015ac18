"""The framing of a shard: a sequence of checksummed blocks, one erasure-coded fragment of one
stripe each. The storage node writes it to shard files and keeps small shards inline in the
metadata; the crypto worker records its checksum name in every object's ErasureLayout.

Every block is framed as

    u32 little-endian length ‖ 16-byte xxh3-128 digest of the block ‖ block bytes

xxh3-128 detects bit rot and torn writes, not an attacker: authenticity of the object data
comes from DARE's AEAD. It runs ~7.9 GB/s here, so checking every read costs almost nothing.

The digests of a shard file are seeded with its data id (`binding_seed`), so that a shard
file put in the place of another (a part's swapped with another part's of the same size, or
another object's shard renamed) fails its checksums instead of decoding into the wrong
bytes, encrypted or not. Shards written before the binding (seed 0) still verify: a bound
file never does under seed 0 or under another data id, so the fallback lets nothing through.
Inline shards live inside their object's metadata and are not bound.

Finding block N needs no index: the crypto worker cuts every stripe to the same size except
the last, so every block but the last has the length of block 0 and block N starts at
N × (header + length of block 0). Writers enforce that rule (`check_block_length`), so a reader
can trust it and learns the frame size from the first header. An index would be one more file
to write, fsync and keep consistent with the data.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterator

import xxhash

from sealstore import errors

CHECKSUM_NAME = "xxh3-128"
"""Value of ErasureLayout.block_checksum for shards in this framing."""

_HEADER = struct.Struct("<I16s")
HEADER_SIZE = _HEADER.size  # 20 bytes


def digest(block: bytes | memoryview, seed: int = 0) -> bytes:
    return xxhash.xxh3_128_digest(block, seed)


def binding_seed(data_id: str) -> int:
    """The checksum seed of the shard files of data id `data_id`."""
    return xxhash.xxh3_64_intdigest(f"sealstore shard {data_id}".encode())


def frame_header(block: bytes | memoryview, seed: int = 0) -> bytes:
    """The header that precedes `block` in a shard (bound to a data id by `seed`)."""
    return _HEADER.pack(len(block), digest(block, seed))


def frame_blocks(blocks: list[bytes]) -> bytes:
    """Blocks framed exactly as a shard file holds them (for shards kept inside the metadata)."""
    return b"".join(frame_header(b) + bytes(b) for b in blocks)


def check_block_length(index: int, length: int, first_length: int | None, saw_short: bool) -> bool:
    """Raises InvalidArgument unless block `index` of `length` bytes may follow the blocks
    before it (only the last block may be shorter than block 0); returns whether it is short."""
    if first_length is None:
        return False
    if saw_short or length > first_length:
        raise errors.InvalidArgument(
            f"shard block {index} has {length} bytes; only the last block may differ from {first_length}")
    return length < first_length


class FramedBlocks:
    """Reads and verifies blocks of a framed shard of `block_count` blocks. Subclasses say where
    the bytes are (`_pread`): a file on a drive, or bytes held in memory."""

    path: Path
    block_count: int
    _frame_size: int | None = None
    seed: int = 0
    """binding_seed of the data id the shard is read as (0: not bound)."""

    def _pread(self, size: int, offset: int) -> bytes:
        raise NotImplementedError

    def _tampered(self, index: int, why: str) -> errors.SealstoreError:
        return errors.ObjectTampered(f"shard {self.path.name} block {index}: {why}")

    def _header(self, offset: int, index: int) -> tuple[int, bytes]:
        raw = self._pread(HEADER_SIZE, offset)
        if len(raw) != HEADER_SIZE:
            raise self._tampered(index, "truncated header")
        return _HEADER.unpack(raw)

    def _frame_size_of_first(self) -> int:
        if self._frame_size is None:
            length, _ = self._header(0, 0)
            self._frame_size = HEADER_SIZE + length
        return self._frame_size

    def read_block(self, index: int) -> bytes:
        if not 0 <= index < self.block_count:
            raise errors.InvalidRange(f"shard {self.path.name} has {self.block_count} blocks, not block {index}")
        offset = index * self._frame_size_of_first()
        length, expected = self._header(offset, index)
        first_len = self._frame_size_of_first() - HEADER_SIZE
        last = index == self.block_count - 1
        if length > first_len or (not last and length != first_len):
            raise self._tampered(index, f"length {length} does not fit the layout")
        block = self._pread(length, offset + HEADER_SIZE)
        if len(block) != length:
            raise self._tampered(index, "truncated block")
        if digest(block, self.seed) != expected and (not self.seed or digest(block) != expected):
            raise self._tampered(index, f"{CHECKSUM_NAME} mismatch")
        return block

    def read_blocks(self, first: int, count: int) -> Iterator[tuple[int, bytes]]:
        """Yields (index, block) for blocks [first, first + count), one block in memory at a time."""
        if first + count > self.block_count:
            raise errors.InvalidRange(
                f"blocks [{first}, {first + count}) are beyond the {self.block_count} blocks of {self.path.name}")
        for index in range(first, first + count):
            yield index, self.read_block(index)

    def frame_size(self) -> int:
        """Header plus block 0: the distance between the starts of two blocks."""
        return self._frame_size_of_first()

    def stated_length(self, index: int) -> int:
        """The length block `index`'s header states (not checked against anything)."""
        length, _ = self._header(index * self._frame_size_of_first(), index)
        return length

    def framed_size(self) -> int:
        """The size `block_count` blocks take if the last header states the truth."""
        if self.block_count == 0:
            return 0
        return (self.block_count - 1) * self.frame_size() + HEADER_SIZE + self.stated_length(self.block_count - 1)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InlineShardReader(FramedBlocks):
    """A shard kept in memory (inline in the object's metadata)."""

    def __init__(self, framed: bytes, block_count: int, name: str = "inline shard"):
        self.path = Path(name)
        self.block_count = block_count
        self._data = bytes(framed)
        self._frame_size = None

    def _pread(self, size: int, offset: int) -> bytes:
        return self._data[offset:offset + size]

    def size(self) -> int:
        return len(self._data)


def verify_inline(framed: bytes, block_count: int) -> str:
    """"" if an inline shard is sound (every checksum: it is small), else what is wrong."""
    reader = InlineShardReader(framed, block_count)
    try:
        if block_count == 0:
            return "" if not framed else "data in a shard of no blocks"
        for _ in reader.read_blocks(0, block_count):
            pass
        return "" if len(framed) == reader.framed_size() else "trailing bytes"
    except errors.SealstoreError as err:
        return err.message
