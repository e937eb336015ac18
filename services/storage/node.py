"""A storage node: the drives it serves, and bucket operations that span all of them.

Bucket metadata lives on every drive (each drive is a member of the erasure set and must be
able to answer on its own); object operations address one drive by index.

Methods run in the servicer's thread pool: bucket operations, which check every drive before
changing any, hold one lock so that two of them never interleave.
"""
from __future__ import annotations

import functools
import threading
from pathlib import Path

from sealstore import errors
from sealstore.multipart import SYSTEM_BUCKET
from sealstore.v1 import storage_pb2, types_pb2

from services.storage.drive import Drive, DriveIdentity, validate_bucket_name


def _one_at_a_time(method):
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._bucket_ops:
            return method(self, *args, **kwargs)
    return locked


class Node:
    """`identities[i]` (optional) is where drive i belongs; see drive.py on format files.

    A refused drive (foreign, misplaced) stays in the list, so drive indexes keep their
    meaning, but every call on it fails and bucket operations skip it."""

    def __init__(self, node_id: str, drive_paths: list[Path], identities: list[DriveIdentity] | None = None, *,
                 reconcile_in_background: bool = False):
        if not drive_paths:
            raise ValueError("a storage node needs at least one drive")
        if identities is not None and len(identities) != len(drive_paths):
            raise ValueError(f"{len(drive_paths)} drives but {len(identities)} set slots")
        self.node_id = node_id
        self._bucket_ops = threading.Lock()
        self.all_drives = [Drive(p, identities[i] if identities else None,
                                 reconcile_in_background=reconcile_in_background)
                           for i, p in enumerate(drive_paths)]

    @property
    def drives(self) -> list[Drive]:
        """The drives in use (not refused)."""
        return [d for d in self.all_drives if not d.refusal]

    def drive(self, index: int) -> Drive:
        if not 0 <= index < len(self.all_drives):
            raise errors.InvalidArgument(f"node {self.node_id} has no drive {index} (it has {len(self.all_drives)})")
        d = self.all_drives[index]
        if d.refusal:
            raise errors.ServiceUnavailable(f"node {self.node_id} drive {index} refused: {d.refusal}")
        return d

    @_one_at_a_time
    def make_bucket(self, bucket: str, created_ns: int,
                    info: types_pb2.BucketInfo | None = None) -> types_pb2.BucketInfo:
        # Drives that missed an earlier make (e.g. added later) get the bucket now; the call
        # only fails as "already owned" when every drive already had it.
        validate_bucket_name(bucket)
        made = [d.make_bucket(bucket, created_ns, info) for d in self.drives if not d.has_bucket(bucket)]
        if not made:
            raise errors.BucketAlreadyOwnedByYou(resource=bucket)
        return made[0]

    def get_bucket(self, bucket: str) -> types_pb2.BucketInfo:
        for d in self.drives:
            if d.has_bucket(bucket):
                return d.get_bucket(bucket)
        raise errors.NoSuchBucket(resource=bucket)

    def list_buckets(self, include_system: bool = False) -> list[types_pb2.BucketInfo]:
        """The S3 buckets; with `include_system`, the system bucket `.multipart` too (healing)."""
        by_name: dict[str, types_pb2.BucketInfo] = {}
        for d in self.drives:
            for info in d.list_buckets(include_system):
                by_name.setdefault(info.name, info)
        return [by_name[name] for name in sorted(by_name)]

    @_one_at_a_time
    def delete_bucket(self, bucket: str) -> None:
        if bucket == SYSTEM_BUCKET:
            raise errors.InvalidBucketName(f"{bucket} is a system bucket", resource=bucket)
        holders = [d for d in self.drives if d.has_bucket(bucket)]
        if not holders:
            raise errors.NoSuchBucket(resource=bucket)
        # Check every drive before deleting any, so a refusal leaves all drives unchanged.
        if any(not d.is_bucket_empty(bucket) for d in holders):
            raise errors.BucketNotEmpty(resource=bucket)
        for d in holders:
            d.delete_bucket(bucket)

    @_one_at_a_time
    def set_bucket_encryption(self, bucket: str, enc: types_pb2.BucketEncryption) -> types_pb2.BucketInfo:
        holders = [d for d in self.drives if d.has_bucket(bucket)]
        if not holders:
            raise errors.NoSuchBucket(resource=bucket)
        return [d.set_bucket_encryption(bucket, enc) for d in holders][0]

    @_one_at_a_time
    def update_bucket(self, request: storage_pb2.UpdateBucketRequest) -> types_pb2.BucketInfo:
        holders = [d for d in self.drives if d.has_bucket(request.bucket)]
        if not holders:
            raise errors.NoSuchBucket(resource=request.bucket)
        return [d.update_bucket(request.bucket, request) for d in holders][0]

    def count_objects(self) -> int:
        return sum(d.count_objects() for d in self.drives)
