"""One drive folder of a storage node: buckets, object metadata and shard files.

Layout under the drive root:

    .sealstore/format.json                      which deployment and set slot this drive belongs to
    .sealstore/listing.sqlite3                  the listing index: keys in order (index.py), a cache
                                                of the meta.json files, rebuilt from them if lost
    tmp/<upload_id>.shard                       shard of an upload in progress (removed on start)
    buckets/<bucket>/bucket.json                BucketInfo, protobuf JSON
    buckets/<bucket>/objects/<h[:2]>/<h>/       one folder per object key, h = sha256(key) hex,
        meta.json                               ObjectMeta (protobuf JSON, self-describing)
        <data_id>.shard                         the shard of the version meta.json names (none when
                                                the object is small: then the shard is inline,
                                                inside meta.json, and a PUT is one write per drive)
        <part.data_id>.shard                    a multipart object (meta.parts): one shard per part
                                                instead (sealstore/erasure/versions.py)
    buckets/.multipart/                         the system bucket of uploads in progress (records and
                                                part objects, sealstore/multipart.py), on every drive

Hashing the key gives every S3 key (up to 1024 bytes, any characters) a short, safe path;
the real key is inside meta.json.

Commit protocol (crash safety): the tmp shard is fsync'd when its stream ends; commit renames
it into the object folder, then writes meta.json atomically (temp file + fsync + rename +
directory fsync). Until meta.json is replaced, readers see the previous version (whose shard
is still there); after, they see the new one. An overwrite keeps the version it replaced for a
minute (prev.json + its shard), so that undoing a commit that missed its write quorum puts
that version back instead of deleting the key. A crash before the rename of meta.json leaves
at most an orphan shard file that no meta.json names.

The servicer runs drive calls in a thread pool, so that file I/O never blocks the node's
event loop: calls on one drive run concurrently. Everything that reads and then rewrites an
object's folder (commit, delete, undo, rewrap, orphan removal, opening a shard) holds that
object's lock; a folder is never locked while another is (no lock order to get wrong), with
one exception in a fixed order: CompleteMultipart holds the completed object's folder while it
takes, one at a time, the folders of the upload's part objects in `.multipart` (never the
reverse, and never `.multipart` as the completed object's bucket). Plain metadata reads need no
lock: meta.json is only ever replaced by a rename.

Multipart (CompleteMultipart): the part objects' shard files are renamed into the completed
object's folder, then its meta.json is written as a commit writes it, then the upload's record
and part objects are removed from the drive. A retry finds the shards already moved.
"""
from __future__ import annotations

import hashlib
import logging
import os
import json
import re
import shutil
import sqlite3
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format

from sealstore import errors, multipart
from sealstore.config import write_file_atomic
from sealstore.erasure.framing import InlineShardReader, frame_blocks, verify_inline
from sealstore.erasure.quorum import CORRUPT_COPY
from sealstore.erasure.versions import is_composite, shard_files, shard_names
from sealstore.multipart import SYSTEM_BUCKET
from sealstore.v1 import storage_pb2, types_pb2

from services.storage.index import INDEX_FILE, ListingIndex, Row, identity_text
from services.storage.parsed import PARSED
from services.storage.shardfile import ShardReader, ShardWriter, verify_shard

log = logging.getLogger(__name__)

MAX_KEY_BYTES = 1024
PREVIOUS_VERSION_FILE = "prev.json"
RETAIN_PREVIOUS_SECONDS = 60.0
"""How long an overwrite keeps the version it replaced (prev.json and its shard): the quorum
client undoes a commit that missed its write quorum within its call timeouts (seconds), and the
undo puts that version back. Without it, an overwrite that failed below quorum (read-only or
full drives) would delete the acknowledged previous version from the drives it reached."""
DEFAULT_MAX_KEYS = 1000

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP_ADDRESS = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
# Upload ids become file names: keep them to a safe alphabet.
_UPLOAD_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")


def validate_bucket_name(name: str) -> None:
    """S3's rules: 3-63 chars of a-z 0-9 . -, starting and ending alphanumeric, no '..', not an IP;
    and the one system bucket, `.multipart`, which no S3 name can be."""
    if name == SYSTEM_BUCKET:
        return
    if (not _BUCKET_NAME.match(name) or ".." in name or ".-" in name or "-." in name
            or _IP_ADDRESS.match(name)):
        raise errors.InvalidBucketName(f"The specified bucket is not valid: {name!r}", resource=name)


def validate_key(key: str) -> None:
    if not key:
        raise errors.InvalidArgument("The object key must not be empty")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise errors.KeyTooLongError(resource=key[:64])


def validate_upload_id(upload_id: str) -> None:
    if not _UPLOAD_ID.match(upload_id):
        raise errors.InvalidArgument(f"invalid upload id {upload_id[:64]!r}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdirs_durable(path: Path, stop_at: Path) -> None:
    """Creates `path` and missing parents below `stop_at`, fsyncing each parent that got a new entry."""
    missing: list[Path] = []
    p = path
    while p != stop_at and not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        _fsync_dir(d.parent)


def _to_json(message) -> bytes:
    return json_format.MessageToJson(message, preserving_proto_field_name=True).encode()


class CorruptMetadata(errors.ObjectTampered):
    """A metadata file that is not a readable ObjectMeta: a bad copy, never a missing one, so
    that healing replaces it only where it saw it corrupt (CommitObject expect CORRUPT_COPY)."""


def _parse_meta(raw: bytes, where: Path | str = "meta.json", root: Path | None = None) -> types_pb2.ObjectMeta:
    """The ObjectMeta in `raw`; CorruptMetadata for anything else (bit rot, a truncated or
    hand-edited file): a parser's own exception would reach callers as an untyped 500.
    `where` names the file in the error (relative to `root` if given). Bytes parsed before are
    not parsed again (parsed.py)."""
    def named() -> Path | str:
        return Path(where).relative_to(root) if root else where

    def parse(raw: bytes) -> types_pb2.ObjectMeta:
        try:
            meta = json_format.Parse(raw, types_pb2.ObjectMeta(), ignore_unknown_fields=True)
        except Exception as exc:  # undecodable bytes, not JSON, wrong JSON types: all the same here
            raise CorruptMetadata(f"unreadable metadata {named()}: {type(exc).__name__}") from None
        if not _is_complete(meta):
            raise CorruptMetadata(f"incomplete metadata {named()}: bucket, key, data_id or erasure layout missing")
        return meta
    return PARSED.parse(types_pb2.ObjectMeta, raw, parse)


def _is_complete(meta: types_pb2.ObjectMeta) -> bool:
    # Valid JSON of the wrong shape ({}, or unknown fields only) parses to an empty message.
    return bool(meta.bucket and meta.key and _UPLOAD_ID.match(meta.data_id) and meta.erasure.data_shards)


def _write_meta(path: Path, meta: types_pb2.ObjectMeta) -> None:
    """Replaces the metadata file `path` atomically with `meta`, and remembers its parse, so that
    reading back what was just written (the index update, the next overwrite) parses nothing."""
    # On one line: json's C encoder, where an indented file takes its Python one (3x the CPU).
    raw = json_format.MessageToJson(meta, preserving_proto_field_name=True, indent=None).encode()
    write_file_atomic(path, raw, mode=0o644)
    if _is_complete(meta):
        # What the parser makes of `raw`: the JSON form drops unknown fields, nothing else
        # (tests/storage/test_parsed_cache.py checks the round trip).
        parsed = types_pb2.ObjectMeta()
        parsed.CopyFrom(meta)
        parsed.DiscardUnknownFields()
        PARSED.remember(raw, parsed)


def _one_stripe_shard(obj_dir: Path, data_id: str) -> bytes:
    """The one block of version `data_id`'s shard file, verified here and framed as an inline
    shard; b"" when it cannot be read (missing, tampered, replaced meanwhile: the checksums are
    bound to the data id, so no lock is needed): the reader then asks ReadShard, whose error
    says why and marks this copy for healing."""
    try:
        with ShardReader(obj_dir / f"{data_id}.shard", 1, data_id) as reader:
            reader.check_size()
            return frame_blocks([reader.read_block(0)])
    except (errors.SealstoreError, OSError):
        return b""


def _check_parts(meta: types_pb2.ObjectMeta) -> None:
    """InvalidArgument unless meta.parts describes shard files this drive can hold: a part object
    names itself (its one part has its data_id and stripe count); a multipart object names
    distinct, valid data ids in ascending part order. Neither is ever inline (Complete moves shard
    files, and a part's shard is read by its data id)."""
    if not meta.parts:
        return
    if meta.inline:
        raise errors.InvalidArgument("a part object or multipart object is never inline")
    if not is_composite(meta):
        if meta.parts[0].stripe_count != meta.erasure.stripe_count:
            raise errors.InvalidArgument("a part object's part must have the object's stripe count")
        return
    seen: set[str] = set()
    number = 0
    for part in meta.parts:
        validate_upload_id(part.data_id)
        if part.data_id in seen or part.data_id == meta.data_id or part.number <= number:
            raise errors.InvalidArgument("the parts of a multipart object are distinct, in ascending order")
        seen.add(part.data_id)
        number = part.number


def _file_identity(path: Path) -> tuple[int, ...]:
    """Changes whenever the file is replaced or rewritten (meta.json is only ever replaced)."""
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size


def _identity_or_none(path: Path) -> str | None:
    try:
        return identity_text(_file_identity(path))
    except FileNotFoundError:
        return None


def _folder_of(objects: Path, key: str) -> Path:
    """The folder of `key` under a bucket's objects folder (as Drive._object_dir, unchecked)."""
    h = _key_hash(key)
    return objects / h[:2] / h


def _remove_folder(path: Path) -> None:
    """Removes an object's folder (a few files, no subfolders) if present."""
    try:
        for name in os.listdir(path):
            os.unlink(path / name)
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


def _row_of(meta: types_pb2.ObjectMeta, identity: tuple[int, ...] | str) -> Row:
    ident = identity if isinstance(identity, str) else identity_text(identity)
    return Row(meta.key, meta.size, meta.etag, meta.mtime_ns, meta.data_id, ident, _listing_extra(meta))


def _listing_extra(meta: types_pb2.ObjectMeta) -> bytes:
    """What a listing of `.multipart` returns beside the key: the part a part object holds, or
    what an upload record completes into (a serialized partial ObjectEntry), so that ListParts
    and ListMultipartUploads need no metadata read per row. Nothing for other buckets."""
    if meta.bucket != SYSTEM_BUCKET:
        return b""
    extra = storage_pb2.ObjectEntry()
    if meta.HasField("upload"):
        extra.upload.CopyFrom(meta.upload)
    if meta.parts:
        extra.part.CopyFrom(meta.parts[0])
    return extra.SerializeToString(deterministic=True)


def _entry_of(row: Row) -> storage_pb2.ObjectEntry:
    entry = storage_pb2.ObjectEntry.FromString(row.extra) if row.extra else storage_pb2.ObjectEntry()
    entry.key, entry.size, entry.etag, entry.mtime_ns, entry.data_id = (row.key, row.size, row.etag, row.mtime_ns,
                                                                        row.data_id)
    return entry


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


FORMAT_VERSION = 1


@dataclass(frozen=True)
class DriveIdentity:
    """Where a drive belongs: written into its format file, checked at every start."""

    deployment_id: str
    set_index: int
    drive_index: int

    def to_json(self) -> bytes:
        return json.dumps({"format_version": FORMAT_VERSION, "deployment_id": self.deployment_id,
                           "set_index": self.set_index, "drive_index": self.drive_index}, indent=2).encode()


class Drive:
    """A drive folder; see the module docstring for its layout and commit protocol."""

    def __init__(self, root: Path, identity: DriveIdentity | None = None, *, reconcile_in_background: bool = False):
        """`reconcile_in_background`: the index reconcile at start (one stat per object) runs in
        a thread, and listings wait for it; else it runs here."""
        self.root = Path(root)
        self.identity = identity
        self.tmp = self.root / "tmp"
        self.buckets = self.root / "buckets"
        self.format_file = self.root / ".sealstore" / "format.json"
        self.state, self.refusal = "online", ""
        self._retained: deque[tuple[float, Path, str]] = deque()
        """(expiry, object folder, data_id) of previous versions kept for an undo."""
        self._retained_lock = threading.Lock()
        self._folder_locks: dict[Path, tuple[threading.Lock, int]] = {}
        """Lock and number of holders or waiters of each object folder in use."""
        self._folder_locks_guard = threading.Lock()
        self.index: ListingIndex | None = None
        self._index_ready = threading.Event()
        self._index_stale = False
        """An index write failed: the next listing reconciles first."""
        self._reconcile_lock = threading.Lock()
        self._layout_lock = threading.Lock()
        self._warned: dict[Path, tuple[int, int] | None] = {}
        """Bad metadata files already logged, with the size and mtime they had then."""
        self._check_format()
        if self.refusal:
            log.error("drive %s refused: %s", self.root, self.refusal)
            return
        self.ensure_layout()
        self._clean_tmp()
        self._open_index(reconcile_in_background)

    def _check_format(self) -> None:
        """Refuses a drive whose format file names another deployment or slot (never writes to it)."""
        if self.identity is None or not self.format_file.exists():
            return
        try:
            found = json.loads(self.format_file.read_text())
            deployment, set_index, drive_index = found["deployment_id"], found["set_index"], found["drive_index"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.state, self.refusal = "foreign", f"unreadable format file {self.format_file}: {exc}"
            return
        if deployment != self.identity.deployment_id:
            self.state = "foreign"
            self.refusal = (f"{self.root} belongs to deployment {deployment}, not to this one "
                            f"({self.identity.deployment_id}); it is not used and nothing is written to it")
        elif (set_index, drive_index) != (self.identity.set_index, self.identity.drive_index):
            self.state = "misplaced"
            self.refusal = (f"{self.root} is drive {drive_index} of set {set_index}, but is mounted as drive "
                            f"{self.identity.drive_index} of set {self.identity.set_index}; "
                            f"put it back in its slot (it is not used meanwhile)")

    def ensure_layout(self) -> None:
        """Creates the drive's folders and format file if they are missing (new or emptied drive)."""
        if self.refusal:
            raise errors.ServiceUnavailable(f"drive refused: {self.refusal}")
        if self._laid_out():
            return
        with self._layout_lock:
            self._make_layout()

    def _laid_out(self) -> bool:
        return (self.buckets.is_dir() and self.tmp.is_dir() and (self.identity is None or self.format_file.exists())
                and (self.buckets / SYSTEM_BUCKET / "bucket.json").exists())

    def _make_layout(self) -> None:
        if self._laid_out():
            return  # another thread did it
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(exist_ok=True)
        self.buckets.mkdir(exist_ok=True)
        system = self.buckets / SYSTEM_BUCKET
        if not (system / "bucket.json").exists():
            # created_ns 0 on every drive: the copies agree byte for byte (bucket quorum, heal).
            _mkdirs_durable(system / "objects", self.buckets)
            write_file_atomic(system / "bucket.json", _to_json(types_pb2.BucketInfo(name=SYSTEM_BUCKET)), mode=0o644)
        if self.identity is not None and not self.format_file.exists():
            self.format_file.parent.mkdir(exist_ok=True)
            write_file_atomic(self.format_file, self.identity.to_json(), mode=0o644)
            log.info("drive %s formatted as drive %d of set %d", self.root, self.identity.drive_index,
                     self.identity.set_index)
        _fsync_dir(self.root)
        if self.index is not None:
            # The drive was emptied while we ran (replaced disk): so was its index file.
            self._open_index(background=False)

    def _clean_tmp(self) -> None:
        # Uploads whose stream or commit was interrupted by a restart can never be committed.
        for leftover in self.tmp.iterdir():
            try:
                if leftover.is_dir():
                    shutil.rmtree(leftover)
                else:
                    leftover.unlink()
            except OSError as exc:
                log.warning("cannot remove leftover %s: %s", leftover, exc)

    # ---- buckets -------------------------------------------------------------------------

    def _bucket_dir(self, bucket: str) -> Path:
        validate_bucket_name(bucket)
        return self.buckets / bucket

    def _existing_bucket_dir(self, bucket: str) -> Path:
        path = self._bucket_dir(bucket)
        if not (path / "bucket.json").exists():
            if bucket != SYSTEM_BUCKET:
                raise errors.NoSuchBucket(resource=bucket)
            self.ensure_layout()  # the drive was emptied while we ran: the system bucket comes back first
        return path

    def has_bucket(self, bucket: str) -> bool:
        return (self._bucket_dir(bucket) / "bucket.json").exists()

    def make_bucket(self, bucket: str, created_ns: int,
                    info: types_pb2.BucketInfo | None = None) -> types_pb2.BucketInfo:
        """Creates the bucket; `info` (healing): with that configuration. The system bucket is
        made with the drive's layout (this only puts it back on an emptied drive)."""
        self.ensure_layout()
        if bucket == SYSTEM_BUCKET:
            return self.get_bucket(bucket)
        path = self._bucket_dir(bucket)
        if (path / "bucket.json").exists():
            raise errors.BucketAlreadyOwnedByYou(resource=bucket)
        made = types_pb2.BucketInfo(name=bucket, created_ns=created_ns)
        if info is not None:
            made.CopyFrom(info)
            made.name = bucket
        _mkdirs_durable(path / "objects", self.buckets)
        write_file_atomic(path / "bucket.json", _to_json(made), mode=0o644)
        return made

    def get_bucket(self, bucket: str) -> types_pb2.BucketInfo:
        raw = (self._existing_bucket_dir(bucket) / "bucket.json").read_bytes()
        return PARSED.parse(types_pb2.BucketInfo, raw,
                            lambda r: json_format.Parse(r, types_pb2.BucketInfo(), ignore_unknown_fields=True))

    def list_buckets(self, include_system: bool = False) -> list[types_pb2.BucketInfo]:
        """The S3 buckets on the drive; with `include_system`, the system bucket too."""
        infos = []
        if not self.buckets.is_dir():  # emptied while running: no buckets until healed
            return infos
        for path in sorted(self.buckets.iterdir()):
            if path.name == SYSTEM_BUCKET and not include_system:
                continue
            if (path / "bucket.json").exists():
                infos.append(self.get_bucket(path.name))
        return infos

    def set_bucket_encryption(self, bucket: str, enc: types_pb2.BucketEncryption) -> types_pb2.BucketInfo:
        if bucket == SYSTEM_BUCKET:
            raise errors.InvalidBucketName(f"{bucket} is a system bucket", resource=bucket)
        info = self.get_bucket(bucket)
        info.ClearField("encryption")
        if enc.sse_algorithm:
            info.encryption.CopyFrom(enc)
        write_file_atomic(self._bucket_dir(bucket) / "bucket.json", _to_json(info), mode=0o644)
        return info

    def update_bucket(self, bucket: str, request: storage_pb2.UpdateBucketRequest) -> types_pb2.BucketInfo:
        """Replaces the bucket's policy and/or tags (each only when its set_ flag is on)."""
        if bucket == SYSTEM_BUCKET:
            raise errors.InvalidBucketName(f"{bucket} is a system bucket", resource=bucket)
        info = self.get_bucket(bucket)
        if request.set_policy:
            info.policy_json = request.policy_json
        if request.set_tags:
            info.tags.clear()
            info.tags.update(request.tags)
        write_file_atomic(self._bucket_dir(bucket) / "bucket.json", _to_json(info), mode=0o644)
        return info

    def is_bucket_empty(self, bucket: str) -> bool:
        objects = self._existing_bucket_dir(bucket) / "objects"
        return next(self._meta_files(objects), None) is None

    def delete_bucket(self, bucket: str) -> None:
        if bucket == SYSTEM_BUCKET:
            raise errors.InvalidBucketName(f"{bucket} is a system bucket", resource=bucket)
        path = self._existing_bucket_dir(bucket)
        if not self.is_bucket_empty(bucket):
            raise errors.BucketNotEmpty(resource=bucket)
        # bucket.json goes first so a crash mid-way leaves no half-visible bucket.
        (path / "bucket.json").unlink()
        _fsync_dir(path)
        shutil.rmtree(path, ignore_errors=True)
        _fsync_dir(self.buckets)
        self._index_write(lambda index: index.drop_bucket(bucket))

    # ---- concurrency and the listing index ------------------------------------------------

    @contextmanager
    def _locked(self, obj_dir: Path):
        """Holds the lock of one object folder (see the module doc)."""
        with self._folder_locks_guard:
            lock, users = self._folder_locks.get(obj_dir, (None, 0))
            if lock is None:
                lock = threading.Lock()
            self._folder_locks[obj_dir] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._folder_locks_guard:
                lock, users = self._folder_locks[obj_dir]
                if users == 1:
                    del self._folder_locks[obj_dir]
                else:
                    self._folder_locks[obj_dir] = (lock, users - 1)

    def _open_index(self, background: bool) -> None:
        if self.index is not None:
            self.index.close()
        self._index_ready.clear()
        path = self.root / ".sealstore" / INDEX_FILE
        path.parent.mkdir(exist_ok=True)
        self.index, recreated = ListingIndex.open_or_recreate(path)
        if recreated:
            log.warning("drive %s: listing index unreadable (%s); rebuilding it from the metadata files",
                        self.root, recreated)
        if background:
            threading.Thread(target=self._reconcile_index, name=f"index-{self.root.name}", daemon=True).start()
        else:
            self._reconcile_index()

    def _index_write(self, write) -> None:
        """Applies one index update. The meta.json files are the truth: a failed index write does
        not fail the drive call that made the change, it makes the next listing reconcile first."""
        try:
            write(self.index)
        except sqlite3.Error as exc:
            self._index_stale = True
            log.warning("drive %s: listing index update failed (%s); it is reconciled before the next listing",
                        self.root, exc)

    def _index_current(self, bucket: str, key: str, obj_dir: Path,
                       written: types_pb2.ObjectMeta | None = None) -> None:
        """Records the key's current meta.json in the index (the caller holds the folder lock);
        `written`: what the caller just wrote there (then the file is not read back)."""
        path = obj_dir / "meta.json"
        try:
            identity = _file_identity(path)
            # An incomplete one is read back, and found corrupt, as any reader would find it.
            meta = written if written is not None and _is_complete(written) else \
                _parse_meta(path.read_bytes(), path, self.root)
        except (FileNotFoundError, CorruptMetadata):
            self._index_write(lambda index: index.remove(bucket, key))
            return
        self._index_write(lambda index: index.put(bucket, _row_of(meta, identity)))

    def _reconcile_index(self) -> None:
        """Makes the index agree with the meta.json files: one stat per object, a parse of the
        files that changed since their row was written, rows of vanished or unreadable files
        dropped. Safe beside commits and deletes: its writes are compare-and-swap on the row
        it read before walking (a row a commit wrote meanwhile is never overwritten)."""
        with self._reconcile_lock:
            self._index_stale = False
            started = time.monotonic()
            parsed = 0
            try:
                self.index.refresh()
                self.index.lost_rows = False  # what this walk puts back
                present = {b.name for b in self.buckets.iterdir() if (b / "bucket.json").exists()} \
                    if self.buckets.is_dir() else set()
                for gone in self.index.buckets() - present:
                    self.index.drop_bucket(gone)
                for bucket in sorted(present):
                    parsed += self._reconcile_bucket(bucket)
            except (OSError, sqlite3.Error) as exc:
                self._index_stale = True
                log.error("drive %s: listing index reconcile failed: %s", self.root, exc)
            finally:
                self._index_ready.set()
            took = time.monotonic() - started
            if parsed or took > 1:
                log.info("drive %s: listing index reconciled in %.1f s (%d metadata files read)", self.root, took,
                         parsed)

    def _reconcile_bucket(self, bucket: str) -> int:
        known = self.index.idents(bucket)
        by_folder = {_key_hash(key): (key, ident) for key, ident in known.items()}
        found: set[str] = set()
        changes: list[tuple[str, str | None, Row | None]] = []
        parsed = 0
        for path in self._meta_files(self.buckets / bucket / "objects"):
            folder = path.parent.name
            try:
                identity = identity_text(_file_identity(path))
            except FileNotFoundError:
                continue
            key, ident = by_folder.get(folder, (None, None))
            if ident == identity:
                found.add(key)
                continue
            parsed += 1
            meta = self._listable_meta(path, bucket)
            if meta is None:
                continue  # its row, if any, is dropped below
            found.add(meta.key)
            changes.append((meta.key, known.get(meta.key), _row_of(meta, identity)))
            if len(changes) >= 5000:
                self.index.replace_many(bucket, changes)
                changes.clear()
        changes.extend((key, ident, None) for key, ident in known.items() if key not in found)
        self.index.replace_many(bucket, changes)
        return parsed

    def _listable_meta(self, path: Path, bucket: str) -> types_pb2.ObjectMeta | None:
        """The ObjectMeta of `path` if it may be listed: readable, naming this bucket and a key
        that hashes to its folder. A metadata file moved or copied from elsewhere (or rotten)
        would list another object's name here; such files are logged once and not listed (reads
        of the key treat them as bad copies and healing replaces them)."""
        try:
            meta = _parse_meta(path.read_bytes(), path, self.root)
        except FileNotFoundError:
            return None
        except CorruptMetadata as err:
            self._warn_once(path, err.message)
            return None
        h = _key_hash(meta.key)
        if meta.bucket != bucket or path.parent.name != h or path.parent.parent.name != h[:2]:
            # Stored names through repr only: they are whatever bytes the file holds.
            self._warn_once(path, f"{path.relative_to(self.root)} names another object "
                                  f"({meta.bucket!r}/{meta.key!r}); not listed")
            return None
        return meta

    # ---- objects -------------------------------------------------------------------------

    def _object_dir(self, bucket: str, key: str) -> Path:
        validate_key(key)
        h = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return self._existing_bucket_dir(bucket) / "objects" / h[:2] / h

    @staticmethod
    def _meta_files(objects: Path):
        if not objects.exists():
            return
        for fan in objects.iterdir():
            if not fan.is_dir():
                continue
            for obj in fan.iterdir():
                meta = obj / "meta.json"
                if meta.exists():
                    yield meta

    def _read_meta(self, obj_dir: Path) -> types_pb2.ObjectMeta | None:
        """The object's metadata, None if it has none; CorruptMetadata if it is unreadable."""
        path = obj_dir / "meta.json"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return _parse_meta(raw, path, self.root)
        except CorruptMetadata as err:
            self._warn_once(path, err.message)
            raise

    def _read_meta_or_corrupt(self, obj_dir: Path) -> tuple[types_pb2.ObjectMeta | None, CorruptMetadata | None]:
        try:
            return self._read_meta(obj_dir), None
        except CorruptMetadata as err:
            return None, err

    def _warn_once(self, path: Path, message: str) -> None:
        """Logs a bad file once per content (size and mtime), not on every read or listing."""
        try:
            st = path.stat()
            seen = (st.st_size, st.st_mtime_ns)
        except OSError:
            seen = None
        if self._warned.get(path) == seen:
            return
        if len(self._warned) >= 10_000:
            self._warned.clear()
        self._warned[path] = seen
        log.warning("drive %s: %s", self.root, message)

    def _tmp_shard(self, upload_id: str) -> Path:
        validate_upload_id(upload_id)
        return self.tmp / f"{upload_id}.shard"

    def open_upload(self, upload_id: str, bucket: str, data_id: str = "") -> ShardWriter:
        """A writer for the temporary shard of `upload_id`, to be committed as `data_id`, to which
        its block checksums are bound (none given: not bound, as shards were before); the
        bucket must exist."""
        self._existing_bucket_dir(bucket)
        self.ensure_layout()
        path = self._tmp_shard(upload_id)
        try:
            if data_id:
                validate_upload_id(data_id)
            return ShardWriter(path, data_id)
        except FileExistsError:
            raise errors.InvalidRequest(f"upload {upload_id} already has a shard on this drive") from None

    def abort_upload(self, upload_id: str) -> None:
        try:
            self._tmp_shard(upload_id).unlink()
        except FileNotFoundError:
            pass

    def commit_object(self, upload_id: str, meta: types_pb2.ObjectMeta, *, conditional: bool = False,
                      expect_data_id: str = "", inline_block: bytes | None = None,
                      part_uploads: dict[str, str] | None = None, shard_block: bytes | None = None) -> None:
        """Makes the uploaded shard and `meta` the current version of meta.key (see _commit).
        `shard_block`: a one-stripe object's whole shard, written here as the upload's temporary
        shard first (storage.proto CommitObjectRequest.shard_block); removed if the commit fails."""
        obj_dir = self._object_dir(meta.bucket, meta.key)
        if shard_block:
            self._upload_one_block(upload_id, meta, conditional, shard_block)
        self._expire_retained()
        try:
            with self._locked(obj_dir):
                stored = self._commit(upload_id, meta, obj_dir, conditional, expect_data_id, inline_block,
                                      part_uploads or {})
                self._index_current(meta.bucket, meta.key, obj_dir, stored)
        except BaseException:
            if shard_block:
                self.abort_upload(upload_id)
            raise

    def _upload_one_block(self, upload_id: str, meta: types_pb2.ObjectMeta, conditional: bool, block: bytes) -> None:
        if meta.inline or conditional or is_composite(meta) or meta.erasure.stripe_count != 1:
            raise errors.InvalidArgument("a shard block is sent only with the commit of a one-stripe object "
                                         "stored in a shard file")
        if meta.data_id != upload_id:
            raise errors.InvalidArgument(f"meta.data_id {meta.data_id!r} differs from upload id {upload_id!r}")
        writer = self.open_upload(upload_id, meta.bucket, meta.data_id)
        try:
            writer.write_block(block)
            writer.finish()
        except BaseException:
            writer.discard()
            raise

    def _commit(self, upload_id: str, meta: types_pb2.ObjectMeta, obj_dir: Path, conditional: bool,
                expect_data_id: str, inline_block: bytes | None, part_uploads: dict[str, str]) -> types_pb2.ObjectMeta:
        """Makes the uploaded shard and `meta` the current version of meta.key (see module doc);
        returns the metadata written.

        `conditional` (healing): only if the current version's data_id is `expect_data_id` ("" =
        no copy, CORRUPT_COPY = an unreadable copy), else PreconditionFailed; the upload id may
        then differ from meta.data_id.
        `meta.inline`: the shard is `inline_block` (no uploaded shard), kept inside meta.json.
        A multipart object is committed here only by healing: `part_uploads` (part data_id ->
        upload id) are its rebuilt part shards, and every other part's shard must be on the drive.
        An unreadable current copy is overwritten like any other, but never kept for an undo."""
        composite = is_composite(meta)
        if meta.data_id != upload_id and not conditional:
            raise errors.InvalidArgument(f"meta.data_id {meta.data_id!r} differs from upload id {upload_id!r}")
        validate_upload_id(meta.data_id)
        _check_parts(meta)
        if composite and not conditional:
            raise errors.InvalidArgument("a multipart object is made by CompleteMultipart, not CommitObject")
        if part_uploads and not composite:
            raise errors.InvalidArgument("part_uploads is for healing a multipart object")
        stored = types_pb2.ObjectMeta()
        stored.CopyFrom(meta)
        uploads: dict[str, Path] = {}
        """Shard file name in the object's folder -> the temporary shard that becomes it."""
        if meta.inline:
            # Never trust a caller's framing: frame (and checksum) the block here.
            stored.inline_shard = frame_blocks([inline_block] if inline_block else [])
            if meta.erasure.stripe_count != (1 if inline_block else 0):
                raise errors.InvalidArgument(f"an inline object has {meta.erasure.stripe_count} stripes, "
                                             f"and {'one' if inline_block else 'no'} block was sent")
        else:
            stored.ClearField("inline_shard")
            named = {p.data_id for p in meta.parts} if composite else {meta.data_id}
            for data_id, upload in (part_uploads.items() if composite else [(meta.data_id, upload_id)]):
                if data_id not in named:
                    raise errors.InvalidArgument(f"{data_id!r} is not a part of {meta.bucket}/{meta.key}")
                uploads[f"{data_id}.shard"] = self._tmp_shard(upload)
            for tmp in uploads.values():
                if not tmp.exists():
                    raise errors.InvalidRequest(f"upload {tmp.stem} has no shard on this drive")
        previous, corrupt = self._read_meta_or_corrupt(obj_dir)
        held = CORRUPT_COPY if corrupt else previous.data_id if previous is not None else ""
        if conditional and held != expect_data_id:
            for tmp in uploads.values():
                tmp.unlink(missing_ok=True)
            raise errors.PreconditionFailed(
                f"{meta.bucket}/{meta.key} changed on this drive while it was healed "
                f"(now {held or 'absent'}, expected {expect_data_id or 'absent'})")
        absent = sorted(n for n in shard_names(meta) - set(uploads) if not (obj_dir / n).exists())
        if absent:
            for tmp in uploads.values():
                tmp.unlink(missing_ok=True)
            raise errors.InvalidRequest(f"{meta.bucket}/{meta.key}: shards {', '.join(absent)} are neither on "
                                        f"this drive nor rebuilt")
        _mkdirs_durable(obj_dir, self.buckets)
        retain = not conditional and previous is not None and previous.data_id != meta.data_id
        self._install(obj_dir, stored, previous, retain, uploads)
        if uploads:
            _fsync_dir(self.tmp)
        return stored

    def _install(self, obj_dir: Path, stored: types_pb2.ObjectMeta, previous: types_pb2.ObjectMeta | None,
                 retain: bool, placed: dict[str, Path]) -> None:
        """Renames each of `placed` (shard file name -> where it is now) into the object's folder,
        then makes `stored` the current version (the commit protocol of the module doc);
        `retain`: `previous` is kept for an undo, else its shards that `stored` does not name go."""
        if retain:
            # An older kept version is no longer needed. Its removal is made durable by the
            # folder fsync of meta.json's write below; a crash before it can bring back that
            # prev.json (replaced below) or an orphan shard (heal removes those).
            self._drop_retained(obj_dir, None, durable=False, current=previous)
            self._keep_current(obj_dir)
        for name, source in placed.items():
            if source != obj_dir / name:
                os.replace(source, obj_dir / name)
        try:
            # write_file_atomic fsyncs obj_dir after its rename, which also makes the shard renames durable.
            _write_meta(obj_dir / "meta.json", stored)
        except OSError:
            # A full drive fails here: drop the shards no meta.json names, so the failed commit
            # gives its space back instead of leaving orphans until the next heal.
            for name in set(placed) - shard_names(previous):
                (obj_dir / name).unlink(missing_ok=True)
            if retain:
                (obj_dir / PREVIOUS_VERSION_FILE).unlink(missing_ok=True)
            raise
        if retain:
            with self._retained_lock:
                self._retained.append((time.monotonic() + RETAIN_PREVIOUS_SECONDS, obj_dir, previous.data_id))
            return
        stale = shard_names(previous) - shard_names(stored)
        for name in stale:
            (obj_dir / name).unlink(missing_ok=True)
        if stale:
            _fsync_dir(obj_dir)

    def complete_multipart(self, meta: types_pb2.ObjectMeta, upload_id: str) -> None:
        """CompleteMultipart on this drive (storage.proto): moves each part's shard out of its
        part object into the object's folder, commits `meta` as commit_object does (the replaced
        version kept for the undo), then removes the upload's record and part objects.

        A part whose object is absent or unreadable here, or names another object (moved or
        edited on the drive), stays missing (healing rebuilds it from the other drives); a part
        object holding another data id than the one named fails the whole call with InvalidPart
        before anything moves. Idempotent: a retry finds the shards moved, or the version current."""
        multipart.validate_upload_id(upload_id)
        if meta.bucket == SYSTEM_BUCKET:
            raise errors.InvalidBucketName("an upload cannot complete into the system bucket", resource=meta.bucket)
        if meta.data_id != upload_id or not is_composite(meta) or meta.inline:
            raise errors.InvalidArgument("CompleteMultipart takes a multipart object's metadata whose data_id "
                                         "is the upload id")
        validate_upload_id(meta.data_id)
        _check_parts(meta)
        obj_dir = self._object_dir(meta.bucket, meta.key)
        self._existing_bucket_dir(SYSTEM_BUCKET)
        self._expire_retained()
        with self._locked(obj_dir):
            previous, _ = self._read_meta_or_corrupt(obj_dir)
            if previous is None or previous.data_id != meta.data_id:
                _mkdirs_durable(obj_dir, self.buckets)
                placed = self._take_parts(meta, upload_id, obj_dir)
                stored = types_pb2.ObjectMeta()
                stored.CopyFrom(meta)
                stored.ClearField("inline_shard")
                self._install(obj_dir, stored, previous, previous is not None, placed)
                self._index_current(meta.bucket, meta.key, obj_dir, stored)
        self._remove_upload(meta.bucket, upload_id, [p.number for p in meta.parts])

    def _take_parts(self, meta: types_pb2.ObjectMeta, upload_id: str, obj_dir: Path) -> dict[str, Path]:
        """Moves this drive's part shards into `obj_dir`; returns shard file name -> its new path.
        Every part is checked before any moves, so that an InvalidPart moves nothing; a part
        object replaced since its check (uploaded again) is left where it is."""
        objects = self._existing_bucket_dir(SYSTEM_BUCKET) / "objects"
        rows = self._indexed_rows(multipart.parts_prefix(meta.bucket, upload_id))
        # Without its record here, the upload was aborted (or never reached this drive): a part
        # it lacks must not become a hole in a new object.
        record = _identity_or_none(_folder_of(objects, multipart.record_key(meta.bucket, upload_id)) / "meta.json")
        found: dict[str, tuple[Path, str]] = {}
        for part in meta.parts:
            name = f"{part.data_id}.shard"
            if (obj_dir / name).exists():
                continue  # moved by an earlier attempt
            key = multipart.part_key(meta.bucket, upload_id, part.number)
            part_dir = _folder_of(objects, key)
            with self._locked(part_dir):
                held, identity = self._part_held(part_dir, key, rows.get(key))
                if held is None:
                    if record is None:
                        raise errors.NoSuchUpload(f"upload {upload_id} has no record and no part {part.number} "
                                                  f"on this drive")
                    continue
                if held.data_id != part.data_id:
                    raise errors.InvalidPart(f"part {part.number} of upload {upload_id} is {held.data_id} on this "
                                             f"drive, not {part.data_id}")
                if held.stripe_count != part.stripe_count or held.stored_size != part.stored_size:
                    raise errors.InvalidPart(f"part {part.number} of upload {upload_id}: its size or layout differs "
                                             f"from the completion's")
                if (part_dir / name).exists():
                    found[name] = (part_dir, identity)
        moved: dict[str, Path] = {}
        for name, (part_dir, identity) in found.items():
            with self._locked(part_dir):
                if _identity_or_none(part_dir / "meta.json") == identity:
                    os.replace(part_dir / name, obj_dir / name)
                    moved[name] = obj_dir / name
        return moved

    def _indexed_rows(self, prefix: str) -> dict[str, Row]:
        """The listing index's rows of `.multipart` under `prefix` (a cache, checked by the caller)."""
        rows: dict[str, Row] = {}
        if self.index is None:
            return rows
        self._index_ready.wait()
        after = ""
        try:
            while True:
                page = self.index.page(SYSTEM_BUCKET, prefix, after, 1000)
                rows.update((r.key, r) for r in page if r.key.startswith(prefix))
                if len(page) < 1000 or not page[-1].key.startswith(prefix):
                    return rows
                after = page[-1].key
        except sqlite3.Error as exc:
            log.warning("drive %s: listing index unreadable (%s); reading part metadata files", self.root, exc)
            return rows

    def _part_held(self, part_dir: Path, key: str, row: Row | None) -> tuple[types_pb2.ObjectPart | None, str]:
        """The part the part object `key` holds on this drive (its ObjectPart, with data_id the
        object's), and the identity of its meta.json; None when absent, unreadable or naming
        another object. From the index row when it was read from this very file (no parse)."""
        identity = _identity_or_none(part_dir / "meta.json")
        if identity is None:
            return None, ""
        if row is not None and row.ident == identity and row.extra:
            part = storage_pb2.ObjectEntry.FromString(row.extra).part
            if part.data_id == row.data_id:
                return part, identity
        held, corrupt = self._read_meta_or_corrupt(part_dir)
        if corrupt or held is None:
            return None, ""
        if held.bucket != SYSTEM_BUCKET or held.key != key or len(held.parts) != 1 \
                or held.parts[0].data_id != held.data_id:
            self._warn_once(part_dir / "meta.json", f"part object {key!r} holds another object "
                                                   f"({held.bucket!r}/{held.key!r}); not used")
            return None, ""
        return held.parts[0], identity

    def _remove_upload(self, bucket: str, upload_id: str, numbers: list[int]) -> None:
        """Removes the upload's record and every part object from this drive: the parts named, and
        every part the listing index holds under the upload's prefix."""
        keys = {multipart.record_key(bucket, upload_id)}
        keys.update(multipart.part_key(bucket, upload_id, n) for n in numbers)
        keys.update(self._indexed_rows(multipart.parts_prefix(bucket, upload_id)))
        objects = self._existing_bucket_dir(SYSTEM_BUCKET) / "objects"
        for key in sorted(keys):
            part_dir = _folder_of(objects, key)
            with self._locked(part_dir):
                # No fsync per folder: an upload's leftovers that a crash brings back are removed
                # by the upload expiry (their record is gone), never read.
                _remove_folder(part_dir)
        self._index_write(lambda index: index.remove_many(SYSTEM_BUCKET, keys))

    def _expire_retained(self) -> None:
        """Drops kept versions whose undo window is over, each under its own folder's lock (the
        caller holds none: one folder is never locked while another is)."""
        now = time.monotonic()
        while True:
            with self._retained_lock:
                if not self._retained or self._retained[0][0] > now:
                    return
                _, obj_dir, data_id = self._retained.popleft()
            with self._locked(obj_dir):
                self._drop_retained(obj_dir, data_id)

    @staticmethod
    def _keep_current(obj_dir: Path) -> None:
        """Makes the current meta.json also prev.json, the version an undo puts back, by a hard
        link rather than a copy: meta.json is never changed in place (always replaced by a
        rename), so the link keeps the replaced version's bytes, written and fsynced when that
        version was committed.

        Crash safety: made before meta.json changes, so a crash in between leaves a prev.json
        naming the current version, harmless (an undo never restores the version it undoes),
        dropped by the next overwrite or delete of the key. The link is an entry of the object's
        folder, made durable with the new meta.json by the folder fsync of its write: until that
        fsync returns, the commit is not acknowledged, and a link lost with a power cut costs
        nothing, since after a restart no undo comes (the quorum client undoes within its call
        timeouts, and kept versions are not tracked across restarts)."""
        current = obj_dir / "meta.json"
        link = obj_dir / f".{PREVIOUS_VERSION_FILE}.tmp"
        link.unlink(missing_ok=True)  # left by a crash (the caller holds the folder's lock)
        os.link(current, link)
        # Its mtime says since when it is kept (tests/durability reads prev.json's age); the
        # shared inode is meta.json's, which is replaced next.
        os.utime(link)
        os.replace(link, obj_dir / PREVIOUS_VERSION_FILE)

    def _drop_retained(self, obj_dir: Path, data_id: str | None, durable: bool = True,
                       current: types_pb2.ObjectMeta | None = None) -> None:
        """Removes the kept previous version `data_id` (None: whichever is kept) of an object, its
        shards only where meta.json does not name them (an undo may have made it current again).
        `durable`: fsyncs the folder (else the caller does). `current`: meta.json's version, if
        the caller has it (else it is read)."""
        prev = obj_dir / PREVIOUS_VERSION_FILE
        try:
            kept = _parse_meta(prev.read_bytes())
        except FileNotFoundError:
            return
        except Exception as exc:  # unparsable: nothing to restore from it
            log.warning("dropping unreadable %s: %s", prev, exc)
            kept = None
        if kept is not None and data_id is not None and kept.data_id != data_id:
            return  # a later overwrite kept another version here; its own entry drops it
        if current is None:
            try:
                current = self._read_meta(obj_dir)
            except Exception:
                current = None
        prev.unlink(missing_ok=True)
        stale = shard_names(kept) if kept is not None else {f"{data_id}.shard"} if data_id else set()
        for name in stale - shard_names(current):
            (obj_dir / name).unlink(missing_ok=True)
        if durable:
            _fsync_dir(obj_dir)

    def _kept_version(self, obj_dir: Path) -> types_pb2.ObjectMeta | None:
        """The previous version kept for an undo (prev.json), None if none or unreadable."""
        try:
            return _parse_meta((obj_dir / PREVIOUS_VERSION_FILE).read_bytes())
        except (OSError, CorruptMetadata):
            return None

    def _restore_previous(self, obj_dir: Path, failed: types_pb2.ObjectMeta) -> bool:
        """Undo of the overwrite that made `failed` current: puts back the version it replaced,
        if it was kept and is complete on this drive. False when there is none."""
        prev = obj_dir / PREVIOUS_VERSION_FILE
        try:
            raw = prev.read_bytes()
            kept = _parse_meta(raw)
        except FileNotFoundError:
            return False
        except Exception as exc:
            log.warning("cannot restore from %s: %s", prev, exc)
            return False
        if kept.data_id == failed.data_id or not all((obj_dir / n).exists() for n in shard_names(kept)):
            return False
        write_file_atomic(obj_dir / "meta.json", raw, mode=0o644)
        prev.unlink()
        for name in shard_names(failed) - shard_names(kept):
            (obj_dir / name).unlink(missing_ok=True)
        _fsync_dir(obj_dir)
        log.info("%s/%s: undone commit of %s, version %s restored", failed.bucket, failed.key, failed.data_id,
                 kept.data_id)
        return True

    def update_encryption(self, bucket: str, key: str, expect_data_id: str, encrypted_dek: bytes,
                          kms_key_version: int) -> None:
        """Key rewrap: replaces only the encrypted DEK and its key version in meta.json (atomic
        rewrite, shard untouched), if the current version is `expect_data_id`, else
        PreconditionFailed (a concurrent PUT or DELETE wins)."""
        obj_dir = self._object_dir(bucket, key)
        with self._locked(obj_dir):
            self._update_encryption(obj_dir, bucket, key, expect_data_id, encrypted_dek, kms_key_version)
            self._index_current(bucket, key, obj_dir)

    def _update_encryption(self, obj_dir: Path, bucket: str, key: str, expect_data_id: str, encrypted_dek: bytes,
                           kms_key_version: int) -> None:
        current = self._current_version(obj_dir, bucket, key, expect_data_id, "its key was rewrapped")
        if not current.HasField("encryption"):
            raise errors.InvalidRequest(f"{bucket}/{key} is not encrypted with SSE-KMS")
        current.encryption.encrypted_dek = encrypted_dek
        current.encryption.kms_key_version = kms_key_version
        _write_meta(obj_dir / "meta.json", current)

    def _current_version(self, obj_dir: Path, bucket: str, key: str, expect_data_id: str,
                         while_what: str) -> types_pb2.ObjectMeta:
        current = self._read_meta(obj_dir)
        if current is None or current.data_id != expect_data_id:
            raise errors.PreconditionFailed(
                f"{bucket}/{key} changed on this drive while {while_what} "
                f"(now {current.data_id if current is not None else 'absent'}, expected {expect_data_id})")
        return current

    def update_tags(self, bucket: str, key: str, expect_data_id: str, tags: dict[str, str]) -> None:
        """Object tagging: replaces the tags of version `expect_data_id` in meta.json (atomic
        rewrite, shards untouched); PreconditionFailed if another version is current."""
        obj_dir = self._object_dir(bucket, key)
        with self._locked(obj_dir):
            current = self._current_version(obj_dir, bucket, key, expect_data_id, "its tags were set")
            current.tags.clear()
            current.tags.update(tags)
            _write_meta(obj_dir / "meta.json", current)
            self._index_current(bucket, key, obj_dir)

    def check_shard(self, bucket: str, key: str, deep: bool = False) -> storage_pb2.CheckShardResponse:
        """This drive's copy of one object, for healing; removes orphan shard files of the key.

        It holds the folder's lock, so a shard file that meta.json does not name is never one a
        commit in progress is about to name."""
        if not self.has_bucket(bucket):
            State = storage_pb2.CheckShardResponse
            return State(state=State.NO_META, detail=f"bucket {bucket} missing")
        obj_dir = self._object_dir(bucket, key)
        with self._locked(obj_dir):
            return self._check_shard(obj_dir, deep)

    def _check_shard(self, obj_dir: Path, deep: bool) -> storage_pb2.CheckShardResponse:
        State = storage_pb2.CheckShardResponse
        meta, corrupt = self._read_meta_or_corrupt(obj_dir)
        if corrupt:
            # Which shard file is current is unknown: none is an orphan. The heal's commit
            # replaces the copy; a later check removes what it no longer names.
            return State(state=State.META_CORRUPT, detail=corrupt.message)
        orphans = 0
        if obj_dir.is_dir():
            # The version kept for an undo keeps its shards until its window is over.
            wanted = shard_names(meta) | shard_names(self._kept_version(obj_dir))
            for leftover in obj_dir.glob("*.shard"):
                if leftover.name not in wanted:
                    leftover.unlink(missing_ok=True)
                    orphans += 1
            if orphans:
                _fsync_dir(obj_dir)
        if meta is None:
            return State(state=State.NO_META, orphans_removed=orphans, detail="no metadata")
        if meta.inline:
            problem = verify_inline(meta.inline_shard, meta.erasure.stripe_count)
            meta.ClearField("inline_shard")
            return State(state=State.SHARD_CORRUPT if problem else State.OK, meta=meta, orphans_removed=orphans,
                         detail=problem, bad_shards=[meta.data_id] if problem else [])
        missing, bad = [], []
        for shard in shard_files(meta):
            path = obj_dir / f"{shard.data_id}.shard"
            if not path.exists():
                missing.append(shard.data_id)
                continue
            problem = verify_shard(path, shard.stripe_count, deep, shard.data_id)
            if problem:
                bad.append((shard.data_id, problem))
        composite = is_composite(meta)
        if missing:
            detail = f"part shards missing: {', '.join(missing)}" if composite else "shard file missing"
            return State(state=State.SHARD_MISSING, meta=meta, orphans_removed=orphans, detail=detail,
                         bad_shards=missing + [d for d, _ in bad])
        if bad:
            detail = "; ".join(f"part {d}: {p}" for d, p in bad) if composite else bad[0][1]
            return State(state=State.SHARD_CORRUPT, meta=meta, orphans_removed=orphans, detail=detail,
                         bad_shards=[d for d, _ in bad])
        return State(state=State.OK, meta=meta, orphans_removed=orphans)

    def corrupt_shards(self, meta: types_pb2.ObjectMeta) -> list[tuple[str, str]]:
        """Deep check of the shard files of version `meta`: (data_id, problem) of each shard with a
        block failing its checksum (or missing); empty when every block of every shard passes."""
        if meta.inline:
            return []  # check_shard verified every checksum of the inline shard already
        obj_dir = self._object_dir(meta.bucket, meta.key)
        found = []
        for shard in shard_files(meta):
            problem = verify_shard(obj_dir / f"{shard.data_id}.shard", shard.stripe_count, deep=True,
                                   data_id=shard.data_id)
            if problem:
                found.append((shard.data_id, problem))
        return found

    def verify_current_shard(self, meta: types_pb2.ObjectMeta) -> str:
        """Deep check of the shards of version `meta` ("" = every block passes its checksum)."""
        return "; ".join(p if len(meta.parts) <= 1 else f"part {d}: {p}" for d, p in self.corrupt_shards(meta))

    def get_object_meta(self, bucket: str, key: str, with_inline_shard: bool = False) -> types_pb2.ObjectMeta:
        """The current version's metadata; a small object's framed shard stays on the drive
        unless `with_inline_shard` (a GET about to read it), which also brings a one-stripe
        object's shard along (storage.proto ObjectRequest.with_inline_shard)."""
        obj_dir = self._object_dir(bucket, key)
        meta = self._read_meta(obj_dir)
        if meta is None:
            raise errors.NoSuchKey(resource=key)
        if not with_inline_shard:
            meta.ClearField("inline_shard")
        elif not meta.inline and not is_composite(meta) and meta.erasure.stripe_count == 1:
            meta.inline_shard = _one_stripe_shard(obj_dir, meta.data_id)
        return meta

    def open_shard(self, bucket: str, key: str, data_id: str) -> ShardReader:
        """A reader of the shard of version `data_id` (the current one if empty)."""
        obj_dir = self._object_dir(bucket, key)
        # Under the lock, an overwrite cannot remove the shard between meta.json's read and the
        # open (once open, the file stays readable even if it is removed).
        with self._locked(obj_dir):
            return self._open_shard(obj_dir, bucket, key, data_id)

    def _open_shard(self, obj_dir: Path, bucket: str, key: str, data_id: str) -> ShardReader:
        meta = self._read_meta(obj_dir)
        if meta is None:
            raise errors.NoSuchKey(resource=key)
        if meta.inline:
            if data_id and meta.data_id != data_id:
                raise errors.NoSuchKey(f"version {data_id} of {key!r} is no longer stored here", resource=key)
            return InlineShardReader(meta.inline_shard, meta.erasure.stripe_count, f"{meta.data_id} (inline)")
        files = shard_files(meta)
        chosen = next((f for f in files if f.data_id == data_id), None) if data_id else \
            files[0] if len(files) == 1 else None
        if chosen is None:
            if is_composite(meta) and data_id in ("", meta.data_id):
                raise errors.InvalidArgument(f"{bucket}/{key} is a multipart object: a shard read names the data "
                                             f"id of one of its parts")
            raise errors.NoSuchKey(f"version {data_id} of {key!r} is no longer stored here", resource=key)
        try:
            reader = ShardReader(obj_dir / f"{chosen.data_id}.shard", chosen.stripe_count, chosen.data_id)
        except FileNotFoundError:
            what = f"part {chosen.data_id}" if is_composite(meta) else "the shard file"
            raise errors.ObjectTampered(f"{what} of {bucket}/{key} is missing", resource=key) from None
        try:
            reader.check_size()
        except BaseException:
            reader.close()
            raise
        return reader

    def delete_object(self, bucket: str, key: str, only_data_id: str = "") -> None:
        """Removes the object if present (idempotent). meta.json goes first: then it is invisible.

        With `only_data_id`, only if the current version is that one (undo of a failed commit)."""
        obj_dir = self._object_dir(bucket, key)
        with self._locked(obj_dir):
            self._delete(obj_dir, only_data_id)
            self._index_current(bucket, key, obj_dir)

    def _delete(self, obj_dir: Path, only_data_id: str) -> None:
        if not obj_dir.exists():
            return
        if only_data_id:
            current, _ = self._read_meta_or_corrupt(obj_dir)
            if current is None or current.data_id != only_data_id:
                return
            if self._restore_previous(obj_dir, current):
                return
        try:
            (obj_dir / "meta.json").unlink()
            _fsync_dir(obj_dir)
        except FileNotFoundError:
            pass
        # The h[:2] fan-out folder stays (256 at most per bucket): removing it when empty would
        # race with a commit of another key creating its folder there.
        shutil.rmtree(obj_dir, ignore_errors=True)

    def list_objects(self, bucket: str, prefix: str, start_after: str,
                     max_keys: int) -> tuple[list[storage_pb2.ObjectEntry], bool]:
        """Objects with `prefix` and key > `start_after`, in key order; at most max_keys (0 = 1000).

        Rows come from the listing index in key order; each returned row's meta.json is stat'ed
        (O(page)): a row whose file changed since it was indexed is re-read, and one whose file
        vanished, rotted or names another object is dropped (see _listable_meta), so the index
        never lists what the files do not hold.
        """
        if self.index is None:
            raise errors.ServiceUnavailable(f"drive refused: {self.refusal}")
        self._existing_bucket_dir(bucket)
        self._index_ready.wait()
        if self._index_stale or self.index.lost_rows or self.index.missing():
            self._reconcile_index()
        try:
            return self._list_page(bucket, prefix, start_after, max_keys)
        except sqlite3.DatabaseError as exc:
            # The index file rotted while we ran (it is written without fsync): rebuild it from
            # the metadata files rather than fail every listing until the next start.
            log.warning("drive %s: listing index unreadable (%s); rebuilding it", self.root, exc)
            with self._layout_lock:
                self.index.close()
                for suffix in ("", "-journal", "-wal", "-shm"):
                    Path(f"{self.index.path}{suffix}").unlink(missing_ok=True)
                self.index = None
                self._open_index(background=False)
            return self._list_page(bucket, prefix, start_after, max_keys)

    def _list_page(self, bucket: str, prefix: str, start_after: str,
                   max_keys: int) -> tuple[list[storage_pb2.ObjectEntry], bool]:
        max_keys = max_keys or DEFAULT_MAX_KEYS
        objects = self.buckets / bucket / "objects"
        entries: list[storage_pb2.ObjectEntry] = []
        after = start_after
        while len(entries) <= max_keys:
            wanted = max_keys + 1 - len(entries)
            rows = self.index.page(bucket, prefix, after, wanted)
            for row in rows:
                if not row.key.startswith(prefix):
                    return entries[:max_keys], len(entries) > max_keys
                after = row.key
                row = self._verified(bucket, objects, row)
                if row is not None:
                    entries.append(_entry_of(row))
            if len(rows) < wanted:
                break
        return entries[:max_keys], len(entries) > max_keys

    def _verified(self, bucket: str, objects: Path, row: Row) -> Row | None:
        """`row` if its meta.json is the file it was read from; else what that file says now."""
        h = _key_hash(row.key)
        path = objects / h[:2] / h / "meta.json"
        try:
            identity = identity_text(_file_identity(path))
        except FileNotFoundError:
            identity = None
        if identity == row.ident:
            return row
        meta = self._listable_meta(path, bucket) if identity is not None else None
        fresh = None if meta is None else _row_of(meta, identity)
        self._index_write(lambda index: index.replace_if(bucket, row.key, row.ident, fresh))
        return fresh

    def count_objects(self) -> int:
        """Objects the listing index holds (one query, not a walk of the drive)."""
        if self.refusal or self.index is None or not self.buckets.is_dir():  # emptied: until healed
            return 0
        return self.index.count()
