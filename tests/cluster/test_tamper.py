"""Metadata moved, copied, swapped or replayed on the drives never yields another object's
plaintext (issue 7, findings 1 and 2).

An attacker with write access to the drives (a stolen or compromised storage node) copies one
object's meta.json, alone or with its shard files, into another object's folder (keys are
hashed on disk: buckets/<bucket>/objects/<h[:2]>/<h>, h = sha256(key)), with the stored
bucket/key fields left as they were or edited to name the target. Every GET (whole and ranged)
and HEAD of the target must then fail with the error table's ObjectTampered, and no response
may carry the source's plaintext. Real cluster, real boto3; raw bodies are read through
presigned URLs so that nothing in the client hides what the gateway sent.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from sealstore import errors
from tests.cluster.harness import unique

INLINE_SIZE = 3000
"""Stored inside meta.json on every drive: copying the metadata alone copies the data too."""
ONE_STRIPE_SIZE = 700 * 1024
"""A shard file beside meta.json (more than 128 KiB per drive), sent with the commit."""
STREAMED_SIZE = 2 * 1024 * 1024 + 300 * 1024
"""Three stripes: shard files streamed to the drives before the commit."""


# --- the drives --------------------------------------------------------------------------

def _drives(cluster) -> list[Path]:
    return [Path(d) for s in cluster.cluster_json()["services"] if s["role"] == "storage" for d in s["drives"]]


def _object_dir(drive: Path, bucket: str, key: str) -> Path:
    h = hashlib.sha256(key.encode("utf-8")).hexdigest()
    return drive / "buckets" / bucket / "objects" / h[:2] / h


def _replay(cluster, source: tuple[str, str], target: tuple[str, str], *, shards: bool, rename: bool,
            drives: list[Path] | None = None) -> None:
    """Puts source's meta.json (and with `shards` its shard files) in target's folder on each
    drive; `rename`: the stored bucket/key fields are edited to name the target."""
    for drive in drives or _drives(cluster):
        src, dst = _object_dir(drive, *source), _object_dir(drive, *target)
        assert (src / "meta.json").exists() and (dst / "meta.json").exists(), (src, dst)
        meta = json.loads((src / "meta.json").read_bytes())
        if rename:
            meta["bucket"], meta["key"] = target
        if shards:
            for old in dst.glob("*.shard"):
                old.unlink()
            for shard in src.glob("*.shard"):
                shutil.copyfile(shard, dst / shard.name)
        (dst / "meta.json").write_text(json.dumps(meta))


def _swap(cluster, first: tuple[str, str], second: tuple[str, str], *, shards: bool) -> None:
    for drive in _drives(cluster):
        a, b = _object_dir(drive, *first), _object_dir(drive, *second)
        names = ["meta.json"] + ([p.name for p in [*a.glob("*.shard"), *b.glob("*.shard")]] if shards else [])
        held = {d: {n: (d / n).read_bytes() for n in names if (d / n).exists()} for d in (a, b)}
        for here, there in ((a, b), (b, a)):
            for name in names:
                (here / name).unlink(missing_ok=True)
            for name, content in held[there].items():
                (here / name).write_bytes(content)


# --- what the client sees ----------------------------------------------------------------

def _raw(s3, method: str, bucket: str, key: str, headers: dict | None = None) -> tuple[int, bytes]:
    """Status and body exactly as the gateway sent them (a presigned URL made by boto3)."""
    url = s3.generate_presigned_url("get_object" if method == "GET" else "head_object",
                                    Params={"Bucket": bucket, "Key": key}, ExpiresIn=300)
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _leaks(body: bytes, secret: bytes) -> bool:
    probes = [secret[i:i + 32] for i in range(0, len(secret) - 32, max(1, len(secret) // 16))]
    return any(p in body for p in probes)


def assert_refused(s3, bucket: str, key: str, secret: bytes, *, renamed: bool = False) -> None:
    """No byte of the secret (the source's plaintext) is in any response to GET (whole and
    ranged) or HEAD of bucket/key, and each fails as ObjectTampered. `renamed`: the stored names
    were edited to the request's, so only the cryptographic binding refuses: the kms does not
    decrypt the DEK under this object's context (KMS.InvalidCiphertextException), and HEAD,
    which never unseals, cannot tell."""
    error = errors.KMSInvalidCiphertext if renamed else errors.ObjectTampered
    for headers in ({}, {"Range": "bytes=100-1999"}, {"Range": "bytes=-500"}):
        status, body = _raw(s3, "GET", bucket, key, headers)
        assert not _leaks(body, secret), f"GET {headers} answered {status} with the source's plaintext"
        assert status == error.http_status, (headers, status, body[:300])
        assert f"<Code>{error.code}</Code>".encode() in body, body[:300]
    status, body = _raw(s3, "HEAD", bucket, key)
    assert body == b""
    if not renamed:
        assert status == error.http_status, f"HEAD answered {status}"
    with pytest.raises(ClientError) as whole:
        s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert whole.value.response["Error"]["Code"] == error.code
    assert whole.value.response["ResponseMetadata"]["HTTPStatusCode"] == error.http_status
    with pytest.raises(ClientError) as ranged:
        s3.get_object(Bucket=bucket, Key=key, Range="bytes=100-1999")["Body"].read()
    assert ranged.value.response["Error"]["Code"] == error.code
    if not renamed:
        with pytest.raises(ClientError) as head:
            s3.head_object(Bucket=bucket, Key=key)
        assert head.value.response["ResponseMetadata"]["HTTPStatusCode"] == error.http_status


# --- fixtures ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kms_key(cluster):
    """One kms key for every object here: only the name binding keeps objects apart."""
    name = unique("tamper-key")
    cluster.cli("key", "create", name)
    return name


@pytest.fixture
def buckets(s3):
    first, second = unique("tamper-one"), unique("tamper-two")
    s3.create_bucket(Bucket=first)
    s3.create_bucket(Bucket=second)
    return first, second


def _put(s3, bucket: str, key: str, body: bytes, kms_key: str | None) -> str:
    extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key} if kms_key else {}
    return s3.put_object(Bucket=bucket, Key=key, Body=body, **extra)["ETag"]


# Each case: source (bucket 0 or 1, key) replayed onto target. Keys that Go's path.Join (the
# old binding) folded together are distinct objects on disk.
CASES = {
    "across-buckets": ((0, "A"), (1, "B")),
    "dotdot-alias": ((0, "a/../c"), (0, "c")),
    "double-slash-alias": ((0, "a//b"), (0, "a/b")),
    "dot-alias": ((0, "./x"), (0, "x")),
    "escape-into-other-bucket": ((0, "../{other}/B"), (1, "B")),
}
REPLAYS = {"meta": (False, False), "meta+shards": (True, False), "meta-renamed": (False, True),
           "meta+shards-renamed": (True, True)}


def _names(buckets, case):
    (sb, sk), (tb, tk) = CASES[case]
    return (buckets[sb], sk.format(other=buckets[1])), (buckets[tb], tk)


SIZES = {"inline": INLINE_SIZE, "one-stripe": ONE_STRIPE_SIZE, "streamed": STREAMED_SIZE}
# The aliases differ from the cross-bucket cases only in the names: inline objects suffice.
REPLAY_PARAMS = [pytest.param(case, replay, size, id=f"{case}-{replay}-{size}")
                 for case in CASES for replay in REPLAYS
                 for size in (SIZES if "bucket" in case else ["inline"])]


@pytest.mark.parametrize("case,replay,size", REPLAY_PARAMS)
def test_replayed_metadata_never_reads_as_the_target(cluster, s3, kms_key, buckets, case, replay, size):
    source, target = _names(buckets, case)
    secret, other = os.urandom(SIZES[size]), os.urandom(SIZES[size] + 7)
    _put(s3, *source, secret, kms_key)
    _put(s3, *target, other, kms_key)
    shards, rename = REPLAYS[replay]
    _replay(cluster, source, target, shards=shards, rename=rename)
    # Names edited to the target's pass the name comparison; the kms context and the KEK,
    # bound to the request's names, refuse them. HEAD may show the copied metadata (readable on
    # the drive anyway), never data.
    assert_refused(s3, *target, secret, renamed=rename)
    assert s3.get_object(Bucket=source[0], Key=source[1])["Body"].read() == secret


@pytest.mark.parametrize("shards", [False, True], ids=["meta", "meta+shards"])
def test_swapped_metadata_within_a_bucket(cluster, s3, kms_key, buckets, shards):
    bucket = buckets[0]
    first, second = os.urandom(INLINE_SIZE), os.urandom(STREAMED_SIZE)
    _put(s3, bucket, "first", first, kms_key)
    _put(s3, bucket, "second", second, kms_key)
    _swap(cluster, (bucket, "first"), (bucket, "second"), shards=shards)
    assert_refused(s3, bucket, "first", second)
    assert_refused(s3, bucket, "second", first)


@pytest.mark.parametrize("shards", [False, True], ids=["meta", "meta+shards"])
def test_unencrypted_relocation_is_caught_by_the_names(cluster, s3, buckets, shards):
    source, target = (buckets[0], "A"), (buckets[1], "B")
    secret = os.urandom(INLINE_SIZE)
    _put(s3, *source, secret, None)
    _put(s3, *target, os.urandom(INLINE_SIZE), None)
    _replay(cluster, source, target, shards=shards, rename=False)
    assert_refused(s3, *target, secret)


@pytest.mark.parametrize("encrypted", [True, False], ids=["sse-kms", "plain"])
@pytest.mark.parametrize("tampered", [1, 2], ids=["one-drive", "read-quorum-drives"])
def test_tampered_copies_are_read_around(cluster, s3, kms_key, buckets, tampered, encrypted):
    """A foreign copy is a bad copy: the good ones are read. With as many foreign copies as a
    read quorum, all written after the target (so newer), they still never win."""
    target, source = (buckets[1], "B"), (buckets[0], "A")
    body = os.urandom(STREAMED_SIZE)
    secret = os.urandom(STREAMED_SIZE)
    etag = _put(s3, *target, body, kms_key if encrypted else None)
    _put(s3, *source, secret, kms_key if encrypted else None)
    _replay(cluster, source, target, shards=True, rename=False, drives=_drives(cluster)[:tampered])
    assert s3.get_object(Bucket=target[0], Key=target[1])["Body"].read() == body
    ranged = s3.get_object(Bucket=target[0], Key=target[1], Range="bytes=1000-300000")["Body"].read()
    assert ranged == body[1000:300001]
    head = s3.head_object(Bucket=target[0], Key=target[1])
    assert head["ContentLength"] == len(body)
    assert head["ETag"] == etag


def test_heal_after_tampering_touches_nothing_of_the_source(cluster, s3, kms_key, buckets):
    """The heal walk reads metadata through the same comparison: a foreign copy is neither the
    version it rebuilds from nor a name it writes to."""
    target, source = (buckets[1], "B"), (buckets[0], "A")
    body, secret = os.urandom(STREAMED_SIZE), os.urandom(STREAMED_SIZE)
    _put(s3, *target, body, kms_key)
    _put(s3, *source, secret, kms_key)
    _replay(cluster, source, target, shards=True, rename=False, drives=_drives(cluster)[:2])
    before = {p: p.read_bytes() for d in _drives(cluster) for p in _object_dir(d, *source).iterdir()}
    for bucket in buckets:
        result = cluster.cli("admin", "heal", "--json", "--bucket", bucket, check=False)
        assert result.returncode in (0, 1), result.stderr.decode()
    after = {p: p.read_bytes() for d in _drives(cluster) for p in _object_dir(d, *source).iterdir()}
    assert after == before
    assert s3.get_object(Bucket=target[0], Key=target[1])["Body"].read() == body
    assert s3.get_object(Bucket=source[0], Key=source[1])["Body"].read() == secret
