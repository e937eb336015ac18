"""Multipart upload end to end: the AWS CLI and boto3 with their default settings against a real
local cluster, AWS's rules and errors, fresh key material per part upload, and nothing left on
any drive after an abort."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from sealstore import multipart as rules
from tests.cluster.harness import error_code, start_cluster, stop_cluster, unique

MiB = 1024 * 1024


# -- helpers ---------------------------------------------------------------------------------

def drives(cluster) -> list[Path]:
    return [Path(d) for s in cluster.cluster_json()["services"] if s["role"] == "storage" for d in s["drives"]]


def stored_metas(cluster, bucket: str, key: str) -> list[dict]:
    """meta.json of bucket/key on every drive holding it (the storage layout: sha256 of the key)."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    found = []
    for drive in drives(cluster):
        path = drive / "buckets" / bucket / "objects" / digest[:2] / digest / "meta.json"
        if path.exists():
            found.append(json.loads(path.read_text()))
    return found


def files_naming(cluster, text: str) -> list[Path]:
    """Every file or folder on any drive whose path or content names `text` (an upload id).

    The listing index is asked for its rows instead of grepped: SQLite keeps copies of keys as
    separators in interior b-tree pages after their rows are deleted, which are not objects.
    A walk that meets a file or folder removed under it (a heal at work) starts again."""
    for _ in range(20):
        try:
            return [path for drive in drives(cluster) for path in _paths_naming(drive, text)]
        except FileNotFoundError:
            time.sleep(0.1)
    raise AssertionError(f"the drives kept changing under a walk for {text}")


def _paths_naming(drive: Path, text: str) -> list[Path]:
    hits = []
    for path in drive.rglob("*"):
        if text in str(path):
            hits.append(path)
        elif path.name.startswith("listing.sqlite3"):
            if path.name == "listing.sqlite3" and _index_names(path, text):
                hits.append(path)
        elif path.is_file() and path.stat().st_size < 4 * MiB and text.encode() in path.read_bytes():
            hits.append(path)
    return hits


def _index_names(path: Path, text: str) -> bool:
    """Whether a row of the drive's listing index names `text` in its key, data id or extra."""
    import sqlite3
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT key, data_id, extra FROM objects").fetchall()
    finally:
        db.close()
    needle = text.encode()
    return any(needle in bytes(key) or text in data_id or needle in bytes(extra) for key, data_id, extra in rows)


def write_random_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 4 * MiB))
            f.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(4 * MiB), b""):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture
def kms_bucket(cluster, s3):
    """A bucket whose default encryption is SSE-KMS under its own new key."""
    key, bucket = unique("mpkey"), unique("mp")
    cluster.cli("key", "create", key)
    s3.create_bucket(Bucket=bucket)
    cluster.cli("encrypt", "set", "sse-kms", key, bucket)
    return bucket, key


@pytest.fixture
def bucket(s3):
    name = unique("mpb")
    s3.create_bucket(Bucket=name)
    return name


def upload_parts(s3, bucket, key, upload_id, bodies: dict[int, bytes]) -> list[dict]:
    return [{"PartNumber": n, "ETag": s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=n,
                                                     Body=body)["ETag"]}
            for n, body in bodies.items()]


# -- real clients, default settings ----------------------------------------------------------

def test_aws_cli_copies_50_mb_up_and_down_with_bucket_default_sse_kms(cluster, s3, kms_bucket, tmp_path):
    bucket, kms_key = kms_bucket
    source, back = tmp_path / "up.bin", tmp_path / "down.bin"
    digest = write_random_file(source, 50_000_000)
    cluster.aws("s3", "cp", str(source), f"s3://{bucket}/dir/big.bin")
    head = s3.head_object(Bucket=bucket, Key="dir/big.bin")
    assert head["ContentLength"] == 50_000_000
    # The CLI's default: 8 MiB parts, so 6 of them.
    assert head["ETag"].strip('"').endswith("-6")
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == kms_key
    cluster.aws("s3", "cp", f"s3://{bucket}/dir/big.bin", str(back))
    assert file_sha256(back) == digest
    # Bucket to bucket, the CLI copies a large object with UploadPartCopy and source ranges.
    cluster.aws("s3", "cp", f"s3://{bucket}/dir/big.bin", f"s3://{bucket}/dir/copy.bin")
    copied = s3.head_object(Bucket=bucket, Key="dir/copy.bin")
    assert copied["ContentLength"] == 50_000_000 and copied["ETag"].strip('"').endswith("-6")
    assert copied["SSEKMSKeyId"] == kms_key
    back.unlink()
    cluster.aws("s3", "cp", f"s3://{bucket}/dir/copy.bin", str(back))
    assert file_sha256(back) == digest
    # Every part object went into the object's folder: nothing of the upload stays in .multipart.
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_boto3_upload_file_and_download_file_20_mib(s3, bucket, tmp_path):
    source, back = tmp_path / "up.bin", tmp_path / "down.bin"
    digest = write_random_file(source, 20 * MiB)
    s3.upload_file(str(source), bucket, "twenty.bin")
    head = s3.head_object(Bucket=bucket, Key="twenty.bin")
    assert head["ContentLength"] == 20 * MiB and head["ETag"].strip('"').endswith("-3")
    # Encrypted by default (SSE-S3) like any other write into a bucket without a default.
    assert head["ServerSideEncryption"] == "AES256"
    s3.download_file(bucket, "twenty.bin", str(back))
    assert file_sha256(back) == digest
    # download_file's ranged GETs across part boundaries, and a GET of each part.
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB + 12345)
    s3.download_file(bucket, "twenty.bin", str(back), Config=config)
    assert file_sha256(back) == digest


def test_bucket_default_applies_to_a_multipart_upload(cluster, s3, kms_bucket):
    bucket, kms_key = kms_bucket
    created = s3.create_multipart_upload(Bucket=bucket, Key="mp", ContentType="text/plain",
                                         Metadata={"color": "blue"}, Tagging="team=red&year=2026")
    assert created["ServerSideEncryption"] == "aws:kms" and created["SSEKMSKeyId"] == kms_key
    upload_id = created["UploadId"]
    bodies = {1: os.urandom(5 * MiB), 2: os.urandom(5 * MiB + 7), 3: b"tail"}
    parts = []
    for n, body in bodies.items():
        answer = s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload_id, PartNumber=n, Body=body)
        assert answer["ServerSideEncryption"] == "aws:kms" and answer["SSEKMSKeyId"] == kms_key
        parts.append({"PartNumber": n, "ETag": answer["ETag"]})
    done = s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload_id,
                                        MultipartUpload={"Parts": parts})
    assert done["ServerSideEncryption"] == "aws:kms" and done["SSEKMSKeyId"] == kms_key
    assert done["ETag"] == '"' + rules.multipart_etag([p["ETag"].strip('"') for p in parts]) + '"'
    assert done["Key"] == "mp" and done["Bucket"] == bucket and done["Location"].endswith(f"/{bucket}/mp")
    head = s3.head_object(Bucket=bucket, Key="mp")
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == kms_key
    assert head["ContentType"] == "text/plain" and head["Metadata"] == {"color": "blue"}
    assert head["ETag"] == done["ETag"] and head["ContentLength"] == sum(map(len, bodies.values()))
    tags = s3.get_object_tagging(Bucket=bucket, Key="mp")["TagSet"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [("team", "red"), ("year", "2026")]
    whole = b"".join(bodies.values())
    assert s3.get_object(Bucket=bucket, Key="mp")["Body"].read() == whole
    # ?partNumber=N: that part, with the part count.
    for n, body in bodies.items():
        got = s3.get_object(Bucket=bucket, Key="mp", PartNumber=n)
        assert got["Body"].read() == body and got["PartsCount"] == 3
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
        first = sum(len(bodies[i]) for i in range(1, n))
        assert got["ContentRange"] == f"bytes {first}-{first + len(body) - 1}/{len(whole)}"
        h = s3.head_object(Bucket=bucket, Key="mp", PartNumber=n)
        assert h["ContentLength"] == len(body) and h["PartsCount"] == 3
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="mp", PartNumber=4)
    assert error_code(exc.value) == "InvalidPartNumber"
    # A ranged read across the part boundary decrypts from two parts.
    edge = 5 * MiB
    got = s3.get_object(Bucket=bucket, Key="mp", Range=f"bytes={edge - 10}-{edge + 10}")["Body"].read()
    assert got == whole[edge - 10:edge + 11]
    # The completed object's envelope is the record's, under the bucket default's key.
    metas = stored_metas(cluster, bucket, "mp")
    assert len(metas) == 4 and all(m["encryption"]["kms_key_name"] == kms_key for m in metas)
    assert [p["number"] for p in metas[0]["parts"]] == [1, 2, 3]


def test_a_part_uploaded_again_gets_fresh_key_material(cluster, s3, kms_bucket):
    bucket, _ = kms_bucket
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="again")["UploadId"]
    system_key = rules.part_key(bucket, upload_id, 1)
    body = os.urandom(MiB)
    first = s3.upload_part(Bucket=bucket, Key="again", UploadId=upload_id, PartNumber=1, Body=body)
    nonces_before = {m["parts"][0]["key_nonce"] for m in stored_metas(cluster, rules.SYSTEM_BUCKET, system_key)}
    assert len(nonces_before) == 1  # one part upload: the same nonce on every drive
    second = s3.upload_part(Bucket=bucket, Key="again", UploadId=upload_id, PartNumber=1, Body=body)
    after = stored_metas(cluster, rules.SYSTEM_BUCKET, system_key)
    nonces_after = {m["parts"][0]["key_nonce"] for m in after}
    assert len(nonces_after) == 1 and nonces_after.isdisjoint(nonces_before)
    # Same plaintext, other key: another ciphertext, so another ETag (SSE-KMS ETags are not MD5s).
    assert first["ETag"] != second["ETag"]
    listed = s3.list_parts(Bucket=bucket, Key="again", UploadId=upload_id)["Parts"]
    assert [(p["PartNumber"], p["ETag"]) for p in listed] == [(1, second["ETag"])]
    s3.complete_multipart_upload(Bucket=bucket, Key="again", UploadId=upload_id,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": second["ETag"]}]})
    assert s3.get_object(Bucket=bucket, Key="again")["Body"].read() == body


def test_abort_leaves_nothing_on_any_drive(cluster, s3, kms_bucket):
    bucket, _ = kms_bucket
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="gone")["UploadId"]
    upload_parts(s3, bucket, "gone", upload_id, {1: os.urandom(5 * MiB), 2: os.urandom(300_000), 3: b"x"})
    assert files_naming(cluster, upload_id), "the upload should be on the drives before the abort"
    s3.abort_multipart_upload(Bucket=bucket, Key="gone", UploadId=upload_id)
    assert files_naming(cluster, upload_id) == []
    for drive in drives(cluster):
        assert not list((drive / "tmp").glob("*")) if (drive / "tmp").exists() else True
    with pytest.raises(ClientError) as exc:
        s3.list_parts(Bucket=bucket, Key="gone", UploadId=upload_id)
    assert error_code(exc.value) == "NoSuchUpload"
    with pytest.raises(ClientError) as exc:
        s3.abort_multipart_upload(Bucket=bucket, Key="gone", UploadId=upload_id)
    assert error_code(exc.value) == "NoSuchUpload"
    assert all(u["UploadId"] != upload_id for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []))
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="gone")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


# -- AWS's rules -----------------------------------------------------------------------------

def test_complete_refuses_small_missing_and_unordered_parts(s3, bucket):
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="rules")["UploadId"]
    parts = upload_parts(s3, bucket, "rules", upload_id, {1: b"a" * 1000, 2: os.urandom(5 * MiB), 3: b"end"})

    def complete(listed):
        with pytest.raises(ClientError) as exc:
            s3.complete_multipart_upload(Bucket=bucket, Key="rules", UploadId=upload_id,
                                         MultipartUpload={"Parts": listed})
        return exc.value

    assert error_code(complete(parts)) == "EntityTooSmall"  # part 1 is not the last and < 5 MiB
    assert error_code(complete([parts[1], parts[0]])) == "InvalidPartOrder"
    assert error_code(complete([parts[1], parts[1]])) == "InvalidPartOrder"
    assert error_code(complete([{"PartNumber": 2, "ETag": '"' + "0" * 32 + '"'}])) == "InvalidPart"
    err = complete([parts[1], {"PartNumber": 4, "ETag": parts[2]["ETag"]}])
    assert error_code(err) == "InvalidPart" and err.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    # None of that touched the upload: parts 2 and 3 complete it (part 1 is dropped).
    done = s3.complete_multipart_upload(Bucket=bucket, Key="rules", UploadId=upload_id,
                                        MultipartUpload={"Parts": parts[1:]})
    # A retried Complete (its answer lost) gets the same answer, as AWS.
    again = s3.complete_multipart_upload(Bucket=bucket, Key="rules", UploadId=upload_id,
                                         MultipartUpload={"Parts": parts[1:]})
    assert again["ETag"] == done["ETag"] and done["ETag"].strip('"').endswith("-2")
    assert s3.head_object(Bucket=bucket, Key="rules")["ContentLength"] == 5 * MiB + 3
    # ... but not with other parts, and nothing else may use the finished upload id.
    with pytest.raises(ClientError) as exc:
        s3.complete_multipart_upload(Bucket=bucket, Key="rules", UploadId=upload_id,
                                     MultipartUpload={"Parts": parts[2:]})
    assert error_code(exc.value) == "NoSuchUpload"
    with pytest.raises(ClientError) as exc:
        s3.upload_part(Bucket=bucket, Key="rules", UploadId=upload_id, PartNumber=1, Body=b"late")
    assert error_code(exc.value) == "NoSuchUpload"


def test_unknown_upload_ids_and_bad_part_numbers(s3, bucket):
    missing = uuid.uuid4().hex
    calls = [
        lambda: s3.upload_part(Bucket=bucket, Key="k", UploadId=missing, PartNumber=1, Body=b"x"),
        lambda: s3.list_parts(Bucket=bucket, Key="k", UploadId=missing),
        lambda: s3.abort_multipart_upload(Bucket=bucket, Key="k", UploadId=missing),
        lambda: s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=missing, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": '"x"'}]}),
        lambda: s3.upload_part(Bucket=bucket, Key="k", UploadId="not-ours", PartNumber=1, Body=b"x"),
    ]
    for call in calls:
        with pytest.raises(ClientError) as exc:
            call()
        assert error_code(exc.value) == "NoSuchUpload"
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    # The upload id of another key names no upload of this one.
    with pytest.raises(ClientError) as exc:
        s3.upload_part(Bucket=bucket, Key="other", UploadId=upload_id, PartNumber=1, Body=b"x")
    assert error_code(exc.value) == "NoSuchUpload"
    for number in (0, 10001):
        with pytest.raises(ClientError) as exc:
            s3.upload_part(Bucket=bucket, Key="k", UploadId=upload_id, PartNumber=number, Body=b"x")
        assert error_code(exc.value) == "InvalidArgument"
    with pytest.raises(ClientError) as exc:
        s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=upload_id, MultipartUpload={"Parts": []})
    assert error_code(exc.value) == "MalformedXML"
    with pytest.raises(ClientError) as exc:
        s3.create_multipart_upload(Bucket=unique("nobucket"), Key="k")
    assert error_code(exc.value) == "NoSuchBucket"
    s3.abort_multipart_upload(Bucket=bucket, Key="k", UploadId=upload_id)


def test_parts_are_verified_as_put_bodies_are(s3, bucket):
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="sums")["UploadId"]
    body = os.urandom(100_000)
    answer = s3.upload_part(Bucket=bucket, Key="sums", UploadId=upload_id, PartNumber=1, Body=body,
                            ChecksumAlgorithm="SHA256")
    assert answer["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(body).digest()).decode()
    wrong_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    with pytest.raises(ClientError) as exc:
        s3.upload_part(Bucket=bucket, Key="sums", UploadId=upload_id, PartNumber=2, Body=body, ContentMD5=wrong_md5)
    assert error_code(exc.value) == "BadDigest"
    with pytest.raises(ClientError) as exc:
        s3.upload_part(Bucket=bucket, Key="sums", UploadId=upload_id, PartNumber=3, Body=body,
                       ChecksumCRC32=base64.b64encode(b"\0\0\0\0").decode())
    assert error_code(exc.value) == "BadDigest"
    # The refused parts left nothing.
    assert [p["PartNumber"] for p in s3.list_parts(Bucket=bucket, Key="sums", UploadId=upload_id)["Parts"]] == [1]
    s3.abort_multipart_upload(Bucket=bucket, Key="sums", UploadId=upload_id)


def test_list_multipart_uploads_with_prefix_delimiter_and_markers(s3, bucket):
    keys = ["a/1", "a/2", "b", "b", "c/d/e"]
    ids = [s3.create_multipart_upload(Bucket=bucket, Key=k)["UploadId"] for k in keys]
    try:
        listed = s3.list_multipart_uploads(Bucket=bucket)
        assert [u["Key"] for u in listed["Uploads"]] == keys
        assert [u["UploadId"] for u in listed["Uploads"] if u["Key"] == "b"] == ids[2:4]  # by initiation
        folded = s3.list_multipart_uploads(Bucket=bucket, Delimiter="/")
        assert [u["Key"] for u in folded["Uploads"]] == ["b", "b"]
        assert [p["Prefix"] for p in folded["CommonPrefixes"]] == ["a/", "c/"]
        assert [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket, Prefix="a/")["Uploads"]] == ["a/1", "a/2"]
        seen, pages = [], s3.get_paginator("list_multipart_uploads").paginate(
            Bucket=bucket, PaginationConfig={"PageSize": 2})
        for page in pages:
            assert len(page.get("Uploads", [])) <= 2
            seen += [u["UploadId"] for u in page.get("Uploads", [])]
        assert seen == ids
    finally:
        for k, i in zip(keys, ids):
            s3.abort_multipart_upload(Bucket=bucket, Key=k, UploadId=i)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


# Every part goes through the whole worker pipeline (about 1,000 parts a minute on the 2-core CI
# machine under load, most of it boto3's own), so the cluster test uploads the two ends of AWS's
# range: parts 1-1,000 and 9,991-10,000, listed in two pages that end at part 10,000. tests/storage/test_multipart_scale.py
# lists and completes 10,000 parts on a real drive (SEALSTORE_TEST_PARTS).
SPARSE_PARTS = list(range(1, 1_001)) + list(range(9_991, 10_001))


def test_parts_up_to_ten_thousand_list_in_pages(cluster, s3, bucket):
    """Tiny parts are allowed while uploading (only Complete checks sizes)."""
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="many")["UploadId"]
    clients = [cluster.s3(max_pool_connections=4) for _ in range(8)]

    def send(n: int) -> str:
        return clients[n % len(clients)].upload_part(Bucket=bucket, Key="many", UploadId=upload_id, PartNumber=n,
                                                     Body=n.to_bytes(2, "big"))["ETag"]
    with ThreadPoolExecutor(8) as pool:
        etags = dict(zip(SPARSE_PARTS, pool.map(send, SPARSE_PARTS)))
    with pytest.raises(ClientError) as exc:
        s3.upload_part(Bucket=bucket, Key="many", UploadId=upload_id, PartNumber=10_001, Body=b"x")
    assert error_code(exc.value) == "InvalidArgument"
    numbers, pages = [], 0
    for page in s3.get_paginator("list_parts").paginate(Bucket=bucket, Key="many", UploadId=upload_id):
        pages += 1
        for part in page["Parts"]:
            numbers.append(part["PartNumber"])
            assert part["Size"] == 2 and part["ETag"] == etags[part["PartNumber"]]
        assert page["IsTruncated"] == (numbers[-1] != 10_000)
        if page["IsTruncated"]:
            assert page["NextPartNumberMarker"] == numbers[-1]
    assert numbers == SPARSE_PARTS and pages == 2
    page = s3.list_parts(Bucket=bucket, Key="many", UploadId=upload_id, PartNumberMarker=998, MaxParts=5)
    assert [p["PartNumber"] for p in page["Parts"]] == [999, 1_000, 9_991, 9_992, 9_993] and page["IsTruncated"]
    with pytest.raises(ClientError) as exc:
        s3.complete_multipart_upload(Bucket=bucket, Key="many", UploadId=upload_id, MultipartUpload={
            "Parts": [{"PartNumber": n, "ETag": etags[n]} for n in SPARSE_PARTS]})
    assert error_code(exc.value) == "EntityTooSmall"
    s3.abort_multipart_upload(Bucket=bucket, Key="many", UploadId=upload_id)
    assert files_naming(cluster, upload_id) == []


def test_admin_lists_and_cleans_uploads(cluster, s3, bucket):
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="left/behind")["UploadId"]
    upload_parts(s3, bucket, "left/behind", upload_id, {1: b"x" * 1000, 2: b"y" * 24})
    listed = json.loads(cluster.cli("admin", "uploads", "--bucket", bucket, "--json").stdout)
    assert [(u["key"], u["upload_id"], u["parts"], u["bytes"]) for u in listed] == [
        ("left/behind", upload_id, 2, 1024)]
    text = cluster.cli("admin", "uploads", "--bucket", bucket).stdout.decode()
    assert upload_id in text and "left/behind" in text and "2 parts" in text
    # Not old enough to be cleaned by age.
    assert json.loads(cluster.cli("admin", "uploads", "--bucket", bucket, "--older-than", "1h", "--json").stdout) == []
    cleaned = json.loads(cluster.cli("admin", "uploads", "--bucket", bucket, "--clean", "--json").stdout)
    assert cleaned["removed"] == 1
    assert files_naming(cluster, upload_id) == []
    with pytest.raises(ClientError) as exc:
        s3.list_parts(Bucket=bucket, Key="left/behind", UploadId=upload_id)
    assert error_code(exc.value) == "NoSuchUpload"
    bad = cluster.cli("admin", "uploads", "--older-than", "soon", check=False)
    assert bad.returncode == 1 and b"--older-than" in bad.stderr


def test_the_heal_scanner_removes_stale_uploads(tmp_path):
    c = start_cluster(tmp_path, extra_env={"SEALSTORE_UPLOAD_EXPIRY": "3s", "SEALSTORE_HEAL_INTERVAL": "1"})
    try:
        s3 = c.s3()
        s3.create_bucket(Bucket="stale")
        upload_id = s3.create_multipart_upload(Bucket="stale", Key="abandoned")["UploadId"]
        upload_parts(s3, "stale", "abandoned", upload_id, {1: os.urandom(5 * MiB), 2: b"end"})
        assert files_naming(c, upload_id)
        deadline = time.monotonic() + 60
        while files_naming(c, upload_id) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert files_naming(c, upload_id) == []
        with pytest.raises(ClientError) as exc:
            s3.list_parts(Bucket="stale", Key="abandoned", UploadId=upload_id)
        assert error_code(exc.value) == "NoSuchUpload"
        log = (c.data / "logs" / "heal.log").read_text()
        assert f"stale upload {upload_id} of stale/abandoned removed (2 parts" in log
    finally:
        stop_cluster(c)


def test_ssec_parts_must_carry_the_upload_key(cluster):
    s3 = cluster.s3(https=True)  # SSE-C only over TLS, as AWS
    bucket, right, wrong = unique("mpssec"), os.urandom(32), os.urandom(32)
    s3.create_bucket(Bucket=bucket)
    ssec = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": right}
    created = s3.create_multipart_upload(Bucket=bucket, Key="c", **ssec)
    assert created["SSECustomerAlgorithm"] == "AES256"
    assert created["SSECustomerKeyMD5"] == base64.b64encode(hashlib.md5(right).digest()).decode()
    upload_id = created["UploadId"]
    body1, body2 = os.urandom(5 * MiB), os.urandom(1000)
    first = s3.upload_part(Bucket=bucket, Key="c", UploadId=upload_id, PartNumber=1, Body=body1, **ssec)
    assert first["SSECustomerKeyMD5"] == created["SSECustomerKeyMD5"]
    refusals = [({"SSECustomerAlgorithm": "AES256", "SSECustomerKey": wrong}, "AccessDenied", 403),
                ({}, "InvalidRequest", 400)]
    for key_args, code, status in refusals:
        with pytest.raises(ClientError) as exc:
            s3.upload_part(Bucket=bucket, Key="c", UploadId=upload_id, PartNumber=2, Body=body2, **key_args)
        assert error_code(exc.value) == code
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    # Nothing was stored for the refused parts.
    assert [p["PartNumber"] for p in s3.list_parts(Bucket=bucket, Key="c", UploadId=upload_id)["Parts"]] == [1]
    second = s3.upload_part(Bucket=bucket, Key="c", UploadId=upload_id, PartNumber=2, Body=body2, **ssec)
    done = s3.complete_multipart_upload(Bucket=bucket, Key="c", UploadId=upload_id, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": first["ETag"]}, {"PartNumber": 2, "ETag": second["ETag"]}]})
    # botocore's model has no SSE-C members for Complete: the header itself.
    assert done["ResponseMetadata"]["HTTPHeaders"]["x-amz-server-side-encryption-customer-algorithm"] == "AES256"
    assert s3.get_object(Bucket=bucket, Key="c", **ssec)["Body"].read() == body1 + body2
    assert s3.get_object(Bucket=bucket, Key="c", PartNumber=2, **ssec)["Body"].read() == body2
    assert s3.head_object(Bucket=bucket, Key="c", PartNumber=1, **ssec)["ContentLength"] == len(body1)
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="c", SSECustomerAlgorithm="AES256", SSECustomerKey=wrong)
    assert error_code(exc.value) == "AccessDenied"
    # An upload that did not ask for SSE-C takes no customer key on its parts.
    other = s3.create_multipart_upload(Bucket=bucket, Key="plain")["UploadId"]
    with pytest.raises(ClientError) as exc:
        s3.upload_part(Bucket=bucket, Key="plain", UploadId=other, PartNumber=1, Body=b"x", **ssec)
    assert error_code(exc.value) == "InvalidRequest"
    s3.abort_multipart_upload(Bucket=bucket, Key="plain", UploadId=other)
