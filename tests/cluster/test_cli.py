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


def test_encrypt_set_sse_s3_like_mc(cluster, s3):
    s3.create_bucket(Bucket="cli-sse-s3-bucket")
    out = cluster.cli("encrypt", "set", "sse-s3", "cli-sse-s3-bucket").stdout.decode()
    assert "sse-s3" in out
    assert "'AES256' is enabled" in cluster.cli("encrypt", "info", "cli-sse-s3-bucket").stdout.decode()
    head = s3.put_object(Bucket="cli-sse-s3-bucket", Key="k", Body=b"x")
    assert head["ServerSideEncryption"] == "AES256"
    wrong = cluster.cli("encrypt", "set", "sse-s3", "key", "cli-sse-s3-bucket", check=False)
    assert wrong.returncode == 2 and b"usage" in wrong.stderr


# ---------------------------------------------------------------- user errors: one line, no traceback
# Issue 8: `sealstore encrypt set` ended in a FileNotFoundError traceback for credentials.json when
# the cluster had its root credentials from the environment and the shell did not.

import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402

import pytest  # noqa: E402

from tests.cluster.harness import SEALSTORE  # noqa: E402


def _user_error(env: dict, *args: str, code: int | None = None) -> str:
    result = subprocess.run([SEALSTORE, *args], env=env, capture_output=True, timeout=60)
    stderr = result.stderr.decode()
    assert result.returncode != 0 and (code is None or result.returncode == code), (args, result.returncode, stderr)
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, (args, stderr)
    assert stderr.startswith("sealstore"), stderr
    return stderr


def _env(data) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALSTORE_")}
    return {**env, "SEALSTORE_DATA_DIR": str(data)}


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_missing_credentials_are_one_line(cluster, tmp_path):
    # The cluster's data folder as a shell sees it when `make run` took the root credentials
    # from the environment: cluster.json and certificates, no credentials.json.
    data = tmp_path / "data"
    data.mkdir()
    (data / "cluster.json").write_text((cluster.data / "cluster.json").read_text())
    (data / "certs").symlink_to(cluster.data / "certs")
    cluster.s3().create_bucket(Bucket="cli-creds-bucket")
    err = _user_error(_env(data), "encrypt", "set", "sse-kms", "some-key", "cli-creds-bucket")
    assert "SEALSTORE_ROOT_USER" in err and "SEALSTORE_ROOT_PASSWORD" in err
    _user_error(_env(data), "encrypt", "info", "cli-creds-bucket")


def test_a_stopped_cluster_is_one_line(cluster, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    raw = json.loads((cluster.data / "cluster.json").read_text())
    ports = {s["address"]: f"127.0.0.1:{_unused_port()}" for s in raw["services"]}
    text = json.dumps(raw)
    for old, new in ports.items():
        text = text.replace(f'"{old}', f'"{new}')
    (data / "cluster.json").write_text(text)
    (data / "certs").symlink_to(cluster.data / "certs")
    (data / "credentials.json").write_text((cluster.data / "credentials.json").read_text())
    for args in (("key", "list"), ("key", "create", "k"), ("admin", "heal"), ("admin", "heal", "--status"),
                 ("encrypt", "info", "b")):
        assert "does not answer" in _user_error(_env(data), *args), args


@pytest.mark.parametrize("args", [("key", "list"), ("key", "describe", "k"), ("admin", "heal"),
                                  ("admin", "drives"), ("encrypt", "set", "sse-kms", "k", "b"), ("status",),
                                  ("key", "rewrap", "--bucket", "b")])
def test_a_wrong_data_directory_is_one_line(tmp_path, args):
    err = _user_error(_env(tmp_path / "nowhere"), *args)
    assert "cluster.json" in err and str(tmp_path / "nowhere") in err


def test_an_unknown_key_is_one_line(cluster):
    env = _env(cluster.data)
    assert "KMS.NotFoundException" in _user_error(env, "key", "describe", "cli-no-such-key")
    assert "KMS.NotFoundException" in _user_error(env, "key", "disable", "cli-no-such-key")


@pytest.mark.parametrize("args", [("key", "min-version", "k", "not-a-number"), ("no-such-command",),
                                  ("admin", "heal", "--rate", "-1"), ("encrypt", "set", "sse-s3", "k", "b"),
                                  ("key",)])
def test_a_bad_argument_is_one_line(tmp_path, args):
    _user_error(_env(tmp_path), *args)


def test_an_unreadable_file_is_one_line(cluster, tmp_path):
    assert "No such file" in _user_error(_env(cluster.data), "key", "import", "k", "--key-file",
                                         str(tmp_path / "none"))
    assert "No such file" in _user_error(_env(tmp_path), "dare", "encrypt", "--key-file", str(tmp_path / "none"))
