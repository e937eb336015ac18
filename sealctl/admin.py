"""`sealstore admin`: healing and drive state of the erasure set (talks to the storage nodes
directly with the admin identity; sees only ciphertext shards, never keys or plaintext)."""
from __future__ import annotations

import asyncio
import json
import sys

from sealstore import config, errors


def register(subparsers) -> None:
    admin = subparsers.add_parser("admin", help="heal the erasure set, show its drives")
    sub = admin.add_subparsers(dest="admin_action", required=True)
    heal = sub.add_parser("heal", help="rebuild missing, stale or corrupt shards and metadata")
    heal.add_argument("--bucket", default="", help="only this bucket")
    heal.add_argument("--dry-run", action="store_true", help="report what would be rebuilt, change nothing")
    heal.add_argument("--quick", action="store_true",
                      help="check shard sizes only, not every block checksum (faster, misses bit rot)")
    heal.add_argument("--json", action="store_true", help="print the counts as JSON")
    heal.add_argument("--metrics-file", default="",
                      help="also write the heal counters in Prometheus text format to this file "
                           "(for node_exporter's textfile collector)")
    heal.add_argument("--rate", type=float, default=0.0,
                      help="at most this many objects per second (0: as fast as possible)")
    heal.add_argument("--every", type=float, default=0.0, metavar="SECONDS",
                      help="background scanner: walk again this long after each walk ends, until "
                           "interrupted (or --cycles walks); counts are printed per walk")
    heal.add_argument("--cycles", type=int, default=0, help="with --every: stop after this many walks")
    drives = sub.add_parser("drives", help="state of every drive of the erasure set")
    drives.add_argument("--json", action="store_true")


def dispatch(args) -> int | None:
    if args.command != "admin":
        return None
    if args.admin_action == "heal":
        return asyncio.run(_heal(args))
    if args.admin_action == "drives":
        return asyncio.run(_drives(args))
    return 2


def _client():
    from sealstore.erasure_set import connect
    data = config.data_dir()
    return connect(config.load_topology(data), config.certs_dir(data), "admin")


async def _heal(args) -> int:
    from sealstore.erasure_heal import heal_all
    store = _client()
    status, walks = 0, 0
    try:
        while True:
            try:
                report = await heal_all(store, args.bucket, dry_run=args.dry_run, deep=not args.quick,
                                        rate=args.rate)
            except errors.SealstoreError as err:
                print(f"sealstore: heal: {err.code}: {err.message}", file=sys.stderr)
                status = 1
            else:
                status = _print_report(args, report)
            walks += 1
            if not args.every or (args.cycles and walks >= args.cycles):
                return status
            await asyncio.sleep(args.every)
    finally:
        await store.close()


def _print_report(args, report) -> int:
    if args.metrics_file:
        from prometheus_client import REGISTRY, write_to_textfile
        write_to_textfile(args.metrics_file, REGISTRY)
    counts = report.as_dict()
    if args.json:
        print(json.dumps({**counts, "dry_run": args.dry_run, "details": report.details}), flush=True)
    else:
        for line in report.details:
            print(line)
        print(("dry run: " if args.dry_run else "") +
              f"objects scanned {report.objects_scanned}, objects healed {report.objects_healed}, "
              f"shards rebuilt {report.shards_rebuilt}, shards failed {report.shards_failed}, "
              f"unrecoverable {report.unrecoverable}, dangling removed {report.dangling_removed}, "
              f"orphans removed {report.orphans_removed}, buckets healed {report.buckets_healed}, "
              f"skipped {report.skipped}", flush=True)
    return 1 if report.unrecoverable or report.shards_failed else 0


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
