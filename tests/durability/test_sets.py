"""Several erasure sets: 8 nodes × 1 drive cut into two sets of 4 (2+2). Each object lives on
exactly the 4 drives of one set, chosen by the hash of bucket/key; listings merge the sets in
key order; heal works set by set; losing m drives in each set loses nothing. Impossible layouts
are refused before anything starts."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from botocore.exceptions import ClientError

from sealstore import config
from tests.cluster.harness import SEALSTORE
from tests.durability.conftest import current_shards, drives, error_code, heal, payload

SIZES = [0, 100, 5_000, 300_000, 1_500_000]


def _wipe(drive):
    for child in drive.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def test_two_sets_route_list_heal_and_survive_m_losses_in_each(make_cluster):
    c = make_cluster(nodes=8, drives=1, set_size=4)
    info = c.cluster_json()
    assert info["erasure"]["parity_shards"] == 2 and info["erasure"]["set_drive_count"] == 4
    storage = [s for s in info["services"] if s["role"] == "storage"]
    assert info["erasure"]["sets"] == [[f"{s['address']}/0" for s in storage[:4]],
                                       [f"{s['address']}/0" for s in storage[4:]]]
    all_drives = drives(c)
    sets = [set(all_drives[:4]), set(all_drives[4:])]
    for i, d in enumerate(all_drives):
        fmt = json.loads((d / ".sealstore" / "format.json").read_text())
        assert (fmt["set_index"], fmt["drive_index"]) == divmod(i, 4)

    s3 = c.s3()
    s3.create_bucket(Bucket="spread")
    data = {f"obj-{i:02d}": payload(SIZES[i % len(SIZES)], i) for i in range(24)}
    for key, body in data.items():
        s3.put_object(Bucket="spread", Key=key, Body=body)

    # Each object on exactly the drives of one set (meta.json + shard or inline), both sets used,
    # and the set is the one the hash names.
    used = set()
    for key in data:
        holders = set(current_shards(c, "spread", key))
        expected = config.set_of("spread", key, 2, info["deployment_id"])
        assert holders == sets[expected], key
        used.add(expected)
    assert used == {0, 1}
    # Bucket metadata is on every drive of every set.
    assert all((d / "buckets" / "spread").is_dir() for d in all_drives)

    # Listing across sets: key order, pages of 5, with a prefix too.
    keys, token = [], None
    while True:
        page = s3.list_objects_v2(Bucket="spread", MaxKeys=5, **({"ContinuationToken": token} if token else {}))
        keys += [o["Key"] for o in page.get("Contents", [])]
        if not page["IsTruncated"]:
            break
        token = page["NextContinuationToken"]
    assert keys == sorted(data)
    listed = s3.list_objects_v2(Bucket="spread", Prefix="obj-1")
    assert [o["Key"] for o in listed["Contents"]] == [k for k in sorted(data) if k.startswith("obj-1")]

    for key, body in data.items():
        assert s3.head_object(Bucket="spread", Key=key)["ContentLength"] == len(body)
        assert s3.get_object(Bucket="spread", Key=key)["Body"].read() == body
    for key in ["obj-00", "obj-01", "obj-02"]:
        s3.delete_object(Bucket="spread", Key=key)
        del data[key]
        with pytest.raises(ClientError) as err:
            s3.head_object(Bucket="spread", Key=key)
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        assert current_shards(c, "spread", key) == {}
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="spread")["Contents"]] == sorted(data)

    # A bucket spans every set: not empty in one set is not empty.
    with pytest.raises(ClientError) as err:
        s3.delete_bucket(Bucket="spread")
    assert error_code(err.value) == "BucketNotEmpty"
    assert "spread" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    s3.create_bucket(Bucket="empty")
    s3.delete_bucket(Bucket="empty")
    assert not any((d / "buckets" / "empty").exists() for d in all_drives)

    # Heal, set by set: one drive wiped in each set is rebuilt; the counts cover both sets.
    wiped = [all_drives[1], all_drives[5]]
    for name, d in zip(["storage2", "storage6"], wiped):
        c.kill(name)
        _wipe(d)
        c.restart(name)
    report = heal(c)
    assert report["objects_scanned"] == len(data) and report["unrecoverable"] == 0
    assert report["shards_rebuilt"] == len(data)  # each object had exactly one shard on a wiped drive
    for key in data:
        assert set(current_shards(c, "spread", key)) in sets
    assert heal(c)["shards_rebuilt"] == 0

    # m = 2 drives lost in each set at once: every object still reads.
    for name in ["storage1", "storage2", "storage7", "storage8"]:
        c.kill(name)
    for key, body in data.items():
        assert s3.get_object(Bucket="spread", Key=key)["Body"].read() == body
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket="spread")["Contents"]) == sorted(data)

    # A third drive of set 1 lost: its objects fail cleanly (503), set 0's still read.
    c.kill("storage6")
    for key, body in data.items():
        if config.set_of("spread", key, 2, info["deployment_id"]) == 0:
            assert s3.get_object(Bucket="spread", Key=key)["Body"].read() == body
        else:
            with pytest.raises(ClientError) as err:
                s3.get_object(Bucket="spread", Key=key)["Body"].read()
            assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503


@pytest.mark.parametrize("nodes,env,words", [
    (6, {"SEALSTORE_SET_DRIVE_COUNT": "4"}, "6 drives do not divide into sets of 4"),
    (4, {"SEALSTORE_SET_DRIVE_COUNT": "8"}, "larger than the 4 drives"),
    (4, {"SEALSTORE_PARITY": "3"}, "parity may not exceed data"),
])
def test_an_impossible_layout_is_refused_at_start(tmp_path, nodes, env, words):
    run_env = {**os.environ, "SEALSTORE_DATA_DIR": str(tmp_path / "data"), "SEALSTORE_STORAGE_NODES": str(nodes),
               "SEALSTORE_DRIVES_PER_NODE": "1", **env}
    for name in ("SEALSTORE_SET_DRIVE_COUNT", "SEALSTORE_PARITY"):
        if name not in env:
            run_env.pop(name, None)
    result = subprocess.run([SEALSTORE, "run"], env=run_env, capture_output=True, timeout=60)
    assert result.returncode != 0
    assert words in result.stderr.decode(), result.stderr.decode()
    assert not (tmp_path / "data" / "drives").exists()  # refused before any drive is touched


def test_topology_from_env_lists_several_sets():
    env = {config.ENV_STORAGE_SETS: "a:1/0,b:1/0,c:1/0,d:1/0;e:1/0,f:1/0,g:1/0,h:1/0",
           config.ENV_DEPLOYMENT_ID: "dep"}
    topo = config.topology_from_env(env)
    assert [[m.address for m in s] for s in topo.storage_sets] == [["a:1", "b:1", "c:1", "d:1"],
                                                                   ["e:1", "f:1", "g:1", "h:1"]]
    assert (topo.set_size, topo.parity_shards, topo.deployment_id) == (4, 2, "dep")
    one = config.topology_from_env({config.ENV_STORAGE_SET: "a:1,b:1,c:1,d:1"})
    assert len(one.storage_sets) == 1 and one.storage_set == one.storage_sets[0]
    with pytest.raises(ValueError, match="same number of drives"):
        config.topology_from_env({config.ENV_STORAGE_SETS: "a:1,b:1,c:1,d:1;e:1,f:1,g:1"})
