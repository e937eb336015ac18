"""A many-part upload on one real drive (1,000 parts here, SEALSTORE_TEST_PARTS=10000 for AWS's
maximum; writing the part files dominates the test's time): listing its parts page by page (what every member
does for ListParts and CompleteMultipartUpload) reads the listing index only, and completing it
moves every part shard and leaves nothing of the upload. The part objects are written as files
(as commits leave them, without a commit's fsyncs) and indexed by the drive's own reconcile."""
from __future__ import annotations

import os
import time
import uuid

from sealstore import multipart
from sealstore.erasure.framing import frame_blocks
from sealstore.multipart import SYSTEM_BUCKET
from sealstore.v1 import types_pb2
from services.storage.drive import Drive, _to_json

PARTS = int(os.environ.get("SEALSTORE_TEST_PARTS", "1000"))
LAYOUT = dict(data_shards=2, parity_shards=2, stripe_size=65536)


def write_parts(drive: Drive, bucket: str, upload_id: str, count: int) -> list[types_pb2.ObjectPart]:
    parts = []
    block = frame_blocks([b"p" * 64])
    for number in range(1, count + 1):
        data_id = uuid.uuid4().hex
        part = types_pb2.ObjectPart(number=number, data_id=data_id, size=5 << 20, stored_size=5 << 20,
                                    etag=f"{number:032x}", stripe_count=1, mtime_ns=number)
        key = multipart.part_key(bucket, upload_id, number)
        meta = types_pb2.ObjectMeta(format_version=1, bucket=SYSTEM_BUCKET, key=key, data_id=data_id,
                                    size=part.size, stored_size=part.stored_size, etag=part.etag, mtime_ns=number,
                                    erasure=types_pb2.ErasureLayout(**LAYOUT, stripe_count=1), parts=[part])
        folder = drive._object_dir(SYSTEM_BUCKET, key)
        folder.mkdir(parents=True)
        (folder / f"{data_id}.shard").write_bytes(block)
        (folder / "meta.json").write_bytes(_to_json(meta))
        parts.append(part)
    return parts


def test_many_parts_list_from_the_index_and_complete(tmp_path):
    drive = Drive(tmp_path / "drive")
    drive.make_bucket("big", 1)
    upload_id = uuid.uuid4().hex
    parts = write_parts(drive, "big", upload_id, PARTS)
    drive._reconcile_index()

    prefix = multipart.parts_prefix("big", upload_id)
    started = time.monotonic()
    listed, cursor = [], ""
    while True:
        entries, truncated = drive.list_objects(SYSTEM_BUCKET, prefix, cursor, 1000)
        listed += entries
        if not truncated:
            break
        cursor = entries[-1].key
    took = time.monotonic() - started
    assert [e.part.number for e in listed] == list(range(1, PARTS + 1))
    assert [e.part.data_id for e in listed] == [p.data_id for p in parts]
    print(f"\n{PARTS} parts listed in {took * 1000:.0f} ms on one drive (pages of 1000)")
    assert took < 10, f"listing {PARTS} parts took {took:.1f} s"

    meta = types_pb2.ObjectMeta(format_version=1, bucket="big", key="object", data_id=upload_id,
                                size=sum(p.size for p in parts), erasure=types_pb2.ErasureLayout(**LAYOUT),
                                parts=[e.part for e in listed])
    started = time.monotonic()
    drive.complete_multipart(meta, upload_id)
    took = time.monotonic() - started
    print(f"completed in {took * 1000:.0f} ms")
    assert took < 30, f"completing {PARTS} parts took {took:.1f} s"
    folder = drive._object_dir("big", "object")
    assert len(list(folder.glob("*.shard"))) == PARTS
    assert drive.list_objects(SYSTEM_BUCKET, "", "", 10) == ([], False)
    assert not list((drive.buckets / SYSTEM_BUCKET / "objects").rglob("meta.json"))
    assert drive.check_shard("big", "object").state == drive.check_shard("big", "object").OK
