"""Shard files on a drive: the framed blocks of one shard (sealstore/erasure/framing.py), written
once and fsynced, then read and verified block by block."""
from __future__ import annotations

import os
from pathlib import Path

from sealstore import errors
from sealstore.erasure.framing import HEADER_SIZE, FramedBlocks, binding_seed, check_block_length, frame_header


class ShardWriter:
    """Appends framed blocks to a new file; `finish` fsyncs it, `discard` removes it. The block
    checksums are bound to `data_id`, the data id the shard will be committed as."""

    def __init__(self, path: Path, data_id: str = ""):
        self.path = path
        self._seed = binding_seed(data_id) if data_id else 0
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
        if check_block_length(self.blocks, n, self._first_len, self._saw_short):
            self._saw_short = True
        if self._first_len is None:
            self._first_len = n
        header = frame_header(block, self._seed)
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


class ShardReader(FramedBlocks):
    """Reads and verifies blocks of a shard file that holds `block_count` blocks, as the shard
    of `data_id` (its checksums bound to it; see framing.py).

    The file is opened by the constructor: a reader keeps reading the version it opened
    even if a concurrent overwrite unlinks the file.
    """

    def __init__(self, path: Path, block_count: int, data_id: str = ""):
        self.path = path
        self.block_count = block_count
        self.seed = binding_seed(data_id) if data_id else 0
        self._fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._frame_size = None

    def check_size(self) -> None:
        """ObjectTampered unless the file's size is what `block_count` frames take (a quick check
        at open: a truncated shard, or another shard file put in its place, e.g. a part's swapped
        with another part's, fails before any of its blocks is served)."""
        try:
            if self.block_count == 0:
                sound = os.fstat(self._fd).st_size == 0
            else:
                sound = (self.stated_length(self.block_count - 1) <= self.frame_size() - HEADER_SIZE
                         and os.fstat(self._fd).st_size == self.framed_size())
        except errors.ObjectTampered:
            sound = False
        if not sound:
            raise errors.ObjectTampered(f"shard {self.path.name}: its size does not fit {self.block_count} blocks")

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _pread(self, size: int, offset: int) -> bytes:
        return os.pread(self._fd, size, offset)


def verify_shard(path: Path, block_count: int, deep: bool, data_id: str = "") -> str:
    """"" if the shard file at `path` is sound, else what is wrong with it.

    Quick: the file size fits `block_count` frames (first and last headers read). Deep: every
    block is read and checked against its checksum as well.
    """
    try:
        with ShardReader(path, block_count, data_id) as reader:
            if block_count == 0:
                return "" if os.path.getsize(path) == 0 else "data in a shard of no blocks"
            if deep:
                for _ in reader.read_blocks(0, block_count):
                    pass
                return "" if os.path.getsize(path) == reader.framed_size() else "trailing bytes"
            if (reader.stated_length(block_count - 1) > reader.frame_size() - HEADER_SIZE
                    or os.path.getsize(path) != reader.framed_size()):
                return "file size does not fit its blocks"
            return ""
    except errors.SealstoreError as err:
        return err.message
    except FileNotFoundError:
        return "shard file missing"
