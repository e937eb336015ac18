"""A drive made read-only or full under a running cluster (4 nodes, 2 data + 2 parity, write
quorum 3): writes reach quorum on the other drives or fail with the right S3 error, every object
written before reads back byte for byte, and a failed write leaves nothing visible.

The drives are small tmpfs mounts (root only): `chmod` does not stop root, and a read-only
remount or a full filesystem is what a failing or full disk looks like to the storage node."""
from __future__ import annotations

import errno
import os
import random
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from bench.load_cluster import prepare_bucket
from tests.cluster.harness import unique
from tests.faults.conftest import drive_paths

# Sizes that take each path: empty, inline (one write per drive), one streamed stripe, several.
SIZES = [0, 1000, 300_000, 2_500_000]


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def code_and_status(exc: ClientError) -> tuple[str, int]:
    return exc.response["Error"]["Code"], exc.response["ResponseMetadata"]["HTTPStatusCode"]


def sse_bucket(cluster) -> str:
    bucket = unique("faults")
    prepare_bucket(cluster, bucket, unique("faults-key"))
    return bucket


def put_all(s3, bucket: str, objects: dict[str, bytes]) -> None:
    for key, body in objects.items():
        answer = s3.put_object(Bucket=bucket, Key=key, Body=body)
        assert answer["ServerSideEncryption"] == "aws:kms"


def assert_all_readable(s3, bucket: str, objects: dict[str, bytes]) -> None:
    for key, body in objects.items():
        got = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert got == body, f"{key}: {len(got)} bytes back, {len(body)} written"
    listed = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
              for o in page.get("Contents", [])}
    assert listed == set(objects), f"listed {sorted(listed ^ set(objects))} differently"


def assert_refused(s3, bucket: str, key: str, body: bytes, expected: set[tuple[str, int]]) -> None:
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    assert code_and_status(caught.value) in expected, caught.value.response["Error"]


def assert_absent(s3, bucket: str, key: str) -> None:
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket=bucket, Key=key)
    assert code_and_status(caught.value) == ("NoSuchKey", 404)
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key=key)


def leftovers(drive: Path) -> list[Path]:
    """Upload temporaries, and shard files no meta.json names (a failed write's remains)."""
    found = list((drive / "tmp").iterdir())
    for meta_dir in (drive / "buckets").glob("*/objects/*/*"):
        shards = list(meta_dir.glob("*.shard"))
        meta = meta_dir / "meta.json"
        kept = meta_dir / "prev.json"  # the version an overwrite replaced, kept for its undo window
        named = "".join(p.read_text() for p in (meta, kept) if p.exists())
        found += [s for s in shards if s.stem not in named]
    return found


def assert_no_leftovers(drive: Path, timeout: float = 15.0) -> None:
    """Waits out the background repairs a GET starts (heal on read), which may hold a temporary
    shard for a moment, then expects nothing left behind."""
    deadline = time.monotonic() + timeout
    while leftovers(drive) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftovers(drive) == [], f"{drive}: a failed write left its bytes behind"


def fill(drive: Path) -> None:
    """Fills the drive's filesystem to the last byte with a file sealstore does not know."""
    fd = os.open(drive / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for chunk in (1 << 20, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


SLOW_DOWN = {("SlowDown", 503)}


def test_read_only_drive(cluster_on_tmpfs, mounts):
    c = cluster_on_tmpfs(["64m"] * 4)
    drives = drive_paths(c.data)
    s3 = c.s3()
    bucket = sse_bucket(c)
    objects = {f"before/{i}": payload(size, i) for i, size in enumerate(SIZES)}
    put_all(s3, bucket, objects)

    mounts.remount(drives[0], "ro")
    # One read-only drive of four: every write reaches the write quorum (3) on the others.
    written = {f"after/{i}": payload(size, 100 + i) for i, size in enumerate(SIZES)}
    written["before/1"] = payload(5000, 7)  # overwrite, inline
    written["before/2"] = payload(400_000, 8)  # overwrite, streamed
    put_all(s3, bucket, written)
    objects.update(written)
    s3.delete_object(Bucket=bucket, Key="before/3")
    del objects["before/3"]
    assert_absent(s3, bucket, "before/3")
    assert_all_readable(s3, bucket, objects)

    mounts.remount(drives[1], "ro")
    # Two of four: below the write quorum. 503 SlowDown; nothing half written becomes visible,
    # overwritten objects keep their previous version.
    for i, size in enumerate(SIZES[1:]):
        assert_refused(s3, bucket, f"refused/{i}", payload(size, 200 + i), SLOW_DOWN)
        assert_absent(s3, bucket, f"refused/{i}")
    assert_refused(s3, bucket, "before/1", payload(3000, 9), SLOW_DOWN)
    assert_refused(s3, bucket, "before/2", payload(600_000, 10), SLOW_DOWN)
    assert_all_readable(s3, bucket, objects)
    for drive in drives[2:]:
        assert_no_leftovers(drive)

    mounts.remount(drives[0], "rw")
    mounts.remount(drives[1], "rw")
    back = {"again/0": payload(700_000, 11)}
    put_all(s3, bucket, back)
    objects.update(back)
    assert_all_readable(s3, bucket, objects)


def test_full_drive(cluster_on_tmpfs):
    c = cluster_on_tmpfs(["16m"] * 4)
    drives = drive_paths(c.data)
    s3 = c.s3()
    bucket = sse_bucket(c)
    objects = {f"before/{i}": payload(size, i) for i, size in enumerate(SIZES)}
    put_all(s3, bucket, objects)

    fill(drives[0])
    # One full drive of four: writes reach quorum on the three others.
    written = {f"after/{i}": payload(size, 100 + i) for i, size in enumerate(SIZES)}
    written["before/2"] = payload(400_000, 8)
    put_all(s3, bucket, written)
    objects.update(written)
    assert_all_readable(s3, bucket, objects)
    assert_no_leftovers(drives[0])

    fill(drives[1])
    # Two full: neither success nor "full" reaches quorum, so SlowDown (as MinIO's write quorum error).
    for i, size in enumerate(SIZES[1:]):
        assert_refused(s3, bucket, f"refused/{i}", payload(size, 200 + i), SLOW_DOWN)
        assert_absent(s3, bucket, f"refused/{i}")
    # Overwrites of an object whose last version missed the full drive: refused, and that version
    # (on three drives, two of which the failed commit reached) stays readable.
    assert_refused(s3, bucket, "after/1", payload(3000, 12), SLOW_DOWN)
    assert_refused(s3, bucket, "before/2", payload(600_000, 13), SLOW_DOWN)
    assert_all_readable(s3, bucket, objects)

    fill(drives[2])
    fill(drives[3])
    # Every drive full: the drives agree, and the client learns why (MinIO's XMinioStorageFull, 507).
    for i, size in enumerate(SIZES[1:]):
        assert_refused(s3, bucket, f"full/{i}", payload(size, 300 + i), {("XMinioStorageFull", 507)})
        assert_absent(s3, bucket, f"full/{i}")
    assert_refused(s3, bucket, "before/1", payload(3000, 9), {("XMinioStorageFull", 507)})
    assert_all_readable(s3, bucket, objects)
    for drive in drives:
        assert_no_leftovers(drive)

    # Deleting works on a full drive and gives space back.
    for drive in drives:
        (drive / "filler").unlink()
    s3.delete_object(Bucket=bucket, Key="after/3")
    del objects["after/3"]
    back = {"again/0": payload(700_000, 11)}
    put_all(s3, bucket, back)
    objects.update(back)
    assert_all_readable(s3, bucket, objects)
