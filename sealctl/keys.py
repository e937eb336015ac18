"""`sealstore key ...`: external keys in the kms, over gRPC with the admin identity.

    sealstore key create|describe|disable|enable|rotate|cancel-deletion NAME
    sealstore key import NAME --key-file F
    sealstore key list [PATTERN]
    sealstore key delete NAME --force [--schedule DAYS]
    sealstore key min-version NAME VERSION [--force]
    sealstore key rewrap --bucket B [--key K] [--restart] [--limit N] [--concurrency N]
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import datetime
import json
import sys
from pathlib import Path

from sealstore import config, errors

COMMAND = "key"


def _fail(message: str) -> int:
    print(f"sealstore: {message}", file=sys.stderr)
    return 1


def kms_stub():
    from sealstore import rpc
    from sealstore.v1 import kms_pb2_grpc
    data = config.data_dir()
    topology = config.load_topology(data)
    channel = rpc.sync_channel(config.certs_dir(data), "admin", topology.kms, server="kms")
    stub = kms_pb2_grpc.KeyServiceStub(channel)
    stub.channel = channel
    return stub


def _utc(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_key(info) -> str:
    if info.deletion_ns:
        state = "PENDING-DELETION"
    else:
        state = "enabled" if info.enabled else "DISABLED"
    line = f"{info.name:<32} {info.algorithm:<8} {state:<9} {_utc(info.created_ns)}"
    if info.version > 1 or info.min_version > 1:
        line += f"  v{info.version} (min v{info.min_version})"
    if info.deletion_ns:
        line += f"  deleted at {_utc(info.deletion_ns)}"
    return line


def read_key_material(path: str) -> bytes:
    raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    if len(raw) == 32:
        return raw
    text = raw.strip()
    for decode in (binascii.unhexlify, base64.b64decode):
        try:
            key = decode(text)
        except (binascii.Error, ValueError):
            continue
        if len(key) == 32:
            return key
    raise SystemExit("sealstore: a key file holds 32 raw bytes, 64 hex characters or base64 of 32 bytes")


def register(subparsers) -> None:
    key = subparsers.add_parser(COMMAND, help="manage external keys in the kms")
    key_sub = key.add_subparsers(dest="action", required=True)
    for action, text in (("create", "a new random 256-bit key"), ("describe", "a key's state as JSON"),
                         ("disable", "lock every object under the key"), ("enable", "unlock it again"),
                         ("rotate", "add a new key version; new objects use it, old ones still read"),
                         ("cancel-deletion", "stop a scheduled deletion (the key stays disabled)")):
        key_sub.add_parser(action, help=text).add_argument("name")
    imp = key_sub.add_parser("import", help="import 32 bytes of key material")
    imp.add_argument("name")
    imp.add_argument("--key-file", required=True, help="32 raw bytes, 64 hex chars or base64; - for stdin")
    lst = key_sub.add_parser("list")
    lst.add_argument("pattern", nargs="?", default="*")
    delete = key_sub.add_parser("delete", help="delete a key: objects under it become unreadable for good")
    delete.add_argument("name")
    delete.add_argument("--force", action="store_true", help="confirm: required, deletion cannot be undone")
    delete.add_argument("--schedule", type=int, metavar="DAYS", default=0,
                        help="schedule the deletion 7-30 days ahead; until then the key is unusable "
                             "and `sealstore key cancel-deletion` recovers it")
    minv = key_sub.add_parser("min-version", help="refuse decrypting under versions below VERSION")
    minv.add_argument("name")
    minv.add_argument("version", type=int)
    minv.add_argument("--force", action="store_true",
                      help="skip the check that no object in any bucket still needs a lower version")
    rewrap = key_sub.add_parser("rewrap", help="re-wrap every object's data key under its key's newest version, "
                                               "without rewriting object data (resumable)")
    rewrap.add_argument("--bucket", required=True)
    rewrap.add_argument("--key", default="", help="only objects under this key (default: every key)")
    rewrap.add_argument("--restart", action="store_true", help="ignore the checkpoint of an earlier run")
    rewrap.add_argument("--limit", type=int, default=0, metavar="N",
                        help="stop after N objects (the next run resumes from there)")
    rewrap.add_argument("--concurrency", type=int, default=32, metavar="N", help="objects rewrapped at once")


def _quorum_client():
    """The quorum client of the whole cluster (routes each object to its erasure set)."""
    from sealstore.erasure.client import connect
    data = config.data_dir()
    return connect(config.load_topology(data), config.certs_dir(data), "admin")


def _kms_versions():
    from sealstore import rpc
    from sealctl.rewrap import KmsKeyVersions
    data = config.data_dir()
    return KmsKeyVersions(rpc.aio_channel(config.certs_dir(data), "admin", config.load_topology(data).kms,
                                          server="kms"))


def _show_progress(report) -> None:
    if sys.stderr.isatty():
        print(f"\r{report.line()}", end="", file=sys.stderr, flush=True)
    elif report.scanned % 1000 < 32 or report.scanned < 32:
        print(report.line(), file=sys.stderr, flush=True)


async def _rewrap(args) -> int:
    from sealctl.rewrap import Checkpoint, rewrap_bucket
    checkpoint = Checkpoint.for_bucket(config.data_dir(), args.bucket, args.key)
    if args.restart:
        checkpoint.remove()
    elif checkpoint.load():
        print(f"resuming after {checkpoint.last_key!r} (checkpoint {checkpoint.path}; --restart starts over)",
              file=sys.stderr)
    store, kms = _quorum_client(), _kms_versions()
    try:
        report = await rewrap_bucket(store, kms, args.bucket, checkpoint, limit=args.limit,
                                     concurrency=max(1, args.concurrency), on_progress=_show_progress)
    finally:
        await asyncio.gather(store.close(), kms.close())
    if sys.stderr.isatty():
        print(file=sys.stderr)
    for failure in report.failures[:20]:
        print(f"failed: {failure}", file=sys.stderr)
    state = "done" if report.complete else f"stopped after {report.scanned} objects; run again to resume"
    print(f"rewrap {args.bucket}: {report.line()} ({state})")
    return 1 if report.failed else 0


async def _census(name: str, version: int):
    from sealctl.rewrap import objects_below_version
    store = _quorum_client()
    try:
        return await objects_below_version(store, name, version)
    finally:
        await store.close()


def dispatch(args: argparse.Namespace) -> int | None:
    if getattr(args, "command", None) != COMMAND:
        return None
    from sealstore.v1 import kms_pb2
    if args.action == "delete" and not args.force:
        return _fail(f"deleting key {args.name} makes every object under it unreadable for good; "
                     f"add --force to confirm (or --force --schedule DAYS for a 7-30 day window)")
    if args.action == "rewrap":
        try:
            return asyncio.run(_rewrap(args))
        except errors.SealstoreError as err:
            return _fail(f"rewrap: {err.code}: {err.message}")
    stub = kms_stub()
    try:
        if args.action == "create":
            print(format_key(stub.CreateKey(kms_pb2.CreateKeyRequest(name=args.name))))
        elif args.action == "import":
            material = read_key_material(args.key_file)
            print(format_key(stub.ImportKey(kms_pb2.ImportKeyRequest(name=args.name, key=material))))
        elif args.action == "list":
            for info in stub.ListKeys(kms_pb2.ListKeysRequest(pattern=args.pattern)).keys:
                print(format_key(info))
        elif args.action == "describe":
            info = stub.DescribeKey(kms_pb2.KeyRequest(name=args.name))
            print(json.dumps({"name": info.name, "algorithm": info.algorithm, "enabled": info.enabled,
                              "created_ns": info.created_ns, "created_by": info.created_by,
                              "version": info.version, "min_version": info.min_version,
                              "deletion_ns": info.deletion_ns}, indent=2))
        elif args.action == "disable":
            stub.DisableKey(kms_pb2.KeyRequest(name=args.name))
            print(f"key {args.name} disabled: objects under it are locked until it is enabled again")
        elif args.action == "enable":
            stub.EnableKey(kms_pb2.KeyRequest(name=args.name))
            print(f"key {args.name} enabled")
        elif args.action == "rotate":
            info = stub.RotateKey(kms_pb2.KeyRequest(name=args.name))
            print(f"key {args.name} rotated: new objects use version {info.version}; older versions still read")
        elif args.action == "min-version":
            current = stub.DescribeKey(kms_pb2.KeyRequest(name=args.name))
            if not args.force and args.version > current.min_version:
                census = asyncio.run(_census(args.name, args.version))
                if census.below or census.unreadable:
                    return _fail(
                        f"refusing: {census.below} object(s) still need a version of key {args.name} below "
                        f"{args.version}" + (f" and {census.unreadable} could not be checked" if census.unreadable
                                             else "") +
                        f" (e.g. {', '.join(census.examples[:5])}); run `sealstore key rewrap --bucket B "
                        f"--key {args.name}` for each bucket first, or add --force to retire the version anyway "
                        f"(those objects become unreadable)")
            info = stub.SetMinVersion(kms_pb2.SetMinVersionRequest(name=args.name, min_version=args.version))
            print(f"key {args.name}: versions below {info.min_version} no longer decrypt")
        elif args.action == "cancel-deletion":
            stub.CancelKeyDeletion(kms_pb2.KeyRequest(name=args.name))
            print(f"key {args.name}: deletion cancelled; it stays disabled until `sealstore key enable {args.name}`")
        elif args.action == "delete":
            stub.DeleteKey(kms_pb2.DeleteKeyRequest(name=args.name, pending_window_days=args.schedule))
            if args.schedule:
                info = stub.DescribeKey(kms_pb2.KeyRequest(name=args.name))
                print(f"key {args.name} scheduled for deletion at {_utc(info.deletion_ns)}; unusable until then, "
                      f"`sealstore key cancel-deletion {args.name}` recovers it")
            else:
                print(f"key {args.name} deleted: objects under it are unreadable for good")
    finally:
        stub.channel.close()  # gRPC and typed errors end in sealctl.main, as one line
    return 0
