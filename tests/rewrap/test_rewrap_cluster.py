"""`sealstore key rotate` / `key rewrap` / `key min-version` against a real cluster.

Rewrap must move every old object's encrypted DEK to the newest key version, change nothing
else on the drives (shard files keep their bytes and mtime, inline shards their bytes), keep
every object readable byte for byte, be resumable, and make `min-version` possible."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
from pathlib import Path

import pytest
from google.protobuf import json_format

from sealstore import config, errors
from sealstore.erasure.client import EncryptionUpdate, ErasureSetClient
from sealstore.v1 import types_pb2
from tests.cluster.harness import start_cluster, stop_cluster, unique


def _drive_copies(data: Path, bucket: str) -> dict[str, list[tuple[types_pb2.ObjectMeta, dict]]]:
    """Per object key: every drive's meta.json and its shard files as {name: (sha256, mtime_ns)}."""
    copies: dict[str, list] = {}
    for meta_path in (data / "drives").rglob(f"buckets/{bucket}/objects/*/*/meta.json"):
        meta = json_format.Parse(meta_path.read_bytes(), types_pb2.ObjectMeta(), ignore_unknown_fields=True)
        shards = {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
                  for p in meta_path.parent.glob("*.shard")}
        copies.setdefault(meta.key, []).append((meta, shards))
    return copies


def _rewrap(cluster, *args: str, check: bool = True):
    result = cluster.cli("key", "rewrap", *args, check=check)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def _counts(out: str) -> dict[str, int]:
    words = out.split(":", 1)[1].split("(")[0].split()
    return {words[i]: int(words[i + 1]) for i in range(0, len(words), 2)}


def test_rotate_rewrap_resume_and_min_version(cluster, s3):
    key, other_key, bucket = unique("rk"), unique("rk-other"), unique("rewrap")
    cluster.cli("key", "create", key)
    cluster.cli("key", "create", other_key)
    s3.create_bucket(Bucket=bucket)
    cluster.cli("encrypt", "set", "sse-kms", key, bucket)

    bodies = {f"a-small-{i}": os.urandom(1000 + i) for i in range(6)}
    bodies["a-empty"] = b""
    bodies["b-multi-stripe-1"] = os.urandom(3 * 1024 * 1024 + 17)
    bodies["b-multi-stripe-2"] = os.urandom(1024 * 1024 + 5000)
    for name, body in bodies.items():
        s3.put_object(Bucket=bucket, Key=name, Body=body)
    context = base64.b64encode(json.dumps({"team": "storage", "x": "<&>"}).encode()).decode()
    for name, body in (("c-context-small", os.urandom(700)), ("c-context-big", os.urandom(2 * 1024 * 1024 + 3))):
        s3.put_object(Bucket=bucket, Key=name, Body=body, ServerSideEncryption="aws:kms", SSEKMSKeyId=key,
                      SSEKMSEncryptionContext=context)
        bodies[name] = body
    # Under another key: `rewrap --key` must leave it alone.
    bodies["d-other-key"] = os.urandom(5000)
    s3.put_object(Bucket=bucket, Key="d-other-key", Body=bodies["d-other-key"], ServerSideEncryption="aws:kms",
                  SSEKMSKeyId=other_key)
    old_objects = sorted(k for k in bodies if k != "d-other-key")

    before = _drive_copies(cluster.data, bucket)
    assert set(before) == set(bodies)
    assert all(m.encryption.kms_key_version == 1 for copies in before.values() for m, _ in copies)
    assert any(shards for copies in before.values() for _, shards in copies)  # multi-stripe: shard files
    assert any(m.inline for copies in before.values() for m, _ in copies)

    assert "version 2" in cluster.cli("key", "rotate", key).stdout.decode()
    cluster.cli("key", "rotate", other_key)
    bodies["z-after-rotate"] = os.urandom(4000)
    s3.put_object(Bucket=bucket, Key="z-after-rotate", Body=bodies["z-after-rotate"])
    new_copies = _drive_copies(cluster.data, bucket)["z-after-rotate"]
    assert {m.encryption.kms_key_version for m, _ in new_copies} == {2}
    for name, body in bodies.items():  # old versions still read
        assert s3.get_object(Bucket=bucket, Key=name)["Body"].read() == body

    refused = cluster.cli("key", "min-version", key, "2", check=False)
    assert refused.returncode != 0
    assert b"refusing" in refused.stderr and f"{len(old_objects)} object(s)".encode() in refused.stderr

    # Interrupted after 4 objects, then resumed from the checkpoint.
    rc, out, _ = _rewrap(cluster, "--bucket", bucket, "--key", key, "--limit", "4")
    assert rc == 0 and "stopped after 4" in out
    assert _counts(out) == {"scanned": 4, "rewrapped": 4, "skipped": 0, "failed": 0}
    checkpoint = json.loads((cluster.data / "rewrap" / f"{bucket}.json").read_text())
    assert checkpoint["last_key"] == old_objects[3] and checkpoint["key"] == key
    # A run over another key filter must not silently reuse this checkpoint.
    rc, _, err = _rewrap(cluster, "--bucket", bucket, check=False)
    assert rc != 0 and "--restart" in err
    rc, out, err = _rewrap(cluster, "--bucket", bucket, "--key", key)
    assert rc == 0 and "resuming after" in err and "(done)" in out
    assert _counts(out) == {"scanned": len(bodies) - 4, "rewrapped": len(old_objects) - 4,
                            "skipped": 2, "failed": 0}  # the other key's object and the new one
    assert not (cluster.data / "rewrap" / f"{bucket}.json").exists()

    after = _drive_copies(cluster.data, bucket)
    for name in bodies:
        old_by_shard = {m.shard_index: (m, shards) for m, shards in before.get(name, [])}
        for meta, shards in after[name]:
            if name not in old_objects:
                continue
            old_meta, old_shards = old_by_shard[meta.shard_index]
            assert meta.encryption.encrypted_dek != old_meta.encryption.encrypted_dek
            assert meta.encryption.kms_key_version == 2
            assert meta.data_id == old_meta.data_id
            assert meta.encryption.sealed_oek == old_meta.encryption.sealed_oek
            assert meta.encryption.iv == old_meta.encryption.iv
            assert meta.inline_shard == old_meta.inline_shard
            assert shards == old_shards  # same shard files, same bytes, same mtime
    other = after["d-other-key"]
    assert [m.encryption.encrypted_dek for m, _ in other] == [m.encryption.encrypted_dek for m, _ in before["d-other-key"]]
    for name, body in bodies.items():
        assert s3.get_object(Bucket=bucket, Key=name)["Body"].read() == body

    # A second run finds nothing left to do.
    rc, out, _ = _rewrap(cluster, "--bucket", bucket, "--key", key, "--restart")
    assert _counts(out) == {"scanned": len(bodies), "rewrapped": 0, "skipped": len(bodies), "failed": 0}

    # The other key's object still needs its version 1: retiring it is refused, per key...
    refused = cluster.cli("key", "min-version", other_key, "2", check=False)
    assert refused.returncode != 0 and b"1 object(s)" in refused.stderr and b"d-other-key" in refused.stderr
    # ...until a rewrap over every key of the bucket moves it too.
    rc, out, _ = _rewrap(cluster, "--bucket", bucket, "--restart")
    assert _counts(out) == {"scanned": len(bodies), "rewrapped": 1, "skipped": len(bodies) - 1, "failed": 0}
    cluster.cli("key", "min-version", other_key, "2")

    assert "below 2" in cluster.cli("key", "min-version", key, "2").stdout.decode()
    assert json.loads(cluster.cli("key", "describe", key).stdout)["min_version"] == 2
    for name, body in bodies.items():
        assert s3.get_object(Bucket=bucket, Key=name)["Body"].read() == body


def test_metadata_update_loses_to_a_concurrent_put(cluster, s3):
    """The conditional update names the version it rewrapped: once a new PUT replaced it, the
    update is refused on every drive (PreconditionFailed) and the new version stays intact."""
    key, bucket = unique("rk-race"), unique("rewrap-race")
    cluster.cli("key", "create", key)
    s3.create_bucket(Bucket=bucket)
    cluster.cli("encrypt", "set", "sse-kms", key, bucket)
    s3.put_object(Bucket=bucket, Key="obj", Body=b"first")

    async def scenario():
        store = ErasureSetClient(config.load_topology(cluster.data), config.certs_dir(cluster.data), "admin")
        try:
            old = await store.get_object_meta(bucket, "obj")
            await asyncio.to_thread(s3.put_object, Bucket=bucket, Key="obj", Body=b"second")  # the racing PUT
            with pytest.raises(errors.PreconditionFailed):
                await store.update_object_encryption(EncryptionUpdate(
                    bucket, "obj", old.data_id, b"bogus", 9, tuple(range(len(store.members)))))
            return old, await store.get_object_meta(bucket, "obj")
        finally:
            await store.close()

    old, now = asyncio.run(scenario())
    assert now.data_id != old.data_id and now.encryption.encrypted_dek != b"bogus"
    assert s3.get_object(Bucket=bucket, Key="obj")["Body"].read() == b"second"


def test_rewrap_across_two_erasure_sets(tmp_path):
    """8 nodes cut into two sets of 4: the walker lists the merged bucket and updates each object
    in its own set."""
    cluster = start_cluster(tmp_path, extra_env={"SEALSTORE_STORAGE_NODES": "8", "SEALSTORE_SET_DRIVE_COUNT": "4"},
                            storage_nodes=8)
    try:
        s3 = cluster.s3()
        cluster.cli("key", "create", "sets-key")
        s3.create_bucket(Bucket="rewrap-sets")
        cluster.cli("encrypt", "set", "sse-kms", "sets-key", "rewrap-sets")
        bodies = {f"obj-{i:02d}": os.urandom(100 + i * 7000) for i in range(12)}
        for name, body in bodies.items():
            s3.put_object(Bucket="rewrap-sets", Key=name, Body=body)
        homes = {len(copies) for copies in _drive_copies(cluster.data, "rewrap-sets").values()}
        assert homes == {4}  # each object on the 4 drives of one set
        cluster.cli("key", "rotate", "sets-key")
        assert cluster.cli("key", "min-version", "sets-key", "2", check=False).returncode != 0
        rc, out, _ = _rewrap(cluster, "--bucket", "rewrap-sets")
        assert rc == 0 and _counts(out) == {"scanned": 12, "rewrapped": 12, "skipped": 0, "failed": 0}
        after = _drive_copies(cluster.data, "rewrap-sets")
        assert {m.encryption.kms_key_version for copies in after.values() for m, _ in copies} == {2}
        cluster.cli("key", "min-version", "sets-key", "2")
        for name, body in bodies.items():
            assert s3.get_object(Bucket="rewrap-sets", Key=name)["Body"].read() == body
    finally:
        stop_cluster(cluster)


def test_an_object_of_unrecorded_version_is_rewrapped_and_blocks_min_version_until_then(cluster, s3):
    """An object written before the envelope recorded its kms key version (0 there) is of unknown
    version: the walker never parses the kms's ciphertext to learn it (that format is the kms's);
    `min-version` counts it as possibly below, and rewrap rewraps it and records the version the
    kms's ReWrap answers."""
    key, bucket = unique("rk-old"), unique("rewrap-old")
    cluster.cli("key", "create", key)
    s3.create_bucket(Bucket=bucket)
    body = os.urandom(3000)
    s3.put_object(Bucket=bucket, Key="old", Body=body, ServerSideEncryption="aws:kms", SSEKMSKeyId=key)
    for meta_path in (cluster.data / "drives").rglob(f"buckets/{bucket}/objects/*/*/meta.json"):
        raw = json.loads(meta_path.read_bytes())
        del raw["encryption"]["kms_key_version"]  # as an object written before the field existed
        meta_path.write_text(json.dumps(raw))
    assert {m.encryption.kms_key_version for m, _ in _drive_copies(cluster.data, bucket)["old"]} == {0}
    cluster.cli("key", "rotate", key)

    refused = cluster.cli("key", "min-version", key, "2", check=False)
    assert refused.returncode != 0 and "version not recorded" in refused.stderr.decode()

    code, out, _ = _rewrap(cluster, "--bucket", bucket)
    assert code == 0 and _counts(out)["rewrapped"] == 1, out
    assert {m.encryption.kms_key_version for m, _ in _drive_copies(cluster.data, bucket)["old"]} == {2}
    code, out, _ = _rewrap(cluster, "--bucket", bucket)  # recorded now: nothing left to do
    assert code == 0 and _counts(out)["rewrapped"] == 0 and _counts(out)["skipped"] == 1, out
    cluster.cli("key", "min-version", key, "2")
    assert s3.get_object(Bucket=bucket, Key="old")["Body"].read() == body
