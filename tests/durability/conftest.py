"""Whole-cluster failure tests: real `sealstore run` clusters (SEALSTORE_KEEP_GOING=1, so a
killed service does not stop the others), real S3 clients, kill -9, flipped bytes, wiped drives."""
from __future__ import annotations

import http.client
import json
import random
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from botocore.exceptions import ClientError

from sealstore import sigv4
from services.storage.shardfile import verify_shard
from tests.cluster.harness import RunningCluster, start_cluster, stop_cluster


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/durability/" in str(item.fspath):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture
def make_cluster(tmp_path):
    """make_cluster(nodes=6, drives=1, parity=2, set_size=0): a cluster of the test's own."""
    made: list[RunningCluster] = []

    def make(nodes: int = 4, drives: int = 1, parity: int = 0, set_size: int = 0) -> RunningCluster:
        env = {"SEALSTORE_KEEP_GOING": "1", "SEALSTORE_STORAGE_NODES": str(nodes),
               "SEALSTORE_DRIVES_PER_NODE": str(drives)}
        if parity:
            env["SEALSTORE_PARITY"] = str(parity)
        if set_size:
            env["SEALSTORE_SET_DRIVE_COUNT"] = str(set_size)
        root = tmp_path / f"c{len(made)}"
        root.mkdir()
        c = start_cluster(root, extra_env=env, storage_nodes=nodes)
        made.append(c)
        return c
    yield make
    for c in made:
        stop_cluster(c)


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def error_code(exc: ClientError) -> str:
    return exc.response["Error"]["Code"]


def http_status(exc: ClientError) -> int:
    return exc.response["ResponseMetadata"]["HTTPStatusCode"]


def heal(cluster: RunningCluster, *args: str) -> dict:
    result = cluster.cli("admin", "heal", "--json", *args, check=False)
    assert result.returncode in (0, 1), result.stderr.decode()
    return json.loads(result.stdout)


def drives(cluster: RunningCluster) -> list[Path]:
    return [Path(d) for s in cluster.cluster_json()["services"] if s["role"] == "storage" for d in s["drives"]]


def object_dirs(drive: Path, bucket: str) -> list[Path]:
    objects = drive / "buckets" / bucket / "objects"
    return [o for fan in objects.iterdir() for o in fan.iterdir()] if objects.exists() else []


def shard_files(cluster: RunningCluster, bucket: str) -> list[Path]:
    return sorted(p for d in drives(cluster) for o in object_dirs(d, bucket) for p in o.glob("*.shard"))


def current_shards(cluster: RunningCluster, bucket: str, key: str) -> dict[Path, dict]:
    """drive -> {"path": its shard of the key's current version, "meta": meta.json}."""
    import hashlib
    h = hashlib.sha256(key.encode()).hexdigest()
    out = {}
    for d in drives(cluster):
        meta_path = d / "buckets" / bucket / "objects" / h[:2] / h / "meta.json"
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            out[d] = {"path": meta_path.parent / f"{meta['data_id']}.shard", "meta": meta}
    return out


def shard_sound(path: Path, meta: dict) -> bool:
    return path.exists() and verify_shard(path, int(meta["erasure"]["stripe_count"]), deep=True,
                                              data_id=meta["data_id"]) == ""


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def leftovers(cluster: RunningCluster, bucket: str) -> list[Path]:
    """tmp files and shard files that no meta.json names, on every drive. A replaced version kept
    for the undo (prev.json, services/storage/drive.py RETAIN_PREVIOUS_SECONDS) counts as named
    while it is that young; an older prev.json and its shards are leftovers."""
    from services.storage.drive import PREVIOUS_VERSION_FILE, RETAIN_PREVIOUS_SECONDS
    found = [p for d in drives(cluster) for p in (d / "tmp").glob("*") if (d / "tmp").exists()]
    for d in drives(cluster):
        for o in object_dirs(d, bucket):
            named = set()
            versions = [o / "meta.json"]
            kept = o / PREVIOUS_VERSION_FILE
            if kept.exists() and time.time() - kept.stat().st_mtime < RETAIN_PREVIOUS_SECONDS + 5:
                versions.append(kept)
            for version in versions:
                if version.exists():
                    meta = json.loads(version.read_text())
                    named.add(meta["data_id"] + ".shard")
                    named.update(p["data_id"] + ".shard" for p in meta.get("parts", []))  # a multipart object
            found += [p for p in o.glob("*.shard") if p.name not in named]
    return found


def wait_until(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout}s")


def slow_put(cluster: RunningCluster, bucket: str, key: str, size: int, on_half, chunk: int = 256 * 1024,
             seed: int = 7) -> int | None:
    """PUT of `size` bytes sent in chunks, calling `on_half()` once half is sent; returns the HTTP
    status, or None if the connection broke."""
    body = payload(size, seed)
    url = f"{cluster.endpoint}/{bucket}/{key}"
    headers = sigv4.sign_request("PUT", url, {"content-length": str(size)}, "UNSIGNED-PAYLOAD",
                                 cluster.access_key, cluster.secret_key)
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.putrequest("PUT", parts.path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        called = False
        for off in range(0, size, chunk):
            if off >= size // 2 and not called:
                called = True
                on_half()
                time.sleep(0.5)
            conn.send(body[off:off + chunk])
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
