"""`sealstore admin`: healing and drive state of the erasure sets.

`admin heal` asks the cluster's heal service (services/heal) to heal and follows its progress
over gRPC; the healing itself, on ciphertext shards only, runs in the cluster. `admin drives`
asks every storage node directly (NodeStatus, with the admin identity). `admin uploads` lists
multipart uploads in progress through the quorum client and, with --clean, removes them (parts
and record, as an abort; the heal scanner does the same after SEALSTORE_UPLOAD_EXPIRY)."""
from __future__ import annotations

import asyncio
import datetime
import json
import os
import sys
import time

from sealctl.errors import ClusterDown, CliError, NoCluster
from sealstore import config

ENV_HEAL_ADDR = "SEALSTORE_HEAL_ADDR"
"""host:port of the heal service where no cluster.json names it (containers)."""
COUNTS = ("objects_scanned", "objects_healed", "shards_rebuilt", "shards_failed", "unrecoverable",
          "dangling_removed", "orphans_removed", "buckets_healed", "skipped", "uploads_expired")


def register(subparsers) -> None:
    admin = subparsers.add_parser("admin", help="heal the erasure sets, show their drives")
    sub = admin.add_subparsers(dest="admin_action", required=True)
    heal = sub.add_parser("heal", help="have the cluster rebuild missing, stale or corrupt shards and metadata "
                                       "now, and show its progress and counts")
    heal.add_argument("--bucket", default="", help="only this bucket")
    heal.add_argument("--dry-run", action="store_true", help="report what would be rebuilt, change nothing")
    heal.add_argument("--quick", action="store_true",
                      help="check shard sizes only, not every block checksum (faster, misses bit rot)")
    heal.add_argument("--json", action="store_true", help="print the counts as JSON")
    heal.add_argument("--metrics-file", default="",
                      help="also write this heal's counters in Prometheus text format to this file "
                           "(for node_exporter's textfile collector)")
    heal.add_argument("--rate", type=float, default=0.0,
                      help="at most this many objects per second (0: as fast as possible)")
    heal.add_argument("--every", type=float, default=0.0, metavar="SECONDS",
                      help="ask again this long after each heal ends, until interrupted (or --cycles heals); "
                           "counts are printed per heal (the cluster's own scanner does this by itself)")
    heal.add_argument("--cycles", type=int, default=0, help="with --every: stop after this many heals")
    heal.add_argument("--status", action="store_true",
                      help="start nothing: show the background scanner and the running or last heal")
    drives = sub.add_parser("drives", help="state of every drive of the erasure sets")
    drives.add_argument("--json", action="store_true")
    uploads = sub.add_parser("uploads", help="multipart uploads in progress (bucket, key, upload id, initiated, "
                                             "parts, bytes); --clean removes them")
    uploads.add_argument("--bucket", default="", help="only this bucket")
    uploads.add_argument("--older-than", default="", metavar="DURATION",
                         help="only uploads started (and last given a part) longer ago than this: 7d, 12h, 30m, "
                              "45s or seconds")
    uploads.add_argument("--clean", action="store_true",
                         help="remove the uploads listed (their parts and record), as AbortMultipartUpload")
    uploads.add_argument("--json", action="store_true")


def dispatch(args) -> int | None:
    if args.command != "admin":
        return None
    if args.admin_action == "heal":
        if args.rate < 0 or args.every < 0 or args.cycles < 0:
            raise CliError("--rate, --every and --cycles must not be negative")
        return _heal_status(args) if args.status else _heal(args)
    if args.admin_action == "drives":
        return asyncio.run(_drives(args))
    if args.admin_action == "uploads":
        from sealstore.erasure.uploads import parse_duration
        try:
            args.older_than_s = parse_duration(args.older_than) if args.older_than else 0.0
        except ValueError as exc:
            raise CliError(f"--older-than: {exc}") from None
        return asyncio.run(_uploads(args))
    return 2


def _client():
    from sealstore.erasure.client import connect
    data = config.data_dir()
    return connect(config.load_topology(data), config.certs_dir(data), "admin")


def heal_address(data) -> str:
    if os.environ.get(ENV_HEAL_ADDR):
        return os.environ[ENV_HEAL_ADDR]
    path = data / "cluster.json"
    if not path.exists():
        raise NoCluster(f"no cluster in {data}: cluster.json does not exist (start one with `sealstore run`, "
                        f"or set {config.ENV_DATA_DIR}; containers: set {ENV_HEAL_ADDR})")
    services = json.loads(path.read_text()).get("services", [])
    address = next((s["address"] for s in services if s.get("role") == "heal"), None)
    if address is None:
        raise ClusterDown(f"the cluster in {data} runs no heal service (started by an older sealstore: "
                          f"stop it and `sealstore run` again)")
    return address


def _heal_stub():
    from sealstore import rpc
    from sealstore.v1 import heal_pb2_grpc
    data = config.data_dir()
    channel = rpc.sync_channel(config.certs_dir(data), "admin", heal_address(data), server="heal")
    return heal_pb2_grpc.HealServiceStub(channel), channel


def _heal(args) -> int:
    from sealstore.v1 import heal_pb2
    stub, channel = _heal_stub()
    status, heals = 0, 0
    try:
        while True:
            run = stub.StartHeal(heal_pb2.StartHealRequest(bucket=args.bucket, dry_run=args.dry_run,
                                                           quick=args.quick, rate=args.rate), timeout=30)
            status = _print_run(args, _follow(stub, run))
            heals += 1
            if not args.every or (args.cycles and heals >= args.cycles):
                return status
            time.sleep(args.every)
    finally:
        channel.close()


def _follow(stub, run):
    """Polls the heal until it ends, showing its progress on a terminal."""
    from sealstore.v1 import heal_pb2
    shown = False
    try:
        while run.state == "running":
            time.sleep(0.2)
            run = stub.GetHeal(heal_pb2.GetHealRequest(id=run.id), timeout=30)
            if sys.stderr.isatty():
                print(f"\r{_progress(run)}", end="", file=sys.stderr, flush=True)
                shown = True
    except KeyboardInterrupt:
        raise CliError(f"stopped following heal {run.id}; it goes on in the cluster "
                       f"(`sealstore admin heal --status`)") from None
    finally:
        if shown:
            print(file=sys.stderr)
    return run


def _progress(run) -> str:
    return (f"heal {run.id}: {run.state}, buckets {run.buckets_done}/{run.buckets_total}, objects scanned "
            f"{run.counts.objects_scanned}, healed {run.counts.objects_healed}, shards rebuilt "
            f"{run.counts.shards_rebuilt}")


def _counts(run) -> dict[str, int]:
    return {name: getattr(run.counts, name) for name in COUNTS}


def _print_run(args, run) -> int:
    if run.state != "done":
        print(f"sealstore: heal {run.id} {run.state}: {run.error or 'ended early'}", file=sys.stderr, flush=True)
        return 1
    counts = _counts(run)
    if args.metrics_file:
        _write_metrics(args.metrics_file, counts)
    if args.json:
        print(json.dumps({**counts, "dry_run": run.dry_run, "id": run.id, "details": list(run.details)}),
              flush=True)
    else:
        for line in run.details:
            print(line)
        print(("dry run: " if run.dry_run else "") + ", ".join(f"{name.replace('_', ' ')} {counts[name]}"
                                                             for name in COUNTS), flush=True)
    return 1 if run.counts.unrecoverable or run.counts.shards_failed else 0


def _write_metrics(path: str, counts: dict[str, int]) -> None:
    """This heal's counts under the names the heal service exports (sealstore/erasure/heal.py)."""
    from prometheus_client import CollectorRegistry, Counter, write_to_textfile
    registry = CollectorRegistry()
    objects = Counter("sealstore_heal_objects_total", "Objects examined by this heal, by result", ["result"],
                      registry=registry)
    shards = Counter("sealstore_heal_shards_total", "Member copies this heal rebuilt or failed to rebuild",
                     ["result"], registry=registry)
    settled = counts["objects_healed"] + counts["unrecoverable"] + counts["dangling_removed"]
    for result, value in (("healthy", max(0, counts["objects_scanned"] - settled)),
                          ("healed", counts["objects_healed"]), ("unrecoverable", counts["unrecoverable"]),
                          ("dangling_removed", counts["dangling_removed"])):
        objects.labels(result).inc(value)
    shards.labels("rebuilt").inc(counts["shards_rebuilt"])
    shards.labels("failed").inc(counts["shards_failed"])
    write_to_textfile(path, registry)


def _when(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M:%S") if ns else "-"


def _heal_status(args) -> int:
    from sealstore.v1 import heal_pb2
    stub, channel = _heal_stub()
    try:
        scanner = stub.ScannerStatus(heal_pb2.ScannerStatusRequest(), timeout=30)
        try:
            latest = stub.GetHeal(heal_pb2.GetHealRequest(), timeout=30)
        except Exception as exc:  # no heal yet: INVALID_ARGUMENT
            import grpc
            if not isinstance(exc, grpc.RpcError) or exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            latest = None
    finally:
        channel.close()
    if args.json:
        from google.protobuf import json_format
        print(json.dumps({"scanner": json_format.MessageToDict(scanner, preserving_proto_field_name=True),
                          "latest": json_format.MessageToDict(latest, preserving_proto_field_name=True)
                          if latest else None}, indent=2))
        return 0
    if scanner.enabled:
        print(f"scanner: a walk every {scanner.interval_seconds:g} s at most {scanner.rate:g} objects/s "
              f"(every {scanner.deep_every} walk(s) deep); {scanner.walks} walk(s) done; next "
              f"{_when(scanner.next_walk_ns) if scanner.next_walk_ns else 'running now'}")
    else:
        print("scanner: off")
    if scanner.HasField("current"):
        print(f"scanner walk: {_progress(scanner.current)} (started {_when(scanner.current.started_ns)})")
    if latest is not None:
        print(f"latest heal ({latest.origin}): {_progress(latest)} (started {_when(latest.started_ns)}, "
              f"ended {_when(latest.finished_ns)})" + (f": {latest.error}" if latest.error else ""))
    return 0


async def _drives(args) -> int:
    store = _client()
    try:
        statuses = await store.node_status()
    finally:
        await store.close()
    by_address = dict(zip(dict.fromkeys(m.address for s in store.sets for m in s.members), statuses))
    rows = []
    for s, m in ((s, m) for s in store.sets for m in s.members):
        status = by_address[m.address]
        if isinstance(status, BaseException):
            rows.append({"set": s.set_index, "member": m.index, "address": m.address, "drive": m.drive,
                         "state": "offline", "path": "", "detail": status.message})
            continue
        state = status.drive_states[m.drive] if m.drive < len(status.drive_states) else None
        rows.append({"set": s.set_index, "member": m.index, "address": m.address, "drive": m.drive,
                     "state": state.state if state else "online", "path": state.path if state else "",
                     "detail": state.detail if state else ""})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"set {r['set']} member {r['member']:>2}  {r['address']:<22} drive {r['drive']}  {r['state']:<9} {r['path']}"
                  + (f"  ({r['detail']})" if r["detail"] else ""))
    return 0 if all(r["state"] == "online" for r in rows) else 1


async def _uploads(args) -> int:
    from sealstore.erasure import uploads
    store = _client()
    try:
        found = [(one, u) for one, u in await uploads.summaries(store, args.bucket)
                 if not args.older_than_s or uploads.stale(u, args.older_than_s)]
        removed = 0
        if args.clean:
            for one, u in found:
                await uploads.remove(one, u.bucket, u.upload_id)
                removed += 1
    finally:
        await store.close()
    rows = [{"bucket": u.bucket, "key": u.key, "upload_id": u.upload_id, "initiated_ns": u.initiated_ns,
             "parts": u.parts, "bytes": u.bytes} for _, u in found]
    if args.json:
        print(json.dumps({"uploads": rows, "removed": removed} if args.clean else rows, indent=2))
        return 0
    for r in rows:
        # An upload without a key: part objects whose record is gone (an abort raced a part upload).
        print(f"{r['bucket']}\t{r['key'] or '(no record)'}\t{r['upload_id']}\t{_when(r['initiated_ns'])}\t"
              f"{r['parts']} parts\t{r['bytes']} bytes")
    if args.clean:
        print(f"removed {removed} upload(s)")
    elif not rows:
        print("no multipart uploads in progress" + (f" older than {args.older_than}" if args.older_than else ""))
    return 0
