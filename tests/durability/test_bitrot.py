"""Flipped bytes in shard files and wiped drives: right bytes or an error, never wrong bytes;
reads repair what they trip over, `sealstore admin heal` repairs the rest."""
from __future__ import annotations

import shutil

import pytest
from botocore.exceptions import ClientError, ResponseStreamingError
from urllib3.exceptions import ProtocolError

from tests.durability.conftest import (current_shards, heal, payload, shard_sound, flip_byte, wait_until,
                                       drives)

SIZE = 3_000_000  # three stripes


@pytest.fixture
def cluster(make_cluster):
    c = make_cluster(nodes=4)  # 2 data + 2 parity
    c.s3().create_bucket(Bucket="rot")
    return c


def _shards_by_member(c, key):
    shards = current_shards(c, "rot", key)
    return {int(s["meta"].get("shard_index", 0)): s for s in shards.values()}


def test_a_flipped_byte_is_detected_served_around_and_repaired_on_read(cluster):
    s3 = cluster.s3()
    data = payload(SIZE, 1)
    s3.put_object(Bucket="rot", Key="obj", Body=data)
    # Member 0 holds a data shard: the first one a read asks for.
    victim = _shards_by_member(cluster, "obj")[0]
    flip_byte(victim["path"], victim["path"].stat().st_size // 2)
    assert not shard_sound(victim["path"], victim["meta"])

    assert s3.get_object(Bucket="rot", Key="obj")["Body"].read() == data
    wait_until(lambda: shard_sound(victim["path"], victim["meta"]), what="repair of the flipped shard on read")
    # Repaired in place: same version, the file passes every checksum again.
    assert _shards_by_member(cluster, "obj")[0]["meta"]["data_id"] == victim["meta"]["data_id"]
    assert s3.get_object(Bucket="rot", Key="obj")["Body"].read() == data


def test_heal_finds_and_repairs_bitrot_that_no_read_touched(cluster):
    s3 = cluster.s3()
    data = payload(SIZE, 2)
    s3.put_object(Bucket="rot", Key="cold", Body=data)
    victim = _shards_by_member(cluster, "cold")[3]  # a parity shard: reads never look at it
    flip_byte(victim["path"], 100)
    dry = heal(cluster, "--dry-run")
    assert dry["shards_rebuilt"] == 1 and not shard_sound(victim["path"], victim["meta"])
    metrics = cluster.data / "heal.prom"
    report = heal(cluster, "--metrics-file", str(metrics))
    assert report["shards_rebuilt"] == 1 and report["objects_healed"] == 1
    assert shard_sound(victim["path"], victim["meta"])
    assert 'sealstore_heal_shards_total{result="rebuilt"} 1.0' in metrics.read_text()
    assert 'sealstore_heal_objects_total{result="healed"} 1.0' in metrics.read_text()
    assert heal(cluster)["shards_rebuilt"] == 0

    # The background scanner form: bounded rate, one walk after another, counts per walk.
    flip_byte(victim["path"], 200)
    out = cluster.cli("admin", "heal", "--every", "0.1", "--cycles", "2", "--rate", "20").stdout.decode()
    walks = [line for line in out.splitlines() if line.startswith("objects scanned")]
    assert len(walks) == 2
    assert "shards rebuilt 1," in walks[0] and "shards rebuilt 0," in walks[1]
    assert shard_sound(victim["path"], victim["meta"])


def test_flips_in_more_than_m_shards_give_an_error_never_wrong_bytes(cluster):
    s3 = cluster.s3()
    data = payload(SIZE, 3)
    s3.put_object(Bucket="rot", Key="lost", Body=data)
    for member in (0, 1, 2):  # m = 2: three bad shards leave one, fewer than k = 2
        s = _shards_by_member(cluster, "lost")[member]
        flip_byte(s["path"], s["path"].stat().st_size - 10)  # in the last stripe
    with pytest.raises((ClientError, ResponseStreamingError, ProtocolError)):
        body = s3.get_object(Bucket="rot", Key="lost")["Body"].read()
        assert len(body) != len(data)  # never reached: a short body raises in botocore
    report = heal(cluster)
    assert report["unrecoverable"] == 1
    # The read of the first stripes still works from the range API, and the heal did not make
    # anything worse: the bad shards are still detected, never served.
    assert s3.get_object(Bucket="rot", Key="lost", Range="bytes=0-999")["Body"].read() == data[:1000]


def test_a_wiped_drive_is_rebuilt_by_heal_and_then_two_more_may_go(cluster):
    s3 = cluster.s3()
    objects = {f"w{i}": payload(size, 10 + i) for i, size in enumerate([1, 70_000, SIZE])}
    for key, body in objects.items():
        s3.put_object(Bucket="rot", Key=key, Body=body)
    first = drives(cluster)[0]
    _wipe(first)
    report = heal(cluster)
    assert report["shards_rebuilt"] == len(objects) and report["unrecoverable"] == 0
    assert report["buckets_healed"] >= 1
    assert (first / ".sealstore" / "format.json").exists()
    assert all(shard_sound(s["path"], s["meta"]) for s in current_shards(cluster, "rot", "w2").values())
    for key, body in objects.items():
        assert s3.get_object(Bucket="rot", Key=key)["Body"].read() == body

    # Wiped again: every object still reads, and the reads themselves rebuild the drive.
    _wipe(first)
    for key, body in objects.items():
        assert s3.get_object(Bucket="rot", Key=key)["Body"].read() == body
    wait_until(lambda: len([d for d in current_shards(cluster, "rot", "w2") if d == first]) == 1,
               what="heal on read of the wiped drive")
    wait_until(lambda: all(first in current_shards(cluster, "rot", k) for k in objects), what="all objects healed")

    # Drives 2 and 3 go too: with the rebuilt drive 1 and drive 4, every object still reads.
    for lost in drives(cluster)[1:3]:
        _wipe(lost)
    for key, body in objects.items():
        assert s3.get_object(Bucket="rot", Key=key)["Body"].read() == body


def _wipe(drive):
    """The folder stays, its contents go (a replaced disk mounted at the same place)."""
    for child in drive.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
