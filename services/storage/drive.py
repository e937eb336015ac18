"""One drive folder of a storage node: buckets, object metadata and shard files.

Layout under the drive root:

    tmp/<upload_id>.shard                       shard of an upload in progress (removed on start)
    buckets/<bucket>/bucket.json                BucketInfo, protobuf JSON
    buckets/<bucket>/objects/<h[:2]>/<h>/       one folder per object key, h = sha256(key) hex,
        meta.json                               ObjectMeta (protobuf JSON, self-describing)
        <data_id>.shard                         the shard of the version meta.json names

Hashing the key gives every S3 key (up to 1024 bytes, any characters) a short, safe path;
the real key is inside meta.json.

Commit protocol (crash safety): the tmp shard is fsync'd when its stream ends; commit renames
it into the object folder, then writes meta.json atomically (temp file + fsync + rename +
directory fsync), and only then removes the previous version's shard. Until meta.json is
replaced, readers see the previous version (whose shard is still there); after, they see the
new one. A crash before the rename of meta.json leaves at most an orphan shard file that no
meta.json names.

Every method here is synchronous and does not yield, so inside the node's single asyncio
loop two calls on one drive never interleave (which is what makes read-modify-write of
meta.json safe without locks).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from pathlib import Path

from google.protobuf import json_format

from sealstore import errors
from sealstore.config import write_file_atomic
from sealstore.v1 import storage_pb2, types_pb2

from services.storage.shardfile import ShardReader, ShardWriter

log = logging.getLogger(__name__)

MAX_KEY_BYTES = 1024
DEFAULT_MAX_KEYS = 1000

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP_ADDRESS = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
# Upload ids become file names: keep them to a safe alphabet.
_UPLOAD_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")


def validate_bucket_name(name: str) -> None:
    """S3's rules: 3-63 chars of a-z 0-9 . -, starting and ending alphanumeric, no '..', not an IP."""
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


def _parse_meta(raw: bytes) -> types_pb2.ObjectMeta:
    return json_format.Parse(raw, types_pb2.ObjectMeta(), ignore_unknown_fields=True)


def _entry_of(meta: types_pb2.ObjectMeta) -> storage_pb2.ObjectEntry:
    return storage_pb2.ObjectEntry(key=meta.key, size=meta.size, etag=meta.etag,
                                   mtime_ns=meta.mtime_ns, data_id=meta.data_id)


class Drive:
    """A drive folder; see the module docstring for its layout and commit protocol."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.buckets = self.root / "buckets"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.buckets.mkdir(parents=True, exist_ok=True)
        self._clean_tmp()

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
            raise errors.NoSuchBucket(resource=bucket)
        return path

    def has_bucket(self, bucket: str) -> bool:
        return (self._bucket_dir(bucket) / "bucket.json").exists()

    def make_bucket(self, bucket: str, created_ns: int) -> types_pb2.BucketInfo:
        path = self._bucket_dir(bucket)
        if (path / "bucket.json").exists():
            raise errors.BucketAlreadyOwnedByYou(resource=bucket)
        info = types_pb2.BucketInfo(name=bucket, created_ns=created_ns)
        _mkdirs_durable(path / "objects", self.buckets)
        write_file_atomic(path / "bucket.json", _to_json(info), mode=0o644)
        return info

    def get_bucket(self, bucket: str) -> types_pb2.BucketInfo:
        path = self._existing_bucket_dir(bucket)
        return json_format.Parse((path / "bucket.json").read_bytes(), types_pb2.BucketInfo(),
                                 ignore_unknown_fields=True)

    def list_buckets(self) -> list[types_pb2.BucketInfo]:
        infos = []
        for path in sorted(self.buckets.iterdir()):
            if (path / "bucket.json").exists():
                infos.append(self.get_bucket(path.name))
        return infos

    def set_bucket_encryption(self, bucket: str, enc: types_pb2.BucketEncryption) -> types_pb2.BucketInfo:
        info = self.get_bucket(bucket)
        info.ClearField("encryption")
        if enc.sse_algorithm:
            info.encryption.CopyFrom(enc)
        write_file_atomic(self._bucket_dir(bucket) / "bucket.json", _to_json(info), mode=0o644)
        return info

    def is_bucket_empty(self, bucket: str) -> bool:
        objects = self._existing_bucket_dir(bucket) / "objects"
        return next(self._meta_files(objects), None) is None

    def delete_bucket(self, bucket: str) -> None:
        path = self._existing_bucket_dir(bucket)
        if not self.is_bucket_empty(bucket):
            raise errors.BucketNotEmpty(resource=bucket)
        # bucket.json goes first so a crash mid-way leaves no half-visible bucket.
        (path / "bucket.json").unlink()
        _fsync_dir(path)
        shutil.rmtree(path, ignore_errors=True)
        _fsync_dir(self.buckets)

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
        try:
            raw = (obj_dir / "meta.json").read_bytes()
        except FileNotFoundError:
            return None
        return _parse_meta(raw)

    def _tmp_shard(self, upload_id: str) -> Path:
        validate_upload_id(upload_id)
        return self.tmp / f"{upload_id}.shard"

    def open_upload(self, upload_id: str, bucket: str) -> ShardWriter:
        """A writer for the temporary shard of `upload_id`; the bucket must exist."""
        self._existing_bucket_dir(bucket)
        path = self._tmp_shard(upload_id)
        try:
            return ShardWriter(path)
        except FileExistsError:
            raise errors.InvalidRequest(f"upload {upload_id} already has a shard on this drive") from None

    def abort_upload(self, upload_id: str) -> None:
        try:
            self._tmp_shard(upload_id).unlink()
        except FileNotFoundError:
            pass

    def commit_object(self, upload_id: str, meta: types_pb2.ObjectMeta) -> None:
        """Makes the uploaded shard and `meta` the current version of meta.key (see module doc)."""
        if meta.data_id != upload_id:
            raise errors.InvalidArgument(f"meta.data_id {meta.data_id!r} differs from upload id {upload_id!r}")
        tmp = self._tmp_shard(upload_id)
        obj_dir = self._object_dir(meta.bucket, meta.key)
        if not tmp.exists():
            raise errors.InvalidRequest(f"upload {upload_id} has no shard on this drive")
        previous = self._read_meta(obj_dir)
        _mkdirs_durable(obj_dir, self.buckets)
        os.replace(tmp, obj_dir / f"{upload_id}.shard")
        # write_file_atomic fsyncs obj_dir after its rename, which also makes the shard rename durable.
        write_file_atomic(obj_dir / "meta.json", _to_json(meta), mode=0o644)
        _fsync_dir(self.tmp)
        if previous is not None and previous.data_id != upload_id:
            self._remove_shard(obj_dir, previous.data_id)
            _fsync_dir(obj_dir)

    @staticmethod
    def _remove_shard(obj_dir: Path, data_id: str) -> None:
        try:
            (obj_dir / f"{data_id}.shard").unlink()
        except FileNotFoundError:
            pass

    def get_object_meta(self, bucket: str, key: str) -> types_pb2.ObjectMeta:
        meta = self._read_meta(self._object_dir(bucket, key))
        if meta is None:
            raise errors.NoSuchKey(resource=key)
        return meta

    def open_shard(self, bucket: str, key: str, data_id: str) -> ShardReader:
        """A reader of the shard of version `data_id` (the current one if empty)."""
        obj_dir = self._object_dir(bucket, key)
        meta = self._read_meta(obj_dir)
        if meta is None:
            raise errors.NoSuchKey(resource=key)
        if data_id and meta.data_id != data_id:
            raise errors.NoSuchKey(f"version {data_id} of {key!r} is no longer stored here", resource=key)
        try:
            return ShardReader(obj_dir / f"{meta.data_id}.shard", meta.erasure.stripe_count)
        except FileNotFoundError:
            raise errors.ObjectTampered(f"the shard file of {bucket}/{key} is missing", resource=key) from None

    def delete_object(self, bucket: str, key: str, only_data_id: str = "") -> None:
        """Removes the object if present (idempotent). meta.json goes first: then it is invisible.

        With `only_data_id`, only if the current version is that one (undo of a failed commit)."""
        obj_dir = self._object_dir(bucket, key)
        if not obj_dir.exists():
            return
        if only_data_id:
            current = self._read_meta(obj_dir)
            if current is None or current.data_id != only_data_id:
                return
        try:
            (obj_dir / "meta.json").unlink()
            _fsync_dir(obj_dir)
        except FileNotFoundError:
            pass
        shutil.rmtree(obj_dir, ignore_errors=True)
        try:
            obj_dir.parent.rmdir()  # the h[:2] fan-out folder, if now empty
        except OSError:
            pass

    def list_objects(self, bucket: str, prefix: str, start_after: str,
                     max_keys: int) -> tuple[list[storage_pb2.ObjectEntry], bool]:
        """Objects with `prefix` and key > `start_after`, in key order; at most max_keys (0 = 1000).

        Keys are hashed on disk, so this reads every meta.json of the bucket: O(objects).
        """
        objects = self._existing_bucket_dir(bucket) / "objects"
        max_keys = max_keys or DEFAULT_MAX_KEYS
        entries = []
        for path in self._meta_files(objects):
            try:
                meta = _parse_meta(path.read_bytes())
            except FileNotFoundError:  # deleted while we walked
                continue
            if meta.key.startswith(prefix) and meta.key > start_after:
                entries.append(_entry_of(meta))
        entries.sort(key=lambda e: e.key)
        return entries[:max_keys], len(entries) > max_keys

    def count_objects(self) -> int:
        return sum(1 for b in self.buckets.iterdir() for _ in self._meta_files(b / "objects"))
