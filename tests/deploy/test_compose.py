"""`docker compose up` for real: a private Docker engine, the image built without a registry
(deploy/docker/build.sh), the compose file started, and SSE-KMS driven through boto3."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

REPO = Path(__file__).resolve().parents[2]
COMPOSE_BIN = Path(sys.executable).parents[1] / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / \
    "site-packages" / "compose" / "docker-compose"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("dockerd") or not shutil.which("debootstrap"),
    reason="needs root with docker.io and debootstrap (make test installs them when run as root)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def docker_engine():
    root = Path(tempfile.mkdtemp(prefix="ss-dk-"))
    sock = root / "docker.sock"
    log = open(root / "dockerd.log", "wb")
    engine = subprocess.Popen(
        ["dockerd", "--iptables=false", "--ip6tables=false", "--bridge=none", f"--data-root={root / 'data'}",
         f"--exec-root={root / 'exec'}", f"--pidfile={root / 'docker.pid'}", "-H", f"unix://{sock}"],
        stdout=log, stderr=subprocess.STDOUT)
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}"}
    deadline = time.monotonic() + 60
    while subprocess.run(["docker", "info"], env=env, capture_output=True).returncode != 0:
        if time.monotonic() > deadline or engine.poll() is not None:
            engine.kill()
            pytest.fail(f"dockerd did not start: {(root / 'dockerd.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield env
    engine.terminate()
    try:
        engine.wait(timeout=30)
    except subprocess.TimeoutExpired:
        engine.kill()
    subprocess.run(["umount", "-R", str(root / "data")], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def compose_cluster(docker_engine):
    build = subprocess.run(["bash", "deploy/docker/build.sh"], cwd=REPO, env=docker_engine,
                           capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    port = _free_port()
    env = {**docker_engine, "SEALSTORE_PORT": str(port)}
    compose = [str(COMPOSE_BIN), "-f", "deploy/compose.yaml", "-p", f"sealstore{port}"]
    up = subprocess.run([*compose, "up", "-d"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield compose, env, port
    finally:
        subprocess.run([*compose, "down", "-v"], cwd=REPO, env=env, capture_output=True, timeout=120)


def test_compose_up_serves_sse_kms(compose_cluster):
    compose, env, port = compose_cluster

    def in_container(service: str, *command: str, wait: float = 0) -> str:
        deadline = time.monotonic() + wait
        while True:
            result = subprocess.run([*compose, "exec", "-T", service, *command], cwd=REPO, env=env,
                                    capture_output=True, text=True, timeout=60)
            if result.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(1)  # the containers start in parallel: the kms may still be coming up
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    ps = subprocess.run([*compose, "ps", "--format", "json"], cwd=REPO, env=env, capture_output=True, text=True)
    running = {json.loads(line)["Service"] for line in ps.stdout.splitlines() if line.strip()}
    assert {"kms", "crypto", "gateway", "heal", "storage1", "storage2", "storage3", "storage4", "admin"} <= running
    # Each container holds the CA certificate and its own certificate and key, nothing else.
    for service, instance in (("kms", "kms"), ("gateway", "gateway-0"), ("crypto", "crypto-0"),
                              ("storage3", "storage-2"), ("admin", "admin"), ("heal", "heal-0")):
        files = set(in_container(service, "ls", "/secrets/certs").split())
        expected = {"ca.pem", f"{instance}.pem", f"{instance}-key.pem"} | ({"identities.json"} if service == "kms" else set())
        assert files == expected, (service, files)
        has_creds = in_container(service, "sh", "-c", "test -e /secrets/credentials.json && echo yes || echo no").strip()
        assert has_creds == ("yes" if service == "gateway" else "no"), service
    assert "compose-key" in in_container("admin", "sealstore", "key", "create", "compose-key", wait=60)
    creds = json.loads(in_container("gateway", "cat", "/secrets/credentials.json"))
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                      aws_access_key_id=creds["access_key"], aws_secret_access_key=creds["secret_key"],
                      config=Config(signature_version="s3v4", retries={"max_attempts": 1}))
    s3.create_bucket(Bucket="compose")
    s3.put_bucket_encryption(Bucket="compose", ServerSideEncryptionConfiguration={"Rules": [
        {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "compose-key"}}]})
    body = os.urandom(3 << 20)
    assert s3.put_object(Bucket="compose", Key="o", Body=body)["ServerSideEncryption"] == "aws:kms"
    assert s3.get_object(Bucket="compose", Key="o")["Body"].read() == body
    in_container("admin", "sealstore", "key", "disable", "compose-key")
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket="compose", Key="o")
    assert exc.value.response["Error"]["Code"] == "KMS.DisabledException"
    in_container("admin", "sealstore", "key", "enable", "compose-key")
    assert s3.get_object(Bucket="compose", Key="o", Range="bytes=10-99")["Body"].read() == body[10:100]
    # The admin container asks the heal service (it heals inside the cluster, on ciphertext).
    report = json.loads(in_container("admin", "sealstore", "admin", "heal", "--json", wait=30))
    assert report["objects_scanned"] == 1 and report["unrecoverable"] == 0
