"""The `sealstore` command against a running cluster, as an operator uses it."""
from __future__ import annotations


def test_status_reports_every_service(cluster):
    out = cluster.cli("status").stdout.decode()
    services = cluster.cluster_json()["services"]
    for service in services:
        line = next(line for line in out.splitlines() if line.startswith(service["name"] + " "))
        assert service["address"] in line and line.rstrip().endswith("SERVING"), line
    assert "kms: keystore fs" in out


def test_encrypt_info_without_configuration(cluster, s3):
    s3.create_bucket(Bucket="cli-plain-bucket")
    out = cluster.cli("encrypt", "info", "cli-plain-bucket").stdout.decode()
    assert "not enabled" in out
    missing = cluster.cli("encrypt", "info", "cli-no-such-bucket", check=False)
    assert missing.returncode == 1 and b"NoSuchBucket" in missing.stderr
