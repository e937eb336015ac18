"""Multipart objects and uploads in progress on a real cluster (boto3 through the gateway): one
shard file per part on every drive, nothing of a completed upload left in `.multipart`, and
lost part shards, a lost object folder and a lost part object of a pending upload all rebuilt
by `sealstore admin heal`, the object reading the same before and after."""
from __future__ import annotations

import hashlib
import json
import shutil

from tests.durability.conftest import drives, heal, payload

MIB = 1024 * 1024
BUCKET = "mp-durable"


def folder(drive, bucket: str, key: str):
    h = hashlib.sha256(key.encode()).hexdigest()
    return drive / "buckets" / bucket / "objects" / h[:2] / h


def test_multipart_part_shards_and_pending_uploads_are_healed(make_cluster):
    c = make_cluster(nodes=4)
    s3 = c.s3()
    s3.create_bucket(Bucket=BUCKET)
    # A bucket made on a write quorum only (a node that answered late) would leave one drive out of
    # every write below: the counts of this test are about multipart objects, so start complete.
    heal(c, "--bucket", BUCKET)
    datas = [payload(5 * MIB, 1), payload(5 * MIB, 2), payload(MIB // 3, 3)]
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key="done")["UploadId"]
    etags = [s3.upload_part(Bucket=BUCKET, Key="done", UploadId=upload, PartNumber=n, Body=d)["ETag"]
             for n, d in enumerate(datas, 1)]
    s3.complete_multipart_upload(Bucket=BUCKET, Key="done", UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]})
    pending = s3.create_multipart_upload(Bucket=BUCKET, Key="pending")["UploadId"]
    first = s3.upload_part(Bucket=BUCKET, Key="pending", UploadId=pending, PartNumber=1, Body=datas[0])["ETag"]
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == [BUCKET]

    every = drives(c)
    meta = json.loads((folder(every[0], BUCKET, "done") / "meta.json").read_text())
    part_ids = [p["data_id"] for p in meta["parts"]]
    assert len(part_ids) == 3 and meta["data_id"] not in part_ids
    for d in every:
        shards = sorted(p.name for p in folder(d, BUCKET, "done").glob("*.shard"))
        assert shards == sorted(f"{i}.shard" for i in part_ids)
        system = [json.loads(p.read_text())["key"] for p in (d / "buckets" / ".multipart").rglob("meta.json")]
        assert sorted(system) == [f"{BUCKET}/parts/{pending}/00001", f"{BUCKET}/uploads/{pending}"]

    (folder(every[0], BUCKET, "done") / f"{part_ids[1]}.shard").unlink()
    shutil.rmtree(folder(every[1], BUCKET, "done"))
    part_folder = next(p.parent for p in (every[2] / "buckets" / ".multipart").rglob("meta.json")
                       if "/parts/" in json.loads(p.read_text())["key"])
    shutil.rmtree(part_folder)

    report = heal(c)
    assert report["shards_rebuilt"] == 3 and report["unrecoverable"] == 0, json.dumps(report)
    for d in every:
        shards = sorted(p.name for p in folder(d, BUCKET, "done").glob("*.shard"))
        assert shards == sorted(f"{i}.shard" for i in part_ids)
    assert (part_folder / "meta.json").exists()
    assert heal(c)["shards_rebuilt"] == 0
    assert s3.get_object(Bucket=BUCKET, Key="done")["Body"].read() == b"".join(datas)

    second = s3.upload_part(Bucket=BUCKET, Key="pending", UploadId=pending, PartNumber=2, Body=datas[2])["ETag"]
    s3.complete_multipart_upload(Bucket=BUCKET, Key="pending", UploadId=pending, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": first}, {"PartNumber": 2, "ETag": second}]})
    assert s3.get_object(Bucket=BUCKET, Key="pending")["Body"].read() == datas[0] + datas[2]
    for d in every:
        assert [p.name for p in (d / "buckets" / ".multipart").rglob("*.json")] == ["bucket.json"]
