"""Small objects live inside their metadata (one write per drive): no shard files, still
erasure coded, checksummed, encrypted, healed."""
from __future__ import annotations

import base64
import json

from tests.durability.conftest import current_shards, drives, heal, payload, wait_until


def test_small_objects_are_inline_encrypted_checksummed_and_healed(make_cluster):
    c = make_cluster(nodes=4)
    s3 = c.s3()
    c.cli("key", "create", "inline-key")
    s3.create_bucket(Bucket="small")
    marker = b"INLINE-PLAINTEXT-MARKER-" * 2000  # 48 KB: 24 KiB per data shard
    s3.put_object(Bucket="small", Key="enc", Body=marker, ServerSideEncryption="aws:kms",
                  SSEKMSKeyId="inline-key")
    s3.put_object(Bucket="small", Key="empty", Body=b"")
    big = payload(600_000, 5)  # 300 KB per data shard: a shard file
    s3.put_object(Bucket="small", Key="big", Body=big)

    copies = current_shards(c, "small", "enc")
    assert len(copies) == 4
    for copy in copies.values():
        assert copy["meta"]["inline"] is True and not copy["path"].exists()
        inline = base64.b64decode(copy["meta"]["inline_shard"])
        assert inline and marker[:24] not in inline  # ciphertext only, never the plaintext
    assert all(not v["path"].exists() for v in current_shards(c, "small", "empty").values())
    assert all(v["path"].exists() for v in current_shards(c, "small", "big").values())

    assert s3.get_object(Bucket="small", Key="enc")["Body"].read() == marker
    assert s3.get_object(Bucket="small", Key="enc", Range="bytes=100-199")["Body"].read() == marker[100:200]
    assert s3.get_object(Bucket="small", Key="empty")["Body"].read() == b""
    assert s3.head_object(Bucket="small", Key="enc")["ContentLength"] == len(marker)

    # Bit rot inside an inline shard: detected, served around, repaired on read.
    by_member = {int(v["meta"].get("shard_index", 0)): (d, v) for d, v in copies.items()}
    drive0, copy0 = by_member[0]
    meta_path = copy0["path"].parent / "meta.json"
    raw = json.loads(meta_path.read_text())
    shard = bytearray(base64.b64decode(raw["inline_shard"]))
    shard[len(shard) // 2] ^= 0x01
    raw["inline_shard"] = base64.b64encode(bytes(shard)).decode()
    meta_path.write_text(json.dumps(raw))
    assert s3.get_object(Bucket="small", Key="enc")["Body"].read() == marker
    wait_until(lambda: json.loads(meta_path.read_text())["inline_shard"] == copy0["meta"]["inline_shard"],
               what="repair of the inline shard")

    # A lost copy comes back inline too; an overwrite with a big object leaves no stale shard.
    meta_path.unlink()
    report = heal(c)
    assert report["shards_rebuilt"] == 1, json.dumps(report)
    assert json.loads(meta_path.read_text())["inline"] is True
    s3.put_object(Bucket="small", Key="enc", Body=big)
    s3.put_object(Bucket="small", Key="big", Body=b"now small")
    assert s3.get_object(Bucket="small", Key="big")["Body"].read() == b"now small"
    # The replaced version is kept for the undo window (prev.json names it), nothing else.
    for d in drives(c):
        folder = current_shards(c, "small", "big")[d]["path"].parent
        kept = folder / "prev.json"
        stale = [p for p in folder.glob("*.shard")]
        assert len(stale) <= 1, stale
        assert all(kept.exists() and p.stem in kept.read_text() for p in stale), stale
