"""Parsed metadata files, remembered by their content.

Parsing meta.json (protobuf's JSON parser, in Python) was most of what a storage node spent on a
metadata read, and a commit parsed the same few files three or four times (the version it
replaces, the kept one, the one it wrote). Here a file's parse is looked up by the SHA-256 of
the bytes just read, so what is served is always what the file holds now: a file replaced,
rewritten in place, or swapped for another object's (by heal, an undo or an attacker) has other
bytes, hence another entry. File identities (inode, times, size) would not do: timestamps
tick coarsely and inode numbers are reused, so two versions of a file can share an identity.

One table per process (an entry is a pure function of bytes, whatever the drive), bounded in
entries and in bytes. Callers get copies: they edit the messages they are handed.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Callable

from google.protobuf.message import Message

MAX_ENTRIES = 4096
MAX_BYTES = 16 << 20
"""Bytes of the files behind the entries: a parsed message holds about as much (an inline
shard is kept as bytes, 3/4 of its base64)."""


class ParsedFiles:
    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES):
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._entries: OrderedDict[tuple[type, bytes], tuple[Message, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def digest(raw: bytes) -> bytes:
        return hashlib.sha256(raw).digest()

    def get(self, kind: type, digest: bytes) -> Message | None:
        """A copy of the `kind` message parsed from the bytes of `digest`, or None."""
        with self._lock:
            found = self._entries.get((kind, digest))
            if found is None:
                return None
            self._entries.move_to_end((kind, digest))
        copy = kind()
        copy.CopyFrom(found[0])
        return copy

    def put(self, digest: bytes, size: int, message: Message) -> None:
        """Remembers `message` (a copy of it) as what bytes of `digest` and `size` parse to; only
        for a message equal to what the parser makes of those bytes."""
        if size > self.max_bytes // 8:
            return
        kept = type(message)()
        kept.CopyFrom(message)
        key = (type(message), digest)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (kept, size)
            self._bytes += size
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped

    def parse(self, kind: type, raw: bytes, parse: Callable[[bytes], Message]) -> Message:
        """What `parse(raw)` returns (a `kind` message), from the table when these bytes were
        parsed before; parse's exceptions propagate, and nothing is remembered then."""
        digest = self.digest(raw)
        known = self.get(kind, digest)
        if known is not None:
            return known
        message = parse(raw)
        self.put(digest, len(raw), message)
        return message

    def remember(self, raw: bytes, message: Message) -> None:
        """Records `message` as what `raw` parses to (a file just written from it)."""
        self.put(self.digest(raw), len(raw), message)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)


PARSED = ParsedFiles()
