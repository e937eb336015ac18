"""A drive's metadata file that rotted (flipped byte, truncated, not JSON, JSON of the wrong
shape) or that names another object (moved or copied there) is a bad copy: reads go around it,
listings skip it, `sealstore admin heal` rewrites it from the majority (issue 8, "Heal cannot
repair metadata with bitrot"; issue 7, finding 1). Real cluster, boto3, the real command line."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from tests.durability.conftest import drives, flip_byte, heal, payload

INLINE_SIZE = 3000           # inside meta.json on every drive
STREAMED_SIZE = 700 * 1024   # shard files beside meta.json


def _object_dir(drive: Path, bucket: str, key: str) -> Path:
    h = hashlib.sha256(key.encode("utf-8")).hexdigest()
    return drive / "buckets" / bucket / "objects" / h[:2] / h


def _by_member(cluster, bucket: str, key: str) -> dict[int, Path]:
    """member index -> the object's folder on that member's drive."""
    out = {}
    for d in drives(cluster):
        folder = _object_dir(d, bucket, key)
        out[int(json.loads((folder / "meta.json").read_bytes()).get("shard_index", 0))] = folder
    return out


def _files(folders) -> dict[Path, bytes]:
    return {p: p.read_bytes() for f in folders for p in sorted(f.iterdir())}


def _member_neutral(meta_json: bytes) -> dict:
    """A copy's content as every member holds it: shard_index and the member's own inline
    fragment differ by member."""
    meta = json.loads(meta_json)
    meta.pop("shard_index", None)
    meta.pop("inline_shard", None)
    return meta


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CORRUPTIONS = {
    "flipped-byte": lambda path: flip_byte(path, path.stat().st_size // 2),
    "truncated": _truncate,
    "invalid-json": lambda path: path.write_bytes(b"{\"bucket\": \"rot\", \"key\": }"),
    "wrong-shape": lambda path: path.write_bytes(json.dumps({"bucket": "rot", "size": "12"}).encode()),
}
SIZES = {"inline": INLINE_SIZE, "streamed": STREAMED_SIZE}


def test_corrupt_metadata_is_read_around_and_heal_rewrites_it(make_cluster):
    c = make_cluster(nodes=4)
    s3 = c.s3()
    c.cli("key", "create", "rot-key")
    s3.create_bucket(Bucket="rot")
    cases = [(kind, size) for kind in CORRUPTIONS for size in SIZES]
    bodies, etags, before = {}, {}, {}
    for n, (kind, size) in enumerate(cases):
        key = f"{kind}-{size}"
        bodies[key] = payload(SIZES[size], n)
        etags[key] = s3.put_object(Bucket="rot", Key=key, Body=bodies[key], ServerSideEncryption="aws:kms",
                                   SSEKMSKeyId="rot-key")["ETag"]
    for n, (kind, size) in enumerate(cases):
        key = f"{kind}-{size}"
        folders = _by_member(c, "rot", key)
        assert len(folders) == 4
        member = n % 4
        before[key] = (member, folders, _files(folders.values()))
        CORRUPTIONS[kind](folders[member] / "meta.json")
        assert (folders[member] / "meta.json").read_bytes() != before[key][2][folders[member] / "meta.json"]

    for key, body in bodies.items():
        assert s3.get_object(Bucket="rot", Key=key)["Body"].read() == body, key
        assert s3.get_object(Bucket="rot", Key=key, Range="bytes=10-2009")["Body"].read() == body[10:2010], key
        head = s3.head_object(Bucket="rot", Key=key)
        assert (head["ContentLength"], head["ETag"]) == (len(body), etags[key]), key
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket="rot")["Contents"]]
    assert listed == sorted(bodies)

    report = heal(c)
    assert (report["shards_rebuilt"], report["shards_failed"], report["unrecoverable"]) == (len(cases), 0, 0), report
    for key, (member, folders, files) in before.items():
        assert any(line.startswith(f"rot/{key}: rebuilding member {member} (unreadable metadata")
                   or line.startswith(f"rot/{key}: rebuilding member {member} (incomplete metadata")
                   for line in report["details"]), (key, report["details"])
        # Every file of the object, on every drive, is as it was before the damage: the healed
        # meta.json byte for byte, and its shard files (none were deleted as orphans meanwhile).
        assert _files(folders.values()) == files, key
        healed = (folders[member] / "meta.json").read_bytes()
        good = (folders[(member + 1) % 4] / "meta.json").read_bytes()
        assert _member_neutral(healed) == _member_neutral(good)
        assert json.loads(healed).get("shard_index", 0) == member
    assert heal(c)["shards_rebuilt"] == 0
    for key, body in bodies.items():
        assert s3.get_object(Bucket="rot", Key=key)["Body"].read() == body


def test_relocated_metadata_is_not_listed_and_heal_replaces_it_leaving_the_source_alone(make_cluster):
    c = make_cluster(nodes=4)
    s3 = c.s3()
    c.cli("key", "create", "move-key")
    s3.create_bucket(Bucket="bucket1")
    s3.create_bucket(Bucket="bucket2")
    bodies = {}
    for n, size in enumerate(SIZES):
        for bucket, key in (("bucket1", f"A-{size}"), ("bucket2", f"B-{size}")):
            bodies[bucket, key] = payload(SIZES[size], 100 + n * 2 + len(bucket + key))
            s3.put_object(Bucket=bucket, Key=key, Body=bodies[bucket, key], ServerSideEncryption="aws:kms",
                          SSEKMSKeyId="move-key")
    all_drives = drives(c)
    sources = [_object_dir(d, "bucket1", f"A-{size}") for d in all_drives for size in SIZES]
    targets = [_object_dir(d, "bucket2", f"B-{size}") for d in all_drives for size in SIZES]
    sources_before, targets_before = _files(sources), _files(targets)

    # As many drives as a read quorum (2 of 4) get A's metadata and shards in B's folder: enough
    # for a listing that trusted the stored names to show A in bucket2.
    for d in all_drives[:2]:
        for size in SIZES:
            src, dst = _object_dir(d, "bucket1", f"A-{size}"), _object_dir(d, "bucket2", f"B-{size}")
            for old in dst.iterdir():
                old.unlink()
            for f in src.iterdir():
                shutil.copyfile(f, dst / f.name)

    assert [o["Key"] for o in s3.list_objects_v2(Bucket="bucket2")["Contents"]] == ["B-inline", "B-streamed"]
    for (bucket, key), body in bodies.items():
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body, (bucket, key)
        assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == len(body)

    report = heal(c)
    assert (report["shards_rebuilt"], report["shards_failed"], report["unrecoverable"]) == (4, 0, 0), report
    assert sum("metadata names another object" in line for line in report["details"]) == 2, report["details"]
    # B's folders hold exactly what they held before the move (A's copied shard files are gone);
    # A's folders were never touched.
    assert _files(targets) == targets_before
    assert _files(sources) == sources_before
    assert heal(c)["shards_rebuilt"] == 0
    for (bucket, key), body in bodies.items():
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body
