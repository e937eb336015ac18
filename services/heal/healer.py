"""Heal runs and the background scanner of the heal service.

One walk at a time: a heal an admin asks for (StartHeal) makes a running scanner walk give way
(it is cancelled between objects' steps; a half-done rebuild aborts its upload, and every
commit is conditional, so nothing is left half-written); a second admin heal while one runs is
refused. The scanner skips its turn while an admin heal runs.

The walk is the heal module's (each erasure set: bucket metadata first, then every key any
member lists, each healed by `heal_object`), done here object by object so that a run's counts
are visible while it runs.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from dataclasses import dataclass, field

from sealstore import errors, multipart
# The one place this service names the erasure package (heal logic, stale uploads, the quorum client).
from sealstore.erasure import heal as heal_logic
from sealstore.erasure import uploads as upload_logic
from sealstore.erasure.client import connect as connect_erasure_sets  # noqa: F401 (used by server.py)
from sealstore.v1 import heal_pb2

log = logging.getLogger(__name__)

ENV_INTERVAL = "SEALSTORE_HEAL_INTERVAL"
"""Seconds between the end of one scanner walk and the start of the next (and before the first);
0 turns the scanner off. Default 300."""
ENV_RATE = "SEALSTORE_HEAL_RATE"
"""Objects per second the scanner examines at most. Default 10."""
ENV_DEEP_EVERY = "SEALSTORE_HEAL_DEEP_EVERY"
"""Every Nth scanner walk reads every block checksum (finds bit rot); the others compare sizes
only. Default 10; 1: every walk is deep."""
DEFAULT_INTERVAL = 300.0
DEFAULT_RATE = 10.0
DEFAULT_DEEP_EVERY = 10
MAX_DETAILS = 1000
"""Detail lines kept per run (counts are always complete)."""
KEPT_RUNS = 32


@dataclass(frozen=True)
class ScannerSettings:
    interval: float = DEFAULT_INTERVAL
    rate: float = DEFAULT_RATE
    deep_every: int = DEFAULT_DEEP_EVERY
    upload_expiry: float = float(multipart.DEFAULT_UPLOAD_EXPIRY_S)
    """Seconds after which a multipart upload neither completed nor aborted is removed by a walk
    (SEALSTORE_UPLOAD_EXPIRY; 0: never)."""

    @classmethod
    def from_env(cls, env=None) -> "ScannerSettings":
        env = os.environ if env is None else env
        try:
            settings = cls(interval=float(env.get(ENV_INTERVAL) or DEFAULT_INTERVAL),
                           rate=float(env.get(ENV_RATE) or DEFAULT_RATE),
                           deep_every=int(env.get(ENV_DEEP_EVERY) or DEFAULT_DEEP_EVERY),
                           upload_expiry=upload_logic.upload_expiry_from_env(env))
        except ValueError as exc:
            raise SystemExit(f"heal: bad scanner setting ({ENV_INTERVAL}, {ENV_RATE}, {ENV_DEEP_EVERY}, "
                             f"{upload_logic.ENV_UPLOAD_EXPIRY}): {exc}")
        if settings.interval < 0 or settings.rate < 0 or settings.deep_every < 1:
            raise SystemExit(f"heal: {ENV_INTERVAL} and {ENV_RATE} must be >= 0, {ENV_DEEP_EVERY} >= 1")
        return settings


COUNT_FIELDS = ("buckets_healed", "objects_scanned", "objects_healed", "shards_rebuilt", "shards_failed",
                "unrecoverable", "dangling_removed", "orphans_removed", "skipped")
"""Counts of the object walk's reports (heal_logic); the run also counts uploads_expired."""


@dataclass
class HealRun:
    origin: str
    bucket: str = ""
    dry_run: bool = False
    quick: bool = False
    rate: float = 0.0
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: str = "running"
    started_ns: int = field(default_factory=time.time_ns)
    finished_ns: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys((*COUNT_FIELDS, "uploads_expired"), 0))
    details: list[str] = field(default_factory=list)
    error: str = ""
    buckets_done: int = 0
    buckets_total: int = 0

    def add(self, report) -> None:
        for name in COUNT_FIELDS:
            self.counts[name] += getattr(report, name)
        self.note(report.details)

    def note(self, lines: list[str]) -> None:
        room = MAX_DETAILS - len(self.details)
        if room > 0:
            self.details.extend(lines[:room])

    def to_proto(self) -> heal_pb2.HealRun:
        return heal_pb2.HealRun(
            id=self.id, origin=self.origin, bucket=self.bucket, dry_run=self.dry_run, quick=self.quick,
            state=self.state, started_ns=self.started_ns, finished_ns=self.finished_ns,
            counts=heal_pb2.HealCounts(**self.counts), details=self.details, error=self.error,
            buckets_done=self.buckets_done, buckets_total=self.buckets_total)


class Healer:
    def __init__(self, store, settings: ScannerSettings):
        self.store = store
        self.settings = settings
        self.runs: dict[str, HealRun] = {}
        self.current: HealRun | None = None
        self._task: asyncio.Task | None = None
        self.walks = 0
        self.next_walk_ns = 0
        self.last_scanner_run: HealRun | None = None

    # ------------------------------------------------------------ runs

    def start(self, *, bucket: str = "", dry_run: bool = False, quick: bool = False, rate: float = 0.0,
              origin: str = "admin") -> HealRun:
        running = self.current if self.current and self.current.state == "running" else None
        if running is not None:
            if running.origin == "admin" or origin != "admin":
                raise errors.PreconditionFailed(f"a heal is already running (id {running.id}, started by "
                                                f"{running.origin}); wait for it to end")
            log.info("scanner walk %s gives way to an admin heal", running.id)
            self._task.cancel()
        run = HealRun(origin=origin, bucket=bucket, dry_run=dry_run, quick=quick, rate=rate)
        self.runs[run.id] = run
        while len(self.runs) > KEPT_RUNS:
            self.runs.pop(next(iter(self.runs)))
        self.current = run
        self._task = asyncio.get_running_loop().create_task(self._walk(run))
        log.info("heal %s started by %s: bucket %s, %s%s, rate %s", run.id, origin, bucket or "(all)",
                 "quick" if quick else "deep", ", dry run" if dry_run else "", rate or "unlimited")
        return run

    def get(self, run_id: str = "") -> HealRun | None:
        if run_id:
            return self.runs.get(run_id)
        return self.current

    async def wait(self, run: HealRun) -> HealRun:
        """Until `run` ends (for tests and the scanner)."""
        while run.state == "running":
            await asyncio.sleep(0.05)
        return run

    async def _walk(self, run: HealRun) -> None:
        pace = heal_logic.Pace(run.rate)
        try:
            for one in self.store.sets:
                names, healed = await heal_logic.heal_buckets(one, run.bucket, run.dry_run)
                run.counts["buckets_healed"] += healed
                run.buckets_total = len(names) * len(self.store.sets)
                for name in names:
                    await self._walk_bucket(one, name, run, pace)
                    run.buckets_done += 1
            await self._expire_uploads(run)
            run.state = "done"
        except asyncio.CancelledError:
            run.state = "cancelled"
            raise
        except errors.SealstoreError as err:
            run.state, run.error = "failed", f"{err.code}: {err.message}"
        except Exception as exc:  # a bug must show in the run, not kill the service's loop silently
            log.exception("heal %s failed", run.id)
            run.state, run.error = "failed", f"InternalError: {type(exc).__name__}: {exc}"
        finally:
            run.finished_ns = time.time_ns()
            c = run.counts
            log.info("heal %s %s: objects scanned %d, healed %d, shards rebuilt %d, failed %d, unrecoverable %d%s",
                     run.id, run.state, c["objects_scanned"], c["objects_healed"], c["shards_rebuilt"],
                     c["shards_failed"], c["unrecoverable"], f" ({run.error})" if run.error else "")

    async def _expire_uploads(self, run: HealRun) -> None:
        """Abandoned multipart uploads: removed once older than the expiry, parts and record,
        so nothing stays on the drives (a dry run only reports them)."""
        if not self.settings.upload_expiry:
            return
        expired = await upload_logic.expire(self.store, self.settings.upload_expiry, bucket=run.bucket,
                                            dry_run=run.dry_run)
        run.counts["uploads_expired"] += len(expired)
        run.note([f"{'stale' if run.dry_run else 'expired'} upload {u.upload_id} of {u.bucket}/{u.key or '?'}: "
                  f"{u.parts} parts, {u.bytes} bytes" for u in expired])

    async def _walk_bucket(self, one, name: str, run: HealRun, pace: "heal_logic.Pace") -> None:
        async for report in heal_logic.heal_bucket_objects(one, name, deep=not run.quick, dry_run=run.dry_run,
                                                           pace=pace):
            run.add(report)

    # ------------------------------------------------------------ scanner

    async def scan_forever(self) -> None:
        """Walks every bucket, then sleeps `interval`, forever (nothing when interval is 0)."""
        if not self.settings.interval:
            log.info("background scanner off (%s=0)", ENV_INTERVAL)
            return
        log.info("background scanner: a walk every %.0f s, at most %.1f objects/s, every %d walk(s) deep",
                 self.settings.interval, self.settings.rate, self.settings.deep_every)
        while True:
            self.next_walk_ns = time.time_ns() + int(self.settings.interval * 1e9)
            await asyncio.sleep(self.settings.interval)
            self.next_walk_ns = 0
            if self.current is not None and self.current.state == "running":
                continue  # an admin heal is walking already
            deep = (self.walks + 1) % self.settings.deep_every == 0 or self.settings.deep_every == 1
            run = self.start(quick=not deep, rate=self.settings.rate, origin="scanner")
            self.last_scanner_run = run
            try:
                await asyncio.shield(self._task)
            except asyncio.CancelledError:
                if run.state != "cancelled":
                    raise  # the service is stopping
            except Exception:
                pass
            self.walks += 1

    def scanner_status(self) -> heal_pb2.ScannerStatusResponse:
        reply = heal_pb2.ScannerStatusResponse(
            enabled=bool(self.settings.interval), interval_seconds=self.settings.interval,
            rate=self.settings.rate, deep_every=self.settings.deep_every, walks=self.walks,
            next_walk_ns=self.next_walk_ns)
        if self.last_scanner_run is not None:
            reply.current.CopyFrom(self.last_scanner_run.to_proto())
        return reply

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
