"""The kms cache in front of a key backend, with KES's three expiries.

- **any** (`SEALSTORE_KMS_CACHE_ANY`, default 300 s): an entry older than this (since the
  backend last confirmed it) is fetched again before it is served.
- **unused** (`SEALSTORE_KMS_CACHE_UNUSED`, default 30 s): an entry nobody used for this long
  is dropped (swept every unused/2).
- **offline** (`SEALSTORE_KMS_CACHE_OFFLINE`, default 300 s; 0 = off): once the backend is
  unreachable, cached entries are still served - whatever their age - until the backend has
  been unreachable for this long; after that every call fails with KMSUnavailable (503) until
  it answers again. While offline the backend is retried at most once per
  `SEALSTORE_KMS_RETRY_INTERVAL` (default 1 s), so calls fail fast and recover by themselves.

What a backend caches is up to it (local_backend.py: key records; openbao_transit.py: decrypt
results, never key bytes). Counters: `sealstore_kms_cache_total{cache, result}` with result
hit / miss / error (the backend failed) / offline (served while the backend was unreachable).
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Generic, Hashable, TypeVar

from prometheus_client import Counter, Gauge

from sealstore import errors

CACHE_RESULTS = Counter("sealstore_kms_cache_total", "kms cache lookups by cache and result",
                        ["cache", "result"])
BACKEND_REACHABLE = Gauge("sealstore_kms_keystore_reachable",
                          "1 while the keystore backend answers, 0 while it is unreachable")
BACKEND_REACHABLE.set(1)

ENV_ANY = "SEALSTORE_KMS_CACHE_ANY"
ENV_UNUSED = "SEALSTORE_KMS_CACHE_UNUSED"
ENV_OFFLINE = "SEALSTORE_KMS_CACHE_OFFLINE"
ENV_RETRY = "SEALSTORE_KMS_RETRY_INTERVAL"

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class CacheSettings:
    any_seconds: float = 300.0
    """Re-fetch entries older than this."""
    unused_seconds: float = 30.0
    """Drop entries not used for this long."""
    offline_seconds: float = 300.0
    """Serve cached entries for this long after the backend became unreachable; 0 = never."""
    retry_seconds: float = 1.0
    """While offline, try the backend again at most this often."""
    max_entries: int = 100_000
    """Bound on entries per cache; the least recently stored go first."""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "CacheSettings":
        env = os.environ if env is None else env
        settings = cls(
            any_seconds=float(env.get(ENV_ANY, cls.any_seconds)),
            unused_seconds=float(env.get(ENV_UNUSED, cls.unused_seconds)),
            offline_seconds=float(env.get(ENV_OFFLINE, cls.offline_seconds)),
            retry_seconds=float(env.get(ENV_RETRY, cls.retry_seconds)),
        )
        if min(settings.any_seconds, settings.unused_seconds) <= 0 or settings.offline_seconds < 0 \
                or settings.retry_seconds < 0:
            raise ValueError(f"{ENV_ANY} and {ENV_UNUSED} must be > 0, {ENV_OFFLINE} and {ENV_RETRY} >= 0")
        return settings


class Availability:
    """Whether the backend answers, and since when it does not. Shared by a backend's caches."""

    def __init__(self, settings: CacheSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._offline_since: float | None = None
        self._last_attempt = 0.0
        self._lock = threading.Lock()

    @property
    def online(self) -> bool:
        return self._offline_since is None

    def offline_for(self) -> float:
        since = self._offline_since
        return 0.0 if since is None else self.clock() - since

    def within_offline_window(self) -> bool:
        return self._offline_since is not None and self.offline_for() <= self.settings.offline_seconds \
            and self.settings.offline_seconds > 0

    def should_try_backend(self) -> bool:
        """Online: always. Offline: once per retry interval, so calls fail fast meanwhile."""
        if self._offline_since is None:
            return True
        with self._lock:
            now = self.clock()
            if now - self._last_attempt >= self.settings.retry_seconds:
                self._last_attempt = now
                return True
            return False

    def mark_down(self) -> None:
        with self._lock:
            if self._offline_since is None:
                self._offline_since = self._last_attempt = self.clock()
                BACKEND_REACHABLE.set(0)

    def mark_up(self) -> None:
        if self._offline_since is not None:
            with self._lock:
                self._offline_since = None
                BACKEND_REACHABLE.set(1)

    def call(self, fn: Callable[[], V], what: str) -> V:
        """Runs a backend call that no cache can answer (a change, a listing), keeping the
        online/offline state: fails fast while offline between retries."""
        if not self.should_try_backend():
            raise self.unavailable(what)
        try:
            result = fn()
        except errors.KMSUnavailable:
            self.mark_down()
            raise
        self.mark_up()
        return result

    def unavailable(self, what: str) -> errors.SealstoreError:
        return errors.KMSUnavailable(
            f"the keystore is unreachable (for {self.offline_for():.0f}s; cached keys are served for "
            f"{self.settings.offline_seconds:.0f}s) - cannot {what}")


@dataclass
class _Entry(Generic[V]):
    value: V
    fetched: float
    used: float


class ExpiringCache(Generic[K, V]):
    """A dict with KES's any/unused expiries; `read_through` adds the offline rule."""

    def __init__(self, name: str, availability: Availability) -> None:
        self.name = name
        self.availability = availability
        self.settings = availability.settings
        self.clock = availability.clock
        self._entries: dict[K, _Entry[V]] = {}
        self._lock = threading.Lock()
        self._generation = 0
        """Bumped by every put and drop: a fetch that raced with a change must not be stored."""
        self._last_sweep = self.clock()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: K, value: V) -> None:
        now = self.clock()
        with self._lock:
            self._generation += 1
            self._entries.pop(key, None)  # re-insert: dict order = least recently stored first
            self._entries[key] = _Entry(value, now, now)
            while len(self._entries) > self.settings.max_entries:
                del self._entries[next(iter(self._entries))]
        self._maybe_sweep(now)

    def drop(self, key: K) -> None:
        with self._lock:
            self._generation += 1
            self._entries.pop(key, None)

    def drop_where(self, predicate: Callable[[K], bool]) -> None:
        with self._lock:
            self._generation += 1
            for key in [k for k in self._entries if predicate(k)]:
                del self._entries[key]

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()

    def _maybe_sweep(self, now: float) -> None:
        # While the backend is unreachable nothing ages out: the offline window rules then.
        if now - self._last_sweep < self.settings.unused_seconds / 2 or not self.availability.online:
            return
        with self._lock:
            self._last_sweep = now
            for key in [k for k, e in self._entries.items()
                        if now - e.used > self.settings.unused_seconds or now - e.fetched > self.settings.any_seconds]:
                del self._entries[key]

    def read_through(self, key: K, fetch: Callable[[], V], *, what: str, serve_fresh: bool = True) -> V:
        """The value for `key`: cached if fresh (and `serve_fresh`), else fetched from the backend.

        If the backend is unreachable (fetch raises KMSUnavailable, or it failed moments ago),
        a cached value is served during the offline window; otherwise KMSUnavailable is raised.
        Other errors of `fetch` (KMSNotFound, KMSDisabled...) drop the entry and propagate.
        """
        now = self.clock()
        self._maybe_sweep(now)
        entry = self._entries.get(key)
        if serve_fresh and entry is not None and self.availability.online \
                and now - entry.fetched <= self.settings.any_seconds:
            entry.used = now
            CACHE_RESULTS.labels(self.name, "hit").inc()
            return entry.value
        if self.availability.should_try_backend():
            generation = self._generation
            try:
                value = fetch()
            except errors.KMSUnavailable:
                CACHE_RESULTS.labels(self.name, "error").inc()
                self.availability.mark_down()
            except errors.SealstoreError:
                CACHE_RESULTS.labels(self.name, "error").inc()
                self.drop(key)
                raise
            else:
                self.availability.mark_up()
                CACHE_RESULTS.labels(self.name, "miss").inc()
                with self._lock:
                    if generation == self._generation:
                        self._generation += 1
                        self._entries.pop(key, None)
                        self._entries[key] = _Entry(value, now, now)
                return value
        if entry is not None and self.availability.within_offline_window():
            entry.used = now
            CACHE_RESULTS.labels(self.name, "offline").inc()
            return entry.value
        raise self.availability.unavailable(what)
