"""The listing index's schema 2 (the `extra` column of `.multipart` rows): a drive whose index
file was written by schema 1 keeps its rows and gains the column in place."""
from __future__ import annotations

import sqlite3

from services.storage.index import SCHEMA_VERSION, ListingIndex, Row


def test_a_schema_1_index_is_migrated_in_place(tmp_path):
    path = tmp_path / "listing.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE objects (bucket TEXT NOT NULL, key BLOB NOT NULL, size INTEGER NOT NULL, "
               "etag TEXT NOT NULL, mtime_ns INTEGER NOT NULL, data_id TEXT NOT NULL, ident TEXT NOT NULL, "
               "PRIMARY KEY (bucket, key)) WITHOUT ROWID")
    db.execute("INSERT INTO objects VALUES ('b', CAST('k' AS BLOB), 3, 'e', 1, 'd', 'i')")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()

    index = ListingIndex(path)
    assert index.page("b", "", "", 10) == [Row("k", 3, "e", 1, "d", "i", b"")]
    index.put("b", Row("k2", 4, "e2", 2, "d2", "i2", b"\x01extra"))
    assert [r.extra for r in index.page("b", "", "", 10)] == [b"", b"\x01extra"]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    db.close()
