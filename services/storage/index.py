"""A drive's listing index: the keys of each bucket in key order, so that a listing page costs
O(page) instead of a walk of every object folder (keys are hashed on disk, see drive.py).

The index is a cache of the meta.json files, never a source of truth:
- rebuilt from them when missing or unreadable, and reconciled with them at every start (one
  stat per object, a parse only of files that changed since the index last saw them) and before
  the first listing after its file was removed or replaced while the node ran;
- each row carries the identity (inode, times, size) of the meta.json it was read from, and a
  listing stats the files of the rows it returns: a row whose file changed, vanished, rotted or
  names another object is re-read, repaired or dropped there, so a crash between a meta.json
  write and the index update never lists a key that is gone or a version that was replaced;
- a key whose meta.json was written but whose row was not (crash, failed index write) is found
  by the next reconcile (at start, or before the next listing after a failed write).

Why SQLite (standard library) rather than a sorted log of our own: ordered range scans by
(bucket, key) with a B-tree, single-row upserts and deletes in place, and crash safety of
its own file, without writing a compaction. Writes use
synchronous=OFF (no fsync per commit): a power loss may drop the last rows or leave the file
unreadable; the reconcile at start restores the rows from the meta.json files, which are
fsynced, and an unreadable file is recreated.

Every call opens its own short connection (one lock per drive around it) and closes it, with a
rollback journal rather than WAL: when no call is in progress, the node holds no file of the
drive open for writing, so an operator (or a test) can remount the drive read-only, and a drive
moved to another node carries no open state. A call that ends while others wait for the index
hands its connection on to them instead (under concurrent writes, opening a connection and
loading the schema per call was a quarter of a commit's CPU); the last one closes it. The
journal is truncated after each write rather than deleted (an empty listing.sqlite3-journal
stays): creating and removing a file per write was a fifth of an index update's CPU, and an
empty journal is never rolled back.
"""
from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Iterable, NamedTuple

SCHEMA_VERSION = 2
"""2 added `extra` (listing.py's per-row payload of `.multipart` rows); a version 1 file is migrated."""
INDEX_FILE = "listing.sqlite3"


class Row(NamedTuple):
    key: str
    size: int
    etag: str
    mtime_ns: int
    data_id: str
    ident: str
    extra: bytes = b""
    """`.multipart` rows: a serialized partial ObjectEntry (the part, or the upload) listed as is."""


def identity_text(identity: tuple[int, ...]) -> str:
    return ":".join(map(str, identity))


class ListingIndex:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._kept: sqlite3.Connection | None = None
        """The connection a call handed on to the next one (see the module doc)."""
        self._callers = 0
        """Calls inside _session or waiting to enter it."""
        self._callers_lock = threading.Lock()
        self._made = False
        """A session found (or made) the table: a later one that has to make it again works on a
        new file."""
        self.lost_rows = False
        """The file was removed or replaced by an empty one while we ran: the rows of the keys
        not written since are missing until a reconcile (the drive's next listing)."""
        with self._session() as db:  # creates or checks the file now, so a rotten one is found at start
            db.execute("SELECT count(*) FROM objects WHERE bucket = ''").fetchone()

    @contextlib.contextmanager
    def _session(self):
        with self._callers_lock:
            self._callers += 1
        try:
            with self._lock:
                db, self._kept = self._kept, None
                if db is not None and self.missing():
                    db.close()  # its file was removed meanwhile: open (make) the one there now
                    db = None
                if db is None:
                    db = self._open()
                try:
                    yield db
                except BaseException:
                    db.close()
                    raise
                with self._callers_lock:
                    handed_on = self._callers > 1
                if handed_on:
                    self._kept = db
                else:
                    db.close()
        finally:
            with self._callers_lock:
                self._callers -= 1

    def missing(self) -> bool:
        return not self.path.exists()

    def refresh(self) -> None:
        """Opens the file now: a new one (made here) sets lost_rows."""
        with self._session():
            pass

    def _open(self) -> sqlite3.Connection:
        # Keys are stored as UTF-8 BLOBs: byte order is S3's listing order (and code point order).
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=TRUNCATE")
            db.execute("PRAGMA synchronous=OFF")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, 1, SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"listing index schema {version}, expected {SCHEMA_VERSION}")
            if version == 0:
                db.execute("CREATE TABLE IF NOT EXISTS objects (bucket TEXT NOT NULL, key BLOB NOT NULL, "
                           "size INTEGER NOT NULL, etag TEXT NOT NULL, mtime_ns INTEGER NOT NULL, "
                           "data_id TEXT NOT NULL, ident TEXT NOT NULL, extra BLOB NOT NULL DEFAULT x'', "
                           "PRIMARY KEY (bucket, key)) WITHOUT ROWID")
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                # Checked here rather than by the file's inode, which a new file may reuse.
                if self._made:
                    self.lost_rows = True
            elif version == 1:
                # No `.multipart` rows existed then: every row's extra is empty.
                db.execute("ALTER TABLE objects ADD COLUMN extra BLOB NOT NULL DEFAULT x''")
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._made = True
        except BaseException:
            db.close()
            raise
        return db

    @classmethod
    def open_or_recreate(cls, path: Path) -> tuple["ListingIndex", str]:
        """The index at `path`; a new empty one if the file is unreadable (the caller then
        rebuilds it from the meta.json files). Returns (index, why it was recreated or "")."""
        try:
            return cls(path), ""
        except sqlite3.Error as exc:
            reason = f"{type(exc).__name__}: {exc}"
        # The journal too: one left by the unreadable file must not be rolled into the new one.
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return cls(path), reason

    def close(self) -> None:
        """Closes the connection a finished call handed on, if any."""
        with self._lock:
            db, self._kept = self._kept, None
        if db is not None:
            db.close()

    # ---- writes ---------------------------------------------------------------------------

    def put(self, bucket: str, row: Row) -> None:
        with self._session() as db:
            db.execute("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (bucket, row.key.encode(), row.size, row.etag, row.mtime_ns, row.data_id, row.ident,
                        row.extra))

    def remove(self, bucket: str, key: str) -> None:
        with self._session() as db:
            db.execute("DELETE FROM objects WHERE bucket = ? AND key = ?", (bucket, key.encode()))

    def remove_many(self, bucket: str, keys: Iterable[str]) -> None:
        with self._session() as db, db:
            db.execute("BEGIN")
            db.executemany("DELETE FROM objects WHERE bucket = ? AND key = ?", ((bucket, k.encode()) for k in keys))

    def replace_if(self, bucket: str, key: str, expected_ident: str | None, row: Row | None) -> None:
        """Compare-and-swap for repairs made by a reader: only if the key's row still has
        `expected_ident` (None: there is no row), so that a commit or delete that updated the
        row meanwhile is never undone by a reader's older view."""
        with self._session() as db, db:
            if expected_ident is None:
                if row is not None:
                    db.execute("INSERT OR IGNORE INTO objects VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                               (bucket, key.encode(), row.size, row.etag, row.mtime_ns, row.data_id, row.ident,
                                row.extra))
            elif row is None:
                db.execute("DELETE FROM objects WHERE bucket = ? AND key = ? AND ident = ?",
                                 (bucket, key.encode(), expected_ident))
            else:
                db.execute("UPDATE objects SET size = ?, etag = ?, mtime_ns = ?, data_id = ?, ident = ?, extra = ? "
                           "WHERE bucket = ? AND key = ? AND ident = ?",
                           (row.size, row.etag, row.mtime_ns, row.data_id, row.ident, row.extra, bucket,
                            key.encode(), expected_ident))

    def replace_many(self, bucket: str, changes: Iterable[tuple[str, str | None, Row | None]]) -> None:
        """replace_if for each (key, expected_ident, row), in one transaction."""
        with self._session() as db, db:
            db.execute("BEGIN")
            for key, expected, row in changes:
                k = key.encode()
                if expected is None:
                    if row is not None:
                        db.execute("INSERT OR IGNORE INTO objects VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                   (bucket, k, row.size, row.etag, row.mtime_ns, row.data_id, row.ident, row.extra))
                elif row is None:
                    db.execute("DELETE FROM objects WHERE bucket = ? AND key = ? AND ident = ?",
                                     (bucket, k, expected))
                else:
                    db.execute("UPDATE objects SET size = ?, etag = ?, mtime_ns = ?, data_id = ?, ident = ?, "
                               "extra = ? WHERE bucket = ? AND key = ? AND ident = ?",
                               (row.size, row.etag, row.mtime_ns, row.data_id, row.ident, row.extra, bucket, k,
                                expected))

    def drop_bucket(self, bucket: str) -> None:
        with self._session() as db:
            db.execute("DELETE FROM objects WHERE bucket = ?", (bucket,))

    # ---- reads ----------------------------------------------------------------------------

    def page(self, bucket: str, prefix: str, after: str, limit: int) -> list[Row]:
        """Up to `limit` rows with key > `after` and key >= `prefix`, in key order (rows past the
        prefix's range may follow: the caller stops at the first key without the prefix)."""
        with self._session() as db:
            cursor = db.execute(
                "SELECT key, size, etag, mtime_ns, data_id, ident, extra FROM objects "
                "WHERE bucket = ? AND key > ? AND key >= ? ORDER BY key LIMIT ?",
                (bucket, after.encode(), prefix.encode(), limit))
            return [Row(k.decode(), *rest) for k, *rest in cursor.fetchall()]

    def idents(self, bucket: str) -> dict[str, str]:
        """key -> ident of every row of the bucket (for the reconcile)."""
        with self._session() as db:
            rows = db.execute("SELECT key, ident FROM objects WHERE bucket = ?", (bucket,)).fetchall()
        return {k.decode(): ident for k, ident in rows}

    def buckets(self) -> set[str]:
        with self._session() as db:
            return {b for (b,) in db.execute("SELECT DISTINCT bucket FROM objects").fetchall()}

    def count(self) -> int:
        with self._session() as db:
            return db.execute("SELECT count(*) FROM objects").fetchone()[0]
