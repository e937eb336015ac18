"""The on-disk framing of a shard file: a sequence of checksummed blocks.

Every block (one erasure-coded fragment of one stripe) is written as

    u32 little-endian length ‖ 16-byte xxh3-128 digest of the block ‖ block bytes

xxh3-128 detects bit rot and torn writes, not an attacker: authenticity of the object data
comes from DARE's AEAD. It runs ~7.9 GB/s here, so checking every read costs almost nothing.

Finding block N needs no index: the crypto worker cuts every stripe to the same size except
the last, so every block but the last has the length of block 0 and block N starts at
N × (header + length of block 0). The writer enforces that rule, so the reader can trust it
and learns the frame size from the first header. An index file would be one more file to
write, fsync and keep consistent with the data.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Iterator

import xxhash

from sealstore import errors

CHECKSUM_NAME = "xxh3-128"
"""Value of ErasureLayout.block_checksum for shards written with this framing."""

_HEADER = struct.Struct("<I16s")
HEADER_SIZE = _HEADER.size  # 20 bytes


def _digest(block: bytes | memoryview) -> bytes:
    return xxhash.xxh3_128_digest(block)


class ShardWriter:
    """Appends framed blocks to a new file; `finish` fsyncs it, `discard` removes it."""

    def __init__(self, path: Path):
        self.path = path
        # O_EXCL: an upload id names exactly one temporary file; a second writer is a bug or a replay.
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self.blocks = 0
        self.bytes = 0
        self._first_len: int | None = None
        self._saw_short = False

    def write_block(self, block: bytes) -> None:
        if self._fd is None:
            raise errors.InvalidRequest(f"shard {self.path.name} is already closed")
        n = len(block)
        if self._first_len is None:
            self._first_len = n
        elif self._saw_short or n > self._first_len:
            # The reader computes offsets from block 0's size; only the last block may be shorter.
            raise errors.InvalidArgument(
                f"shard block {self.blocks} has {n} bytes; only the last block may differ from {self._first_len}")
        elif n < self._first_len:
            self._saw_short = True
        header = _HEADER.pack(n, _digest(block))
        # writev avoids concatenating header and block into a fresh copy of the block.
        written = os.writev(self._fd, [header, block])
        if written != HEADER_SIZE + n:
            self._write_rest(header + block, written)
        self.blocks += 1
        self.bytes += n

    def _write_rest(self, frame: bytes, written: int) -> None:
        view = memoryview(frame)[written:]
        while view:
            done = os.write(self._fd, view)
            view = view[done:]

    def finish(self) -> tuple[int, int]:
        """Makes the file durable and closes it; returns (blocks, bytes of block data)."""
        if self._fd is None:
            raise errors.InvalidRequest(f"shard {self.path.name} is already closed")
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return self.blocks, self.bytes

    def discard(self) -> None:
        """Closes (if open) and removes the file; safe to call more than once."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class ShardReader:
    """Reads and verifies blocks of a shard file that holds `block_count` blocks.

    The file is opened by the constructor: a reader keeps reading the version it opened
    even if a concurrent overwrite unlinks the file.
    """

    def __init__(self, path: Path, block_count: int):
        self.path = path
        self.block_count = block_count
        self._fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._frame_size: int | None = None

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> "ShardReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _tampered(self, index: int, why: str) -> errors.SealstoreError:
        return errors.ObjectTampered(f"shard {self.path.name} block {index}: {why}")

    def _pread(self, size: int, offset: int) -> bytes:
        return os.pread(self._fd, size, offset)

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
        length, digest = self._header(offset, index)
        first_len = self._frame_size_of_first() - HEADER_SIZE
        last = index == self.block_count - 1
        if length > first_len or (not last and length != first_len):
            raise self._tampered(index, f"length {length} does not fit the layout")
        block = self._pread(length, offset + HEADER_SIZE)
        if len(block) != length:
            raise self._tampered(index, "truncated block")
        if _digest(block) != digest:
            raise self._tampered(index, f"{CHECKSUM_NAME} mismatch")
        return block

    def read_blocks(self, first: int, count: int) -> Iterator[tuple[int, bytes]]:
        """Yields (index, block) for blocks [first, first + count), one block in memory at a time."""
        if first + count > self.block_count:
            raise errors.InvalidRange(
                f"blocks [{first}, {first + count}) are beyond the {self.block_count} blocks of {self.path.name}")
        for index in range(first, first + count):
            yield index, self.read_block(index)


def frame_blocks(blocks: list[bytes]) -> bytes:
    """Blocks framed exactly as ShardWriter writes them (for shards kept inside the metadata)."""
    return b"".join(_HEADER.pack(len(b), _digest(b)) + bytes(b) for b in blocks)


class InlineShardReader(ShardReader):
    """A ShardReader over a shard kept in memory (inline in the object's metadata)."""

    def __init__(self, framed: bytes, block_count: int, name: str = "inline shard"):
        self.path = Path(name)
        self.block_count = block_count
        self._data = bytes(framed)
        self._fd = None
        self._frame_size = None

    def _pread(self, size: int, offset: int) -> bytes:
        return self._data[offset:offset + size]

    def close(self) -> None:
        pass

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
        frame = reader._frame_size_of_first()
        length, _ = reader._header((block_count - 1) * frame, block_count - 1)
        return "" if len(framed) == (block_count - 1) * frame + HEADER_SIZE + length else "trailing bytes"
    except errors.SealstoreError as err:
        return err.message


def verify_shard(path: Path, block_count: int, deep: bool) -> str:
    """"" if the shard file at `path` is sound, else what is wrong with it.

    Quick: the file size fits `block_count` frames (first and last headers read). Deep: every
    block is read and checked against its checksum as well.
    """
    try:
        with ShardReader(path, block_count) as reader:
            if block_count == 0:
                return "" if os.path.getsize(path) == 0 else "data in a shard of no blocks"
            if deep:
                for _ in reader.read_blocks(0, block_count):
                    pass
                return "" if os.path.getsize(path) == _expected_size(reader, block_count) else "trailing bytes"
            frame = reader._frame_size_of_first()
            last_offset = (block_count - 1) * frame
            length, _ = reader._header(last_offset, block_count - 1)
            if length > frame - HEADER_SIZE or os.path.getsize(path) != last_offset + HEADER_SIZE + length:
                return "file size does not fit its blocks"
            return ""
    except errors.SealstoreError as err:
        return err.message
    except FileNotFoundError:
        return "shard file missing"


def _expected_size(reader: ShardReader, block_count: int) -> int:
    frame = reader._frame_size_of_first()
    length, _ = reader._header((block_count - 1) * frame, block_count - 1)
    return (block_count - 1) * frame + HEADER_SIZE + length
