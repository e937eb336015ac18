"""`docker compose up` as users type it (`make compose-test`): the compose file builds the image
itself, starts every service with health checks over their own TLS, serves SSE-KMS through the
published ports with boto3, survives a stopped storage node, heals it once it is back, and keeps
every object across `down` and `up`.

Docker: the engine DOCKER_HOST (or /var/run/docker.sock) names if one answers; else a private
engine this test starts and stops (root, Debian's docker.io). No registry is reachable here, so the
base image comes from debootstrap and the wheels are downloaded on the host
(deploy/docker/build.sh --prepare-only); compose passes the base through SEALSTORE_BASE_IMAGE. The
private engine keeps its images in SEALSTORE_TEST_DOCKER_ROOT (default
/var/tmp/sealstore-test-docker), so the debootstrap base (minutes) is made once per machine.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]
COMPOSE_BIN = Path(sys.executable).parents[1] / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / \
    "site-packages" / "compose" / "docker-compose"
BASE_IMAGE = "local/sealstore-base:bookworm"
STORAGE = [f"storage-{i}" for i in range(4)]
SERVICES = {"kms", "crypto-0", "crypto-1", "gateway", "heal", "admin", *STORAGE}


def _engine_answers(env: dict) -> bool:
    return shutil.which("docker") is not None and \
        subprocess.run(["docker", "info"], env=env, capture_output=True, timeout=30).returncode == 0


def _why_no_docker() -> str:
    if not COMPOSE_BIN.exists():
        return f"no docker compose binary at {COMPOSE_BIN} (pip install -r requirements-test.lock)"
    if _engine_answers(dict(os.environ)):
        return ""
    if os.geteuid() != 0:
        return "no Docker engine answers and starting one needs root"
    missing = [tool for tool in ("dockerd", "docker", "debootstrap") if not shutil.which(tool)]
    if missing:
        return f"no Docker engine answers and {', '.join(missing)} missing (make test installs docker.io and " \
               f"debootstrap as root)"
    return ""


WHY = _why_no_docker()
pytestmark = pytest.mark.skipif(bool(WHY), reason=f"compose test skipped: {WHY}")


@pytest.fixture(scope="module")
def docker_engine():
    if _engine_answers(dict(os.environ)):
        yield dict(os.environ)
        return
    root = Path(os.environ.get("SEALSTORE_TEST_DOCKER_ROOT", "/var/tmp/sealstore-test-docker"))
    root.mkdir(parents=True, exist_ok=True)
    lock = open(root / ".lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # another run uses the cached engine root: use a throwaway one
        lock.close()
        lock, root = None, Path(tempfile.mkdtemp(prefix="ss-dk-"))
    # The socket and runtime state in a short private folder (unix socket paths are limited).
    run = Path(tempfile.mkdtemp(prefix="ss-dkrun-"))
    sock = run / "docker.sock"
    log = open(run / "dockerd.log", "wb")
    engine = subprocess.Popen(
        ["dockerd", "--iptables=false", "--ip6tables=false", "--bridge=none", f"--data-root={root / 'data'}",
         f"--exec-root={run / 'exec'}", f"--pidfile={run / 'docker.pid'}", "-H", f"unix://{sock}"],
        stdout=log, stderr=subprocess.STDOUT)
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}"}
    deadline = time.monotonic() + 60
    while subprocess.run(["docker", "info"], env=env, capture_output=True).returncode != 0:
        if time.monotonic() > deadline or engine.poll() is not None:
            engine.kill()
            pytest.fail(f"dockerd did not start: {(run / 'dockerd.log').read_text()[-2000:]}")
        time.sleep(0.5)
    try:
        yield env
    finally:
        engine.terminate()
        try:
            engine.wait(timeout=60)
        except subprocess.TimeoutExpired:
            engine.kill()
            engine.wait()
        subprocess.run(["umount", "-R", str(run / "exec")], capture_output=True)
        shutil.rmtree(run, ignore_errors=True)
        if lock is None:
            subprocess.run(["umount", "-R", str(root / "data")], capture_output=True)
            shutil.rmtree(root, ignore_errors=True)
        else:
            lock.close()


class Compose:
    def __init__(self, env: dict, project: str, profiles: tuple[str, ...] = ()):
        self.env, self.project = env, project
        self.base = [str(COMPOSE_BIN), "-f", "deploy/compose.yaml", "-p", project,
                     *(arg for profile in profiles for arg in ("--profile", profile))]

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([*self.base, *args], cwd=REPO, env=self.env, capture_output=True, text=True,
                                timeout=timeout)
        if check:
            assert result.returncode == 0, f"compose {' '.join(args)}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
        return result

    def exec(self, service: str, *command: str, wait: float = 0) -> str:
        deadline = time.monotonic() + wait
        while True:
            result = self.run("exec", "-T", service, *command, timeout=120, check=False)
            if result.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert result.returncode == 0, f"{service} {command}: {result.stdout}{result.stderr}"
        return result.stdout

    def up(self, *args: str) -> None:
        # --wait: returns once every service's health check (sealstore probe) passes.
        result = self.run("up", "-d", "--wait", *args, check=False, timeout=900)
        if result.returncode != 0:
            logs = self.run("logs", "--no-color", "--tail", "30", check=False).stdout
            pytest.fail(f"compose up: {result.stdout[-2000:]}{result.stderr[-3000:]}\n{logs[-8000:]}")

    def health(self) -> dict[str, str]:
        ps = self.run("ps", "--format", "json").stdout
        rows = [json.loads(line) for line in ps.splitlines() if line.strip()]
        if len(rows) == 1 and isinstance(rows[0], list):
            rows = rows[0]
        return {row["Service"]: row.get("Health") or row.get("State") for row in rows}


@pytest.fixture(scope="module")
def prepared(docker_engine) -> dict:
    """The environment compose runs in: free published ports and, without a registry, the
    debootstrap base and the wheels on the host (deploy/docker/build.sh; none of this with one)."""
    env = {**docker_engine, "SEALSTORE_PORT": str(free_port()), "SEALSTORE_HTTPS_PORT": str(free_port()),
           "SEALSTORE_HEAL_INTERVAL": "3600"}
    env.setdefault("SEALSTORE_BASE_IMAGE", BASE_IMAGE)
    prepare = subprocess.run(["bash", "deploy/docker/build.sh", "--prepare-only", "--openbao"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=1800)
    assert prepare.returncode == 0, prepare.stdout[-3000:] + prepare.stderr[-3000:]
    return env


@pytest.fixture(scope="module")
def compose(prepared):
    started = time.monotonic()
    cluster = Compose(prepared, f"sealstoretest{prepared['SEALSTORE_PORT']}")
    try:
        cluster.up("--build")
        print(f"\ncompose build + up: {time.monotonic() - started:.0f}s", file=sys.stderr)
        yield cluster
    finally:
        cluster.run("down", "-v", "--remove-orphans", check=False, timeout=300)


def s3_client(compose: Compose, https: bool = False):
    creds = json.loads(compose.exec("gateway", "cat", "/secrets/credentials.json"))
    port = compose.env["SEALSTORE_HTTPS_PORT" if https else "SEALSTORE_PORT"]
    verify = None
    if https:
        ca = Path(tempfile.mkdtemp(prefix="ss-ca-")) / "ca.pem"
        ca.write_text(compose.exec("gateway", "cat", "/secrets/certs/ca.pem"))
        verify = str(ca)
    return boto3.client("s3", endpoint_url=f"{'https' if https else 'http'}://127.0.0.1:{port}",
                        region_name="us-east-1", aws_access_key_id=creds["access_key"],
                        aws_secret_access_key=creds["secret_key"], verify=verify,
                        config=Config(signature_version="s3v4", retries={"max_attempts": 2}))


def read_all(s3, objects: dict[str, bytes]) -> None:
    for key, body in objects.items():
        got = s3.get_object(Bucket="compose", Key=key)
        assert got["ServerSideEncryption"] == "aws:kms" and got["SSEKMSKeyId"] == "compose-key", key
        assert got["Body"].read() == body, key


def test_compose_up_heal_and_restart(compose):
    timings = {}
    assert set(compose.health()) >= SERVICES
    assert all(compose.health()[s] == "healthy" for s in SERVICES), compose.health()
    # Each container holds the CA certificate and its own certificate and key, nothing else.
    for service, instance in (("kms", "kms"), ("gateway", "gateway-0"), ("crypto-0", "crypto-0"),
                              ("crypto-1", "crypto-1"), ("storage-2", "storage-2"), ("admin", "admin"),
                              ("heal", "heal-0")):
        files = set(compose.exec(service, "find", "/secrets", "-type", "f").split())
        expected = {f"/secrets/certs/{name}" for name in ("ca.pem", f"{instance}.pem", f"{instance}-key.pem")}
        expected |= {"/secrets/certs/identities.json"} if service == "kms" else set()
        expected |= {"/secrets/credentials.json", "/secrets/certs/https/gateway.pem",
                     "/secrets/certs/https/gateway-key.pem"} if service == "gateway" else set()
        assert files == expected, (service, files)
    # The health check is the service's own: a probe with the wrong port fails.
    assert compose.run("exec", "-T", "crypto-0", "sealstore", "probe", "--address", "127.0.0.1:9999",
                       "--timeout", "2", check=False).returncode == 1

    assert "compose-key" in compose.exec("admin", "sealstore", "key", "create", "compose-key", wait=60)
    s3 = s3_client(compose)
    s3.create_bucket(Bucket="compose")
    s3.put_bucket_encryption(Bucket="compose", ServerSideEncryptionConfiguration={"Rules": [
        {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "compose-key"}}]})
    context = base64.b64encode(json.dumps({"project": "compose"}).encode()).decode()
    objects = {f"before/{i}": os.urandom(size) for i, size in enumerate((0, 1, 70_000, 3 << 20))}
    for key, body in objects.items():
        reply = s3.put_object(Bucket="compose", Key=key, Body=body, ServerSideEncryption="aws:kms",
                              SSEKMSKeyId="compose-key", SSEKMSEncryptionContext=context)
        assert reply["ServerSideEncryption"] == "aws:kms"
    read_all(s3, objects)
    # The same API over the gateway's HTTPS port, checked against the cluster CA.
    s3_tls = s3_client(compose, https=True)
    s3_tls.put_object(Bucket="compose", Key="before/tls", Body=b"over https")
    objects["before/tls"] = b"over https"
    read_all(s3_tls, objects)

    # One storage node down: every object reads back (2 data + 2 parity), and writes go on.
    began = time.monotonic()
    compose.run("stop", "storage-1")
    read_all(s3, objects)
    written_while_down = {f"while-down/{i}": os.urandom(size) for i, size in enumerate((10, 200_000, 2 << 20))}
    for key, body in written_while_down.items():
        s3.put_object(Bucket="compose", Key=key, Body=body)
    objects.update(written_while_down)
    read_all(s3, objects)
    compose.run("start", "storage-1")
    compose.up()  # waits for storage-1 to be healthy again
    report = json.loads(compose.exec("admin", "sealstore", "admin", "heal", "--json", wait=30))
    assert report["unrecoverable"] == 0 and report["shards_failed"] == 0, report
    assert report["objects_healed"] >= len(written_while_down), report
    # Healed for real: with two other nodes stopped, only storage-1 and storage-3 hold shards.
    compose.run("stop", "storage-0", "storage-2")
    read_all(s3, written_while_down)
    compose.run("start", "storage-0", "storage-2")
    timings["storage down, heal"] = time.monotonic() - began

    # down (volumes kept) and up again: the same PKI, keys and objects.
    began = time.monotonic()
    compose.run("down", timeout=300)
    compose.up()
    assert all(compose.health()[s] == "healthy" for s in SERVICES), compose.health()
    s3 = s3_client(compose)
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket="compose")["Contents"]}
    assert listed == set(objects)
    read_all(s3, objects)
    timings["down, up, read"] = time.monotonic() - began
    print(" ".join(f"{k}: {v:.0f}s;" for k, v in timings.items()), file=sys.stderr)


def test_compose_openbao_profile_keeps_the_keys_in_openbao(prepared):
    env = {**prepared, "SEALSTORE_KMS_KEYSTORE": "openbao-transit", "SEALSTORE_PORT": str(free_port()),
           "SEALSTORE_HTTPS_PORT": str(free_port())}
    cluster = Compose(env, f"sealstorebao{env['SEALSTORE_PORT']}", profiles=("openbao",))
    try:
        cluster.up("--build")
        assert cluster.health()["openbao"] == "healthy"
        cluster.exec("admin", "sealstore", "key", "create", "bao-key", wait=60)
        s3 = s3_client(cluster)
        s3.create_bucket(Bucket="bao")
        body = os.urandom(300_000)
        s3.put_object(Bucket="bao", Key="o", Body=body, ServerSideEncryption="aws:kms", SSEKMSKeyId="bao-key")
        bao = ["sh", "-c", 'BAO_ADDR=http://127.0.0.1:8200 BAO_TOKEN=$(sed -n '
               '"s/.*\\"root_token\\": *\\"\\([^\\"]*\\)\\".*/\\1/p" /openbao/init.json) bao list transit/keys']
        assert "bao-key" in cluster.exec("openbao", *bao).split()  # the key lives in OpenBao's transit engine
        assert not cluster.exec("kms", "find", "/data", "-name", "bao-key*").strip()  # and not in the kms
        # OpenBao unseals itself after a restart; the kms's token is still good.
        cluster.run("down", timeout=300)
        cluster.up()
        got = s3_client(cluster).get_object(Bucket="bao", Key="o")
        assert got["SSEKMSKeyId"] == "bao-key" and got["Body"].read() == body
    finally:
        cluster.run("down", "-v", "--remove-orphans", check=False, timeout=300)
