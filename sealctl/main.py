"""The `sealstore` command: run a local cluster, manage keys, set bucket encryption, DARE tools.

Every subcommand finds the cluster through the data directory (`SEALSTORE_DATA_DIR`, default
./data): `cluster.json` for addresses, `certs/admin*.pem` for the kms, `credentials.json` (or
the environment) for S3.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from xml.etree import ElementTree
from xml.sax.saxutils import escape as xml_escape

import grpc

from sealctl import admin as cli_admin, keys as cli_keys, policy as cli_policy, probe as cli_probe
from sealctl.errors import BadArgument, ClusterDown, CliError, MissingCredentials, NoCluster
from sealstore import config, errors

S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def _fail(message: str) -> int:
    print(f"sealstore: {message}", file=sys.stderr)
    return 1


# ---------------------------------------------------------------- bucket encryption (S3 API, like mc encrypt)

def _s3_credentials(data: Path) -> tuple[str, str]:
    user, password = os.environ.get(config.ENV_ROOT_USER), os.environ.get(config.ENV_ROOT_PASSWORD)
    if user and password:
        return user, password
    path = data / "credentials.json"
    try:
        creds = json.loads(path.read_text())
        return creds["access_key"], creds["secret_key"]
    except FileNotFoundError:
        raise MissingCredentials(
            f"no root S3 credentials: set {config.ENV_ROOT_USER} and {config.ENV_ROOT_PASSWORD} as the cluster "
            f"was started with (there is no {path})") from None
    except (ValueError, KeyError, TypeError):
        raise MissingCredentials(f"{path} is not a credentials file (access_key, secret_key)") from None


def _s3_request(method: str, bucket: str, query: str, body: bytes = b"") -> tuple[int, bytes]:
    import hashlib
    from sealstore import sigv4
    data = config.data_dir()
    topology = config.load_topology(data)
    access, secret = _s3_credentials(data)
    url = f"http://{topology.gateway}/{bucket}?{query}"
    headers = {"content-type": "application/xml"} if body else {}
    signed = sigv4.sign_request(method, url, headers, hashlib.sha256(body).hexdigest(), access, secret)
    request = urllib.request.Request(url, data=body or None, method=method, headers=signed)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        why = getattr(reason, "strerror", None) or reason
        raise ClusterDown(f"the gateway at {topology.gateway} does not answer ({why}); is the cluster running? "
                          f"(`sealstore status`)") from None


def _s3_error(body: bytes) -> str:
    try:
        root = ElementTree.fromstring(body)
        return f"{root.findtext('Code')}: {root.findtext('Message')}"
    except ElementTree.ParseError:
        return body.decode(errors="replace")[:500]


def cmd_encrypt(args) -> int:
    if args.action == "set":
        # Like `mc encrypt set sse-kms KEY alias/bucket` and `mc encrypt set sse-s3 alias/bucket`.
        if args.algorithm == "sse-kms" and len(args.names) == 2:
            key, bucket = args.names
            rule = f"<SSEAlgorithm>aws:kms</SSEAlgorithm><KMSMasterKeyID>{xml_escape(key)}</KMSMasterKeyID>"
            described = f"sse-kms, key {key}"
        elif args.algorithm == "sse-s3" and len(args.names) == 1:
            bucket, = args.names
            rule, described = "<SSEAlgorithm>AES256</SSEAlgorithm>", "sse-s3"
        else:
            print("sealstore: usage: sealstore encrypt set sse-kms KEY BUCKET | sealstore encrypt set sse-s3 BUCKET", file=sys.stderr)
            return 2
        xml = ("<ServerSideEncryptionConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Rule>"
               f"<ApplyServerSideEncryptionByDefault>{rule}</ApplyServerSideEncryptionByDefault>"
               "</Rule></ServerSideEncryptionConfiguration>").encode()
        status, body = _s3_request("PUT", bucket, "encryption=", xml)
        if status != 200:
            return _fail(_s3_error(body))
        print(f"Auto encryption configuration has been set successfully for {bucket} ({described})")
    elif args.action == "info":
        status, body = _s3_request("GET", args.bucket, "encryption=")
        if status == 404 and b"ServerSideEncryptionConfigurationNotFoundError" in body:
            print(f"Auto encryption is not enabled for {args.bucket}")
            return 0
        if status != 200:
            return _fail(_s3_error(body))
        root = ElementTree.fromstring(body)
        algorithm = root.findtext(f".//{S3_NS}SSEAlgorithm") or root.findtext(".//SSEAlgorithm")
        key = root.findtext(f".//{S3_NS}KMSMasterKeyID") or root.findtext(".//KMSMasterKeyID") or ""
        print(f"Auto encryption 'sse-kms' is enabled for {args.bucket} with key {key}" if algorithm == "aws:kms"
              else f"Auto encryption '{algorithm}' is enabled for {args.bucket}")
    elif args.action == "clear":
        status, body = _s3_request("DELETE", args.bucket, "encryption=")
        if status not in (200, 204):
            return _fail(_s3_error(body))
        print(f"Auto encryption configuration has been cleared for {args.bucket}")
    return 0


# ---------------------------------------------------------------- status

def cmd_status(args) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from sealstore import rpc
    from sealstore.v1 import kms_pb2
    data = config.data_dir()
    path = data / "cluster.json"
    if not path.exists():
        raise NoCluster(_no_cluster(path))
    raw = json.loads(path.read_text())
    certs = config.certs_dir(data)
    healthy = True
    for service in raw["services"]:
        if service["role"] == "gateway":
            import socket
            host, port = service["address"].rsplit(":", 1)
            try:
                socket.create_connection((host, int(port)), timeout=2).close()
                state = "SERVING"
            except OSError as exc:
                state, healthy = f"DOWN ({exc.strerror})", False
        else:
            channel = rpc.sync_channel(certs, "admin", service["address"], server=service["role"])
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=3)
                state = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as exc:
                state, healthy = f"DOWN ({exc.code().name})", False
            finally:
                channel.close()
        restarts = service.get("restarts", 0)
        print(f"{service['name']:<10} {service['role']:<8} {service['address']:<22} pid {str(service.get('pid')):<8} "
              f"restarts {restarts:<3} {state}")
    try:
        status = cli_keys.kms_stub().Status(kms_pb2.StatusRequest(), timeout=3)
        print(f"kms: keystore {status.keystore}, {status.key_count} keys, up {status.uptime_seconds:.0f}s")
    except grpc.RpcError as exc:
        print(f"kms status: {errors.from_rpc_error(exc).message}")
        healthy = False
    return 0 if healthy else 1


# ---------------------------------------------------------------- entry point

class _Parser(argparse.ArgumentParser):
    """argparse with its refusals as a typed error (one line), not usage + message + exit."""

    def error(self, message: str):
        raise BadArgument(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sealstore", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("run", help="start the local cluster in the foreground (Ctrl-C stops it)")

    cli_keys.register(sub)

    enc = sub.add_parser("encrypt", help="bucket default encryption, like `mc encrypt`")
    enc_sub = enc.add_subparsers(dest="action", required=True)
    enc_set = enc_sub.add_parser("set")
    enc_set.add_argument("algorithm", choices=["sse-kms", "sse-s3"])
    enc_set.add_argument("names", nargs="+", metavar="[KEY] BUCKET", help="sse-kms KEY BUCKET, or sse-s3 BUCKET")
    enc_sub.add_parser("info").add_argument("bucket")
    enc_sub.add_parser("clear").add_argument("bucket")

    sub.add_parser("status", help="health of every service of the local cluster")

    dare = sub.add_parser("dare", help="DARE 2.0 encrypt/decrypt stdin to stdout (minio/sio compatible)")
    dare.add_argument("rest", nargs=argparse.REMAINDER)

    init = sub.add_parser("init", help="create the dev PKI and root S3 credentials in the data directory "
                                       "(what `run` does first; for containers)")
    init.add_argument("--san", action="append", default=[],
                      help="extra DNS name or IP for the kms certificate (its KES HTTPS API); may repeat")
    init.add_argument("--storage-nodes", type=int, default=4, help="storage node certificates storage-0.. (default 4)")
    init.add_argument("--crypto-workers", type=int, default=1, help="crypto worker certificates crypto-0.. (default 1)")
    init.add_argument("--gateways", type=int, default=1, help="gateway certificates gateway-0.. (default 1)")
    init.add_argument("--bundles", type=Path, default=None,
                      help="also copy, for every instance whose folder BUNDLES/<instance> exists, only what it "
                           "may hold: CA certificate, its own certificate and key (the gateway: the root S3 "
                           "credentials and its HTTPS certificate; the kms: identities.json)")
    init.add_argument("--https-san", action="append", default=[],
                      help="extra DNS name or IP for the gateway's HTTPS certificate (issued for gateway bundles; "
                           "localhost and 127.0.0.1 always); may repeat")
    cli_policy.register(sub)
    cli_admin.register(sub)
    cli_probe.register(sub)
    return parser


def _no_cluster(path: Path) -> str:
    return (f"no cluster in {path.parent}: {path.name} does not exist (start one with `sealstore run`, or set "
            f"{config.ENV_DATA_DIR} to its data directory)")


def _rpc_failure(exc: grpc.RpcError) -> str:
    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        details = (exc.details() or "").splitlines()[0] if exc.details() else exc.code().name
        return f"the cluster does not answer ({details}); is it running? (`sealstore status`)"
    err = errors.from_rpc_error(exc)
    return f"{err.code}: {err.message}"


def main(argv: list[str] | None = None) -> int:
    """Runs one command; every user error ends here as one line on stderr and a nonzero status."""
    try:
        return _dispatch(build_parser().parse_args(argv))
    except CliError as err:
        print(f"sealstore: {err}", file=sys.stderr)
        return err.exit_code
    except grpc.RpcError as exc:
        print(f"sealstore: {_rpc_failure(exc)}", file=sys.stderr)
        return 1
    except errors.SealstoreError as err:
        print(f"sealstore: {err.code}: {err.message}", file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        if exc.filename is None:  # raised with a message of its own (config.load_topology)
            message = str(exc)
        elif Path(exc.filename).name == "cluster.json":
            message = _no_cluster(Path(exc.filename))
        else:
            message = (f"{exc.filename}: {exc.strerror} (data directory {config.data_dir()}; set "
                       f"{config.ENV_DATA_DIR} to the cluster's)")
        print(f"sealstore: {message}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"sealstore: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sealstore: interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if (handled := cli_policy.dispatch(args)) is not None:
        return handled
    if (handled := cli_admin.dispatch(args)) is not None:
        return handled
    if args.command == "run":
        from sealctl import launcher
        return launcher.run()
    if (handled := cli_keys.dispatch(args)) is not None:
        return handled
    if args.command == "encrypt":
        return cmd_encrypt(args)
    if args.command == "status":
        return cmd_status(args)
    if args.command == "dare":
        from services.crypto import dare_cli
        return dare_cli.main(args.rest)
    if args.command == "probe":
        return cli_probe.run(args)
    if args.command == "init":
        from sealctl import launcher
        from sealstore import tls
        data = config.data_dir()
        target = config.certs_dir(data)
        layout = tls.PkiLayout(storage_nodes=args.storage_nodes, crypto_workers=args.crypto_workers,
                               gateways=args.gateways)
        replaced = tls.ensure_dev_pki(target, tuple(args.san), layout)
        if replaced:
            print(f"replaced certificates of an earlier version: {', '.join(replaced)}")
        user, _, generated = launcher.ensure_credentials(data)
        print(f"certificates in {target}; identities (SHA-256 of each public key):")
        for instance, identity in tls.instance_identities(target).items():
            print(f"  {instance:<10} {identity}")
        if args.bundles:
            for _, instance in layout.instances():
                if (args.bundles / instance).is_dir():
                    tls.write_bundle(target, instance, args.bundles / instance)
                    if instance.startswith("gateway") and (data / "credentials.json").exists():
                        config.write_file_atomic(args.bundles / instance / "credentials.json",
                                                 (data / "credentials.json").read_bytes(), mode=0o600)
                    if instance.startswith("gateway"):
                        # Where the gateway looks by default: <certs>/https/ (tls.https_files).
                        for source, mode in zip(tls.ensure_gateway_https_certificate(target, tuple(args.https_san)),
                                                (0o644, 0o600)):
                            config.write_file_atomic(args.bundles / instance / "certs" / tls.HTTPS_DIR / source.name,
                                                     source.read_bytes(), mode=mode)
                    print(f"bundle for {instance} in {args.bundles / instance}")
        print(f"root S3 access key: {user}" + (f" (new; secret in {data / 'credentials.json'})" if generated else ""))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
