"""The same basic checks on 4×1, 4×2 and 8×1 layouts: round trips, one node lost, heal, the
drive table; and format files: a drive moved to another slot or from another deployment is
refused and shown as such, never written to."""
from __future__ import annotations

import json

import pytest

from tests.durability.conftest import drives, heal, payload

SIZES = [0, 10, 200_000, 2_200_000]


@pytest.mark.parametrize("nodes,per_node", [(4, 1), (4, 2), (8, 1)])
def test_layout_round_trip_node_loss_and_heal(make_cluster, nodes, per_node):
    c = make_cluster(nodes=nodes, drives=per_node)
    info = c.cluster_json()
    assert len(info["erasure"]["set"]) == nodes * per_node
    storage = [s for s in info["services"] if s["role"] == "storage"]
    assert all(len(s["drives"]) == per_node for s in storage)
    s3 = c.s3()
    s3.create_bucket(Bucket="layout")
    data = {f"k{i}": payload(size, i) for i, size in enumerate(SIZES)}
    for key, body in data.items():
        s3.put_object(Bucket="layout", Key=key, Body=body)
    for d in drives(c):
        fmt = json.loads((d / ".sealstore" / "format.json").read_text())
        assert fmt["deployment_id"] == info["deployment_id"]
    table = json.loads(c.cli("admin", "drives", "--json").stdout)
    assert [r["state"] for r in table] == ["online"] * (nodes * per_node)

    c.kill("storage1")
    s3.put_object(Bucket="layout", Key="while-down", Body=b"w" * 5000)
    for key, body in data.items():
        assert s3.get_object(Bucket="layout", Key=key)["Body"].read() == body
    table = json.loads(c.cli("admin", "drives", "--json", check=False).stdout)
    assert sum(r["state"] == "offline" for r in table) == per_node
    c.restart("storage1")
    report = heal(c)
    assert report["shards_rebuilt"] == per_node and report["unrecoverable"] == 0
    assert s3.get_object(Bucket="layout", Key="while-down")["Body"].read() == b"w" * 5000


def test_misplaced_and_foreign_drives_are_refused_and_reported(make_cluster):
    c = make_cluster(nodes=4)
    s3 = c.s3()
    s3.create_bucket(Bucket="fmt")
    s3.put_object(Bucket="fmt", Key="a", Body=b"a" * 1000)
    d1, d2 = drives(c)[:2]
    # Swap the format files of drives 1 and 2, as if the disks were put back in the wrong bays.
    f1, f2 = d1 / ".sealstore" / "format.json", d2 / ".sealstore" / "format.json"
    t1, t2 = f1.read_text(), f2.read_text()
    c.kill("storage1")
    f1.write_text(t2)
    c.restart("storage1")
    table = json.loads(c.cli("admin", "drives", "--json", check=False).stdout)
    assert table[0]["state"] == "misplaced" and "slot" in table[0]["detail"]
    before = sorted(p.relative_to(d1) for p in d1.rglob("*"))
    # The object stays readable from the others; nothing touches the refused drive.
    assert s3.get_object(Bucket="fmt", Key="a")["Body"].read() == b"a" * 1000
    s3.put_object(Bucket="fmt", Key="b", Body=b"b" * 1000)
    heal(c)
    assert sorted(p.relative_to(d1) for p in d1.rglob("*")) == before

    c.kill("storage1")
    fmt = json.loads(t1)
    fmt["deployment_id"] = "another-deployment"
    f1.write_text(json.dumps(fmt))
    c.restart("storage1")
    table = json.loads(c.cli("admin", "drives", "--json", check=False).stdout)
    assert table[0]["state"] == "foreign" and "another-deployment" in table[0]["detail"]
    assert c.cli("admin", "drives", check=False).returncode == 1

    # Put the right format file back: the drive is used again and heal catches it up.
    c.kill("storage1")
    f1.write_text(t1)
    c.restart("storage1")
    assert heal(c)["shards_rebuilt"] == 1  # object b, written while the drive was refused
    assert [r["state"] for r in json.loads(c.cli("admin", "drives", "--json").stdout)] == ["online"] * 4
