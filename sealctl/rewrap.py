"""Key rewrap: moves every object's encrypted DEK to its kms key's newest version without
rewriting object data (`sealstore key rewrap --bucket B [--key K]`), and the check behind
`sealstore key min-version` (no object may still need a version being retired).

Why this is cheap and safe: an object's data is encrypted under its OEK, sealed under a KEK
derived from the DEK (services/crypto/keys.py); the key version only decides how the DEK itself
is wrapped. The kms's ReWrap turns the DEK ciphertext into one under the newest version inside
the kms (the plaintext DEK never leaves it), bound to the same AAD the worker used at PUT
(`sse_context.kms_context` of the bucket and key being walked, never of the names stored in the
metadata: a copy naming another object is ObjectTampered and counts as failed). Only `encryption.encrypted_dek` (and `kms_key_version`) change in
each drive's meta.json; the shard files, the sealed OEK and the IV stay byte for byte.

Per object: read every member's metadata, take the quorum version, skip it if it is not SSE-KMS,
under another key than asked, or recorded as already on the newest version; else ReWrap and update the
members holding that version with a conditional write (only if its data_id is still current: a
concurrent PUT or DELETE always wins and the object counts as skipped) that must reach write
quorum. A copy left on the old ciphertext (unreachable drive, failed quorum) stays readable: both
ciphertexts wrap the same DEK, and healing copies the majority's metadata.

Resumable: keys are walked in order, in chunks; after each chunk the last key done goes to a
checkpoint file `<data>/rewrap/<bucket>.json`. A run resumes after it; a run that reaches the
end removes it (so the next run starts from the beginning). Nothing secret is in it.

The key version of an object is the one its envelope records (`kms_key_version`, written at PUT
and at rewrap). The DEK ciphertext's format belongs to the kms (services/kms/ciphertext.py and
the OpenBao backend), so it is never parsed here: an object written before the envelope recorded
a version (0) is of unknown version, rewrapped (the kms's ReWrap answers with the version, which
is then recorded) and, for `key min-version`, counted as possibly below.

Part of the command line (sealctl, the top layer): it runs in the admin's process and drives
the erasure client (sealstore.erasure.client) and the kms's gRPC API; no service imports it.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Awaitable, Callable, Protocol

from sealstore import errors
from sealstore.config import write_file_atomic
from sealstore.erasure.client import EncryptionUpdate
from sealstore.erasure.quorum import version_holders
from sealstore.sse_context import kms_context, parse_context_json
from sealstore.v1 import types_pb2

DEFAULT_CONCURRENCY = 32
"""Objects rewrapped at once; also the checkpoint interval."""
LIST_PAGE = 5000
"""Keys per listing call: a drive reads every meta.json of the bucket for each page (keys are
hashed on disk), so few big pages cost much less than many small ones."""

UNKNOWN_VERSION = 0
"""EncryptionEnvelope.kms_key_version of objects written before the envelope recorded it."""


# --- the two services the walker needs -----------------------------------------------------

class KeyVersions(Protocol):
    async def newest_version(self, key_name: str) -> int: ...

    async def rewrap(self, key_name: str, ciphertext: bytes, context: bytes) -> tuple[bytes, int]:
        """(the same DEK wrapped under the newest version, that version)."""


class ObjectMetadata(Protocol):
    """What the walker uses of the quorum client (sealstore.erasure.client `connect`: one set or several)."""

    async def list_buckets(self) -> list: ...

    async def list_objects(self, bucket: str, prefix: str, start_after: str, max_keys: int) -> tuple[list, bool]: ...

    async def get_object_metas(self, bucket: str, key: str) -> list: ...

    def quorum_version(self, metas: list) -> types_pb2.ObjectMeta | None: ...

    async def update_object_encryption(self, update: EncryptionUpdate) -> None: ...


# --- progress and checkpoint ---------------------------------------------------------------

@dataclass
class RewrapReport:
    scanned: int = 0
    rewrapped: int = 0
    skipped: int = 0
    failed: int = 0
    # True when the walk reached the last key (not stopped by a limit).
    complete: bool = False
    resumed_after: str = ""
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"scanned {self.scanned}  rewrapped {self.rewrapped}  skipped {self.skipped}  "
                f"failed {self.failed}")


@dataclass
class Checkpoint:
    """The resumption point of one bucket's rewrap: keys <= last_key are done."""

    path: Path
    bucket: str
    key_filter: str = ""
    last_key: str = ""

    @classmethod
    def for_bucket(cls, data_dir: Path, bucket: str, key_filter: str) -> "Checkpoint":
        return cls(Path(data_dir) / "rewrap" / f"{bucket}.json", bucket, key_filter)

    def load(self) -> bool:
        """Reads a saved checkpoint; False when there is none. A checkpoint of a run over another
        key filter is refused (InvalidRequest): resuming it would skip keys this run must do."""
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return False
        except ValueError:
            raise errors.InvalidRequest(f"unreadable rewrap checkpoint {self.path}; start over with --restart")
        if raw.get("bucket") != self.bucket or raw.get("key", "") != self.key_filter:
            raise errors.InvalidRequest(
                f"the checkpoint {self.path} belongs to a rewrap of key {raw.get('key') or '(all keys)'}, "
                f"not {self.key_filter or '(all keys)'}; use --restart to start over")
        self.last_key = raw.get("last_key", "")
        return True

    def save(self, report: RewrapReport) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        content = {"format": 1, "bucket": self.bucket, "key": self.key_filter, "last_key": self.last_key,
                   "updated_ns": time.time_ns(),
                   "this_run": {k: v for k, v in asdict(report).items() if k not in ("failures", "complete")}}
        write_file_atomic(self.path, json.dumps(content, indent=2).encode(), mode=0o600)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


# --- the walker ----------------------------------------------------------------------------

class _NewestVersions:
    """Each key's newest version, asked once per run (objects rewrapped after a concurrent
    rotation end up on whatever ReWrap says; a later run moves them on)."""

    def __init__(self, kms: KeyVersions):
        self._kms = kms
        self._known: dict[str, asyncio.Future] = {}

    async def get(self, name: str) -> int:
        if name not in self._known:
            self._known[name] = asyncio.ensure_future(self._kms.newest_version(name))
        return await self._known[name]


async def _rewrap_one(store: ObjectMetadata, kms: KeyVersions, newest: _NewestVersions, bucket: str, key: str,
                      key_filter: str) -> str:
    """'rewrapped' or 'skipped'; raises the reason it failed."""
    metas = await store.get_object_metas(bucket, key)
    meta = store.quorum_version(metas)
    if meta is None:
        if not any(m is not None for m in metas):
            return "skipped"  # deleted since it was listed
        raise errors.SlowDown(f"no read quorum for the metadata of {bucket}/{key}")
    if meta.bucket != bucket or meta.key != key:
        raise errors.ObjectTampered(f"{bucket}/{key}: the stored metadata names another object", resource=key)
    envelope = meta.encryption
    if not meta.HasField("encryption") or not envelope.kms_key_name:
        return "skipped"
    if key_filter and envelope.kms_key_name != key_filter:
        return "skipped"
    recorded = envelope.kms_key_version
    if recorded != UNKNOWN_VERSION and recorded >= await newest.get(envelope.kms_key_name):
        return "skipped"
    aad = kms_context(bucket, key, parse_context_json(envelope.context_json))
    ciphertext, version = await kms.rewrap(envelope.kms_key_name, envelope.encrypted_dek, aad)
    update = EncryptionUpdate(bucket, key, meta.data_id, ciphertext, version,
                              tuple(version_holders(metas, meta.data_id)))
    try:
        await store.update_object_encryption(update)
    except errors.PreconditionFailed:
        return "skipped"  # a new PUT or a DELETE won; a new PUT is on the newest version anyway
    return "rewrapped"


async def rewrap_bucket(store: ObjectMetadata, kms: KeyVersions, bucket: str, checkpoint: Checkpoint, *,
                        limit: int = 0, concurrency: int = DEFAULT_CONCURRENCY,
                        on_progress: Callable[[RewrapReport], None] | None = None) -> RewrapReport:
    """Rewraps the bucket's objects after the checkpoint (see the module doc); stops after
    `limit` objects when given. The checkpoint is saved after every chunk of `concurrency`
    objects and removed once the last key is done."""
    report = RewrapReport(resumed_after=checkpoint.last_key)
    newest = _NewestVersions(kms)
    cursor = checkpoint.last_key
    while True:
        entries, truncated = await store.list_objects(bucket, "", cursor, LIST_PAGE)
        keys = [e.key for e in entries]
        for start in range(0, len(keys), concurrency):
            chunk = keys[start:start + concurrency]
            if limit:
                chunk = chunk[:limit - report.scanned]
            outcomes = await asyncio.gather(*(_rewrap_one(store, kms, newest, bucket, k, checkpoint.key_filter)
                                              for k in chunk), return_exceptions=True)
            for key, outcome in zip(chunk, outcomes):
                report.scanned += 1
                if isinstance(outcome, BaseException):
                    if not isinstance(outcome, errors.SealstoreError):
                        raise outcome
                    report.failed += 1
                    report.failures.append(f"{key}: {outcome.code}: {outcome.message}")
                elif outcome == "rewrapped":
                    report.rewrapped += 1
                else:
                    report.skipped += 1
            checkpoint.last_key = chunk[-1]
            checkpoint.save(report)
            if on_progress:
                on_progress(report)
            if limit and report.scanned >= limit:
                more = start + len(chunk) < len(keys) or truncated
                if more:
                    return report
        if not truncated or not keys:
            break
        cursor = keys[-1]
    report.complete = True
    checkpoint.remove()
    return report


@dataclass
class VersionCensus:
    """Objects under one key whose DEK is below a version (for `key min-version`). `below`
    includes the objects whose version was never recorded (they may be below; a rewrap records
    it)."""

    objects_checked: int = 0
    below: int = 0
    unreadable: int = 0
    examples: list[str] = field(default_factory=list)


async def objects_below_version(store: ObjectMetadata, key_name: str, version: int, *,
                                concurrency: int = DEFAULT_CONCURRENCY) -> VersionCensus:
    """Counts, over every bucket, the objects sealed under `key_name` at a version below
    `version`, and those whose metadata could not be read (they might be)."""
    census = VersionCensus()

    async def check(bucket: str, key: str) -> None:
        try:
            metas = await store.get_object_metas(bucket, key)
        except errors.SealstoreError:
            metas = []
        meta = store.quorum_version(metas)
        if meta is None:
            if any(m is not None for m in metas) or not metas:
                census.unreadable += 1
                if len(census.examples) < 5:
                    census.examples.append(f"{bucket}/{key} (metadata unreadable)")
            return
        census.objects_checked += 1
        envelope = meta.encryption
        if (meta.HasField("encryption") and envelope.kms_key_name == key_name
                and envelope.kms_key_version < version):
            census.below += 1
            if len(census.examples) < 5:
                recorded = envelope.kms_key_version
                census.examples.append(f"{bucket}/{key} (" + (f"v{recorded}" if recorded != UNKNOWN_VERSION
                                                                else "version not recorded") + ")")

    for info in await store.list_buckets():
        cursor = ""
        while True:
            entries, truncated = await store.list_objects(info.name, "", cursor, LIST_PAGE)
            keys = [e.key for e in entries]
            for start in range(0, len(keys), concurrency):
                await asyncio.gather(*(check(info.name, k) for k in keys[start:start + concurrency]))
            if not truncated or not keys:
                break
            cursor = keys[-1]
    return census


# --- the kms over gRPC (the only gRPC-facing part) -----------------------------------------

class KmsKeyVersions:
    """KeyVersions through the kms's gRPC API, as one identity (the CLI uses admin)."""

    def __init__(self, channel):
        from sealstore.v1 import kms_pb2_grpc
        self._channel = channel
        self._stub = kms_pb2_grpc.KeyServiceStub(channel)

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method: Callable[..., Awaitable], request):
        import grpc
        try:
            return await method(request, timeout=30)
        except grpc.RpcError as exc:
            raise errors.from_rpc_error(exc) from None

    async def newest_version(self, key_name: str) -> int:
        from sealstore.v1 import kms_pb2
        info = await self._call(self._stub.DescribeKey, kms_pb2.KeyRequest(name=key_name))
        return info.version or 1

    async def rewrap(self, key_name: str, ciphertext: bytes, context: bytes) -> tuple[bytes, int]:
        from sealstore.v1 import kms_pb2
        reply = await self._call(self._stub.ReWrap, kms_pb2.ReWrapRequest(name=key_name, ciphertext=ciphertext,
                                                                         context=context))
        return reply.ciphertext, reply.version
