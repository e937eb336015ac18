"""Healing one erasure set: finds members whose copy of an object is missing, stale or corrupt
and rebuilds it from the others. Works on stored (ciphertext) shards only: no kms, no keys,
so the heal scanner, the `sealstore admin heal` command and the crypto worker (heal on read)
share it. The decisions (`plan_heal`, `no_quorum_decision`) are pure functions of what the
members reported.

For one object (`heal_object`):
1. every member reports its copy (CheckShard: metadata, shard present, and with `deep` every
   block checksum); it also removes shard files no metadata names (crash leftovers);
2. the version a read quorum of members holds is the truth (its metadata content being what
   most of its copies say); no such version means the
   object is either unrecoverable (some members are offline: wait) or dangling (the leftover
   of a PUT that never reached quorum, every member answered, older than DANGLING_GRACE_S:
   its copies are removed);
3. members without that version (no copy, an older one, a missing or corrupt shard, unreadable
   metadata, metadata naming another object, or named by the caller as having failed a read)
   are targets: the stripes are read from k good
   members, decoded, re-encoded, and fragment i is streamed to target i as a new temporary
   shard, then committed *conditionally*: only if the target still holds what it held when it
   was checked, so a concurrent PUT or DELETE always wins over a heal.

Multipart objects (one shard file per part, sealstore/erasure/versions.py) heal part by part:
a member holding the quorum version rebuilds only the parts its check found missing or corrupt
(CheckShard's bad_shards), any other target every part; each part is read from the members
whose copy of that part is sound and streamed to the targets that need it, and each target
commits all its rebuilt parts at once (CommitObject part_uploads, conditional as above). Part
objects and records of `.multipart` are ordinary objects: the walk covers that bucket too.

Prometheus counters (in the process that heals): sealstore_heal_objects_total{result} and
sealstore_heal_shards_total{result}.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

from prometheus_client import Counter

from sealstore import errors
from sealstore.erasure.client import ErasureSetClient, ErasureSets, HealCommit, StoredVersion
from sealstore.erasure.coder import EC_TYPE, StripeCoder
from sealstore.erasure.quorum import CORRUPT_COPY, ForeignCopy, comparable_meta
from sealstore.erasure.streams import StripeReader
from sealstore.erasure.versions import is_composite
from sealstore.v1 import storage_pb2, types_pb2

log = logging.getLogger(__name__)

DANGLING_GRACE_S = 30.0
"""A copy newer than the quorum version, or a version without quorum, younger than this may be
a PUT whose commit is still on its way to the other members: it is left alone."""
QUEUE_DEPTH = 4

HEAL_OBJECTS = Counter("sealstore_heal_objects_total", "Objects examined by healing, by result",
                       ["result"])
"""result: healthy, healed, partial (some copies could not be rebuilt), unrecoverable, dangling_removed."""
HEAL_SHARDS = Counter("sealstore_heal_shards_total", "Member copies (shard + metadata) healing "
                      "rebuilt or failed to rebuild", ["result"])
"""result: rebuilt, failed."""

State = storage_pb2.CheckShardResponse


@dataclass
class HealReport:
    buckets_healed: int = 0
    objects_scanned: int = 0
    objects_healed: int = 0
    shards_rebuilt: int = 0
    shards_failed: int = 0
    unrecoverable: int = 0
    dangling_removed: int = 0
    orphans_removed: int = 0
    skipped: int = 0
    details: list[str] = field(default_factory=list)

    def add(self, other: "HealReport") -> None:
        for name in ("buckets_healed", "objects_scanned", "objects_healed", "shards_rebuilt", "shards_failed",
                     "unrecoverable", "dangling_removed", "orphans_removed", "skipped"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.details.extend(other.details)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "details"}


def _now_ns() -> int:
    return time.time_ns()


@dataclass(frozen=True)
class HealPlan:
    """Which members to rebuild. `targets`: member -> the data id it holds now ("" = none,
    CORRUPT_COPY = unreadable), the precondition of its conditional commit; `why`: the reason
    when the check alone does not say it; `skipped`: newer copies left alone (a PUT in flight)."""

    targets: dict[int, str]
    why: dict[int, str]
    skipped: int


def plan_heal(checks: list, version: types_pb2.ObjectMeta, suspects: frozenset[int], now_ns: int,
              grace_s: float) -> HealPlan:
    """The members whose copy of `version` (the quorum version) must be rebuilt, from each
    member's CheckShardResponse or error (`checks`)."""
    targets: dict[int, str] = {}
    why: dict[int, str] = {}
    skipped = 0
    answered = {i: c for i, c in enumerate(checks) if not isinstance(c, BaseException)}
    for i, check in enumerate(checks):
        # A bad copy is never a version of this object, whatever its age: replaced, and only if
        # it is still the copy seen here (a PUT since then wins).
        if isinstance(check, ForeignCopy):
            targets[i], why[i] = check.held_data_id, "metadata names another object"
        elif i in answered and check.state == State.META_CORRUPT:
            targets[i], why[i] = CORRUPT_COPY, check.detail or "unreadable metadata"
    for i, check in answered.items():
        if i in targets:
            continue
        held = check.meta.data_id if check.HasField("meta") else ""
        if held == version.data_id:
            if (check.state in (State.SHARD_MISSING, State.SHARD_CORRUPT) or i in suspects
                    or comparable_meta(check.meta) != comparable_meta(version)):
                targets[i] = held
        elif not held or check.meta.mtime_ns < version.mtime_ns:
            targets[i] = held
        elif now_ns - check.meta.mtime_ns > grace_s * 1e9:
            targets[i] = held  # a newer copy that never reached quorum, long ago: a leftover
        else:
            skipped += 1
    return HealPlan(targets, why, skipped)


async def heal_object(store: ErasureSetClient, bucket: str, key: str, *, deep: bool = True,
                      suspects: frozenset[int] = frozenset(), dry_run: bool = False,
                      grace_s: float = DANGLING_GRACE_S) -> HealReport:
    """Heals one object (see the module doc); `suspects` are members a read found bad."""
    report = HealReport(objects_scanned=1)
    checks = await store.check_shards(bucket, key, deep)
    answered = {i: c for i, c in enumerate(checks) if not isinstance(c, BaseException)}
    report.orphans_removed = sum(c.orphans_removed for c in answered.values())
    metas = [c.meta if i in answered and answered[i].HasField("meta") else None for i, c in enumerate(checks)]
    version = store.quorum_version(metas)
    if version is None:
        return await _no_quorum(store, StoredVersion(bucket, key, ""), metas, len(answered), report,
                                dry_run=dry_run, grace_s=grace_s)

    plan = plan_heal(checks, version, suspects, _now_ns(), grace_s)
    targets = plan.targets
    report.skipped += plan.skipped
    if not targets:
        HEAL_OBJECTS.labels("healthy").inc()
        return report
    what = ", ".join(f"member {i} ({plan.why.get(i) or _why(answered[i], version, i in suspects)})"
                     for i in sorted(targets))
    report.details.append(f"{bucket}/{key}: {'would rebuild' if dry_run else 'rebuilding'} {what}")
    if dry_run:
        report.shards_rebuilt = len(targets)
        return report
    layout = version.erasure
    coder = StripeCoder(layout.data_shards, layout.parity_shards, layout.ec_type or EC_TYPE)
    if is_composite(version):
        return await _heal_composite(store, coder, version, answered, targets, suspects, report)
    sources = [i for i, c in answered.items()
               if i not in targets and c.state == State.OK and c.meta.data_id == version.data_id]
    if len(sources) < coder.data_shards:
        report.unrecoverable = 1
        report.details.append(f"{bucket}/{key}: only {len(sources)} sound shards, {coder.data_shards} needed")
        HEAL_OBJECTS.labels("unrecoverable").inc()
        return report
    # Unreadable and foreign copies sit in the object's folder, so their bucket exists; only a
    # member without any copy may lack it.
    await _ensure_buckets(store, bucket, [i for i in targets if i in answered and answered[i].state == State.NO_META])
    rebuilt = await _rebuild(store, coder, version, sources, targets)
    return _count_rebuilt(report, rebuilt)


def _count_rebuilt(report: HealReport, rebuilt: dict[int, bool]) -> HealReport:
    report.shards_rebuilt = sum(1 for ok in rebuilt.values() if ok)
    report.shards_failed = len(rebuilt) - report.shards_rebuilt
    HEAL_SHARDS.labels("rebuilt").inc(report.shards_rebuilt)
    HEAL_SHARDS.labels("failed").inc(report.shards_failed)
    if report.shards_rebuilt:
        report.objects_healed = 1
    HEAL_OBJECTS.labels("partial" if report.shards_failed else "healed").inc()
    return report


def _why(check, version, suspect: bool) -> str:
    if check.state == State.NO_META:
        return "no copy"
    if check.meta.data_id != version.data_id:
        return "stale version"
    if comparable_meta(check.meta) != comparable_meta(version):
        return "metadata differs from the quorum's"
    if check.state != State.OK:
        return check.detail or State.State.Name(check.state).lower()
    return "failed a read" if suspect else "ok"


def no_quorum_decision(metas: list[types_pb2.ObjectMeta | None], answered: int, read_quorum: int, now_ns: int,
                       grace_s: float) -> str:
    """What an object without a quorum version is: "gone" (no copy anywhere: deleted meanwhile),
    "wait" (the members that did not answer might hold it, or a PUT is still committing:
    nothing to decide yet) or "dangling" (the leftover of a PUT that never reached quorum)."""
    copies = [m for m in metas if m is not None]
    if not copies:
        return "gone"
    offline = len(metas) - answered
    best = max(sum(1 for m in copies if m.data_id == c.data_id) for c in copies)
    young = any(now_ns - m.mtime_ns < grace_s * 1e9 for m in copies)
    return "wait" if best + offline >= read_quorum or young else "dangling"


async def _no_quorum(store: ErasureSetClient, where: StoredVersion, metas: list, answered: int, report: HealReport,
                     *, dry_run: bool, grace_s: float) -> HealReport:
    bucket, key = where.bucket, where.key
    decision = no_quorum_decision(metas, answered, store.read_quorum, _now_ns(), grace_s)
    if decision == "gone":
        HEAL_OBJECTS.labels("healthy").inc()
        return report
    copies = [m for m in metas if m is not None]
    if decision == "wait":
        report.unrecoverable = 1
        report.details.append(f"{bucket}/{key}: no version on {store.read_quorum} drives "
                              f"({len(copies)} copies, {len(metas) - answered} drives offline)")
        HEAL_OBJECTS.labels("unrecoverable").inc()
        return report
    report.details.append(f"{bucket}/{key}: dangling ({len(copies)} copies of a version that never reached "
                          f"quorum){'' if not dry_run else ', would remove'}")
    if not dry_run:
        for i, meta in enumerate(metas):
            if meta is not None:
                try:
                    await store.delete_version(i, StoredVersion(bucket, key, meta.data_id))
                except errors.SealstoreError as err:
                    report.details.append(f"{bucket}/{key}: member {i}: {err.message}")
    report.dangling_removed = 1
    HEAL_OBJECTS.labels("dangling_removed").inc()
    return report


async def _ensure_buckets(store: ErasureSetClient, bucket: str, members: list[int]) -> None:
    if not members:
        return
    info = await store.get_bucket(bucket)
    for address in dict.fromkeys(store.members[i].address for i in members):
        await store.make_bucket_on(address, info)


async def _heal_composite(store: ErasureSetClient, coder: StripeCoder, version: types_pb2.ObjectMeta,
                          answered: dict, targets: dict[int, str], suspects: frozenset[int],
                          report: HealReport) -> HealReport:
    """Heals a multipart object part by part (see the module doc)."""
    bucket, key = version.bucket, version.key
    every = {p.data_id for p in version.parts}

    def holds_version(i: int) -> bool:
        c = answered.get(i)
        return (c is not None and c.HasField("meta") and c.meta.data_id == version.data_id and i not in suspects
                and c.state in (State.OK, State.SHARD_MISSING, State.SHARD_CORRUPT))

    needs: dict[int, set[str]] = {}
    for i in targets:
        c = answered.get(i)
        # A copy of the version whose check named its bad parts keeps its sound ones; any other
        # target (no copy, stale, unreadable or foreign metadata, failed a read) gets every part.
        named = holds_version(i) and (c.state == State.OK or c.bad_shards)
        needs[i] = set(c.bad_shards) & every if named else set(every)
    sources_by_part = {p.data_id: [i for i in answered if holds_version(i) and p.data_id not in answered[i].bad_shards]
                       for p in version.parts}
    short = [p for p in version.parts if any(p.data_id in n for n in needs.values())
             and len(sources_by_part[p.data_id]) < coder.data_shards]
    if short:
        report.unrecoverable = 1
        report.details.append(f"{bucket}/{key}: part {short[0].number} has only "
                              f"{len(sources_by_part[short[0].data_id])} sound shards, {coder.data_shards} needed")
        HEAL_OBJECTS.labels("unrecoverable").inc()
        return report
    await _ensure_buckets(store, bucket, [i for i in targets if i in answered and answered[i].state == State.NO_META])
    uploads: dict[str, str] = {}
    failed: dict[int, BaseException] = {}
    for part in version.parts:
        members = [i for i in targets if part.data_id in needs[i] and i not in failed]
        if not members:
            continue
        uploads[part.data_id] = f"heal-{uuid.uuid4().hex}"
        failed.update(await _stream_shards(store, coder, StoredVersion(bucket, key, part.data_id), part.stripe_count,
                                           sources_by_part[part.data_id], members, uploads[part.data_id]))
    rebuilt: dict[int, bool] = {}
    for i, held in targets.items():
        if i in failed:
            log.warning("heal of %s/%s: writing member %d failed: %r", bucket, key, i, failed[i])
            rebuilt[i] = False
            continue
        try:
            await store.heal_commit(HealCommit(i, "", version, held,
                                               part_uploads=tuple((d, uploads[d]) for d in sorted(needs[i]))))
            rebuilt[i] = True
        except errors.SealstoreError as err:
            log.warning("heal of %s/%s: commit on member %d refused: %s", bucket, key, i, err.message)
            rebuilt[i] = False
    if not all(rebuilt.values()):
        for upload_id in uploads.values():
            await store.abort_upload(upload_id)
    return _count_rebuilt(report, rebuilt)


async def _rebuild(store: ErasureSetClient, coder: StripeCoder, version: types_pb2.ObjectMeta, sources: list[int],
                   targets: dict[int, str]) -> dict[int, bool]:
    """Streams re-encoded fragments to every target and commits each conditionally."""
    upload_id = f"heal-{uuid.uuid4().hex}"
    if version.inline:
        return await _rebuild_inline(store, coder, version, sources, targets, upload_id)
    failed = await _stream_shards(store, coder, StoredVersion(version.bucket, version.key, version.data_id),
                                  version.erasure.stripe_count, sources, list(targets), upload_id)
    result: dict[int, bool] = {}
    for i, held in targets.items():
        if i in failed:
            log.warning("heal of %s/%s: writing member %d failed: %r", version.bucket, version.key, i, failed[i])
            result[i] = False
            continue
        try:
            await store.heal_commit(HealCommit(i, upload_id, version, held))
            result[i] = True
        except errors.SealstoreError as err:
            log.warning("heal of %s/%s: commit on member %d refused: %s", version.bucket, version.key, i, err.message)
            result[i] = False
    if not all(result.values()):
        await store.abort_upload(upload_id)
    return result


async def _stream_shards(store: ErasureSetClient, coder: StripeCoder, shards: StoredVersion, stripe_count: int,
                         sources: list[int], targets: list[int], upload_id: str) -> dict[int, BaseException]:
    """Reads the stripes of `shards` from `sources`, re-encodes them and streams fragment i to
    each target i as the temporary shard `upload_id`; returns the targets whose stream failed."""
    queues = {i: asyncio.Queue(QUEUE_DEPTH) for i in targets}
    failed: dict[int, BaseException] = {}

    async def blocks(i: int):
        while True:
            block = await queues[i].get()
            if block is None:
                return
            yield block

    async def write(i: int) -> None:
        try:
            await store.write_shard(i, upload_id, shards.bucket, blocks(i), data_id=shards.data_id)
        except BaseException as exc:
            failed[i] = exc
            while not queues[i].empty():  # unblock the producer
                queues[i].get_nowait()
            raise

    writers = {i: asyncio.ensure_future(write(i)) for i in targets}
    reader = StripeReader(store, coder, shards, sources)
    try:
        if stripe_count:
            async for stripe in reader.stripes(0, stripe_count):
                fragments = coder.encode(stripe)
                for i in targets:
                    if i not in failed:
                        await queues[i].put(fragments[i])
        for i in targets:
            if i not in failed:
                await queues[i].put(None)
        await asyncio.gather(*writers.values(), return_exceptions=True)
    except BaseException:
        for task in writers.values():
            task.cancel()
        await asyncio.gather(*writers.values(), return_exceptions=True)
        await store.abort_upload(upload_id)
        raise
    return failed


async def _rebuild_inline(store: ErasureSetClient, coder: StripeCoder, version: types_pb2.ObjectMeta,
                          sources: list[int], targets: dict[int, str], upload_id: str) -> dict[int, bool]:
    """A small object's copy is its metadata with the shard inside: one conditional commit each."""
    fragments: list[bytes] = []
    if version.erasure.stripe_count:
        reader = StripeReader(store, coder, StoredVersion(version.bucket, version.key, version.data_id), sources)
        async for stripe in reader.stripes(0, 1):
            fragments = coder.encode(stripe)
    result: dict[int, bool] = {}
    for i, held in targets.items():
        try:
            await store.heal_commit(HealCommit(i, upload_id, version, held,
                                               inline_block=fragments[i] if fragments else b""))
            result[i] = True
        except errors.SealstoreError as err:
            log.warning("heal of %s/%s: commit on member %d refused: %s", version.bucket, version.key, i, err.message)
            result[i] = False
    return result


async def heal_buckets(store: ErasureSetClient, only: str = "", dry_run: bool = False) -> tuple[list[str], int]:
    """Recreates bucket metadata on drives that lack it; returns (buckets, drives' nodes healed).
    The system bucket `.multipart` is one of them (uploads in progress heal like objects)."""
    infos = await store.list_buckets(include_system=True)
    if only:
        infos = [i for i in infos if i.name == only]
        if not infos:
            raise errors.NoSuchBucket(resource=only)
    healed = 0
    if not dry_run:
        for info in infos:
            for address in dict.fromkeys(m.address for m in store.members):
                healed += await store.make_bucket_on(address, info)
    return [i.name for i in infos], healed


class Pace:
    """At most `rate` calls of wait() per second (no limit when rate <= 0)."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next = time.monotonic()

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        if self.next > now:
            await asyncio.sleep(self.next - now)
        self.next = max(now, self.next) + self.interval


async def heal_all(store: "ErasureSetClient | ErasureSets", bucket: str = "", *, dry_run: bool = False,
                   deep: bool = True, grace_s: float = DANGLING_GRACE_S, rate: float = 0.0) -> HealReport:
    """Walks every object of every bucket (or of `bucket`), as any member lists it, and heals it,
    one erasure set after the other (each set's quorum decides for the objects it holds).

    `rate` > 0 bounds the walk to that many objects per second (a background scan that must
    not compete with client traffic)."""
    report = HealReport()
    pace = Pace(rate)
    for one in store.sets:
        report.add(await _heal_set(one, bucket, dry_run=dry_run, deep=deep, grace_s=grace_s, pace=pace))
    return report


async def _heal_set(store: ErasureSetClient, bucket: str, *, dry_run: bool, deep: bool, grace_s: float,
                    pace: Pace) -> HealReport:
    report = HealReport()
    names, report.buckets_healed = await heal_buckets(store, bucket, dry_run)
    for name in names:
        async for one in heal_bucket_objects(store, name, deep=deep, dry_run=dry_run, grace_s=grace_s, pace=pace):
            report.add(one)
    return report


async def heal_bucket_objects(store: ErasureSetClient, bucket: str, *, deep: bool, dry_run: bool,
                              pace: Pace, grace_s: float = DANGLING_GRACE_S):
    """Heals every object of `bucket` that any member of the set lists, in key order, at the
    pace's rate; yields one HealReport per object (an object that cannot be healed is counted
    unrecoverable, and the walk goes on)."""
    keys: set[str] = set()
    listings = await asyncio.gather(*(store.member_keys(i, bucket) for i in range(len(store.members))),
                                    return_exceptions=True)
    for listing in listings:
        if not isinstance(listing, BaseException):
            keys.update(e.key for e in listing)
    for key in sorted(keys):
        await pace.wait()
        try:
            yield await heal_object(store, bucket, key, deep=deep, dry_run=dry_run, grace_s=grace_s)
        except errors.SealstoreError as err:
            HEAL_OBJECTS.labels("unrecoverable").inc()
            yield HealReport(objects_scanned=1, unrecoverable=1, details=[f"{bucket}/{key}: {err.message}"])
