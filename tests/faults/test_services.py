"""The kms or the crypto worker dies (kill -9) under load: every request either succeeds with the
right bytes or gets a clean S3 error (4xx, 503); none hangs, none answers 500, nothing written
before is lost. The load is bench/load_cluster.py's engine in CI size."""
from __future__ import annotations

import asyncio
import time

import pytest
from botocore.exceptions import ClientError

from bench.load_cluster import Fault, LoadConfig, prepare_bucket, report, run_load
from tests.cluster.harness import unique

# Small objects keep the run short on a shared 2-core machine; one in ten still spans stripes.
CONFIG = dict(clients=24, duration=10.0, request_timeout=30.0, size_scale=0.1)


def load(cluster, faults: list[Fault]):
    bucket, key_name = unique("faults"), unique("faults-key")
    prepare_bucket(cluster, bucket, key_name)
    cfg = LoadConfig(**CONFIG)
    stats = asyncio.run(run_load(cluster, bucket, key_name, cfg, faults, sample_interval=2.0))
    print(report(stats, cfg, cfg.duration))
    return bucket, stats


def assert_round_trip(cluster, bucket: str) -> None:
    s3 = cluster.s3()
    body = b"after the fault" * 1000
    s3.put_object(Bucket=bucket, Key="after", Body=body)
    assert s3.get_object(Bucket=bucket, Key="after")["Body"].read() == body


def test_kms_restarted_under_load(cluster):
    bucket, stats = load(cluster, [Fault("kms", at=3.0, down=2.0)])
    assert [what for _, what in stats.events][:2] == ["kms killed (-9)", "kms restarted and listening"]
    assert stats.unclean() == {}, stats.errors
    # The kms being away is a 503 with the kms's code, for PUT (GenerateKey) and GET (Decrypt).
    assert all(kind.split(" ", 2)[1] in ("503",) for kind in stats.errors), stats.errors
    assert stats.ops["PUT"] > 0 and stats.ops["GET"] > 0 and stats.final_verified > 0
    assert_round_trip(cluster, bucket)


def test_crypto_worker_killed_under_load(cluster):
    bucket, stats = load(cluster, [Fault("crypto", at=3.0, down=2.0)])
    assert [what for _, what in stats.events][:2] == ["crypto killed (-9)", "crypto restarted and listening"]
    # A GET whose headers were already out when the worker died can only be cut short (the
    # gateway aborts the connection: never wrong or missing bytes presented as complete).
    unclean = {k: n for k, n in stats.unclean().items() if k != "GET connection aborted mid-body"}
    assert unclean == {}, stats.errors
    assert all(kind.split(" ", 2)[1] in ("503", "connection") for kind in stats.errors), stats.errors
    assert stats.final_verified > 0
    assert_round_trip(cluster, bucket)


def test_crypto_worker_down_answers_503_at_once(cluster):
    bucket = unique("faults")
    prepare_bucket(cluster, bucket, unique("faults-key"))
    s3 = cluster.s3()
    s3.put_object(Bucket=bucket, Key="kept", Body=b"kept" * 100)
    cluster.kill("crypto")
    for call in (lambda: s3.put_object(Bucket=bucket, Key="new", Body=b"x" * 300_000),
                 lambda: s3.put_object(Bucket=bucket, Key="small", Body=b"x"),
                 lambda: s3.get_object(Bucket=bucket, Key="kept")):
        started = time.monotonic()
        with pytest.raises(ClientError) as caught:
            call()
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503, caught.value.response
        assert caught.value.response["Error"]["Code"] in ("ServiceUnavailable", "SlowDown")
        assert time.monotonic() - started < 15
    # What needs no keys and no data still works without the worker.
    assert s3.head_object(Bucket=bucket, Key="kept")["ContentLength"] == 400
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["kept"]
    # Clients keep asking while the worker stays away. gRPC's default reconnect backoff grew
    # meanwhile (1 s x 1.6 per attempt, up to 120 s), and the gateway went on answering 503 for
    # 10-17 s after the worker was back; channels now retry every 2 s at most (sealstore/rpc.py).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with pytest.raises(ClientError):
            s3.get_object(Bucket=bucket, Key="kept")
        time.sleep(1)
    cluster.restart("crypto")
    back = time.monotonic()
    while True:
        try:
            assert s3.get_object(Bucket=bucket, Key="kept")["Body"].read() == b"kept" * 100
            break
        except ClientError as exc:
            assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 503
            assert time.monotonic() - back < 5, "the gateway kept refusing long after the worker was back"
            time.sleep(0.2)
    assert_round_trip(cluster, bucket)
