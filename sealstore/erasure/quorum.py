"""The quorum rules of an erasure set, as pure functions over the members' answers.

An answer ("outcome") is what one member returned, or the typed error it gave
(sealstore.errors; ServiceUnavailable when it did not answer). Rules, as MinIO's:

- read_quorum = data shards: a read is answered when that many members agree;
- write_quorum = data shards (+1 when data == parity, so two halves can never both win);
- an outcome that reaches neither success nor a definite error at quorum is `SlowDown` (503);
- a failure to answer is never "not found".

No I/O and no gRPC calls here: the fan-out client (client.py), the shard streams and heal ask
these functions what a list of answers means.
"""
from __future__ import annotations

import collections
import logging
from typing import Iterable

from sealstore import errors
from sealstore.v1 import storage_pb2, types_pb2

log = logging.getLogger(__name__)

AVAILABILITY_ERRORS = (errors.ServiceUnavailable, errors.SlowDown)
"""Errors that say "this member could not answer" rather than anything about the data."""

CORRUPT_COPY = ":corrupt"
"""CommitObject expect_data_id of a heal replacing an unreadable metadata copy (CheckShard
META_CORRUPT). Outside the data id alphabet, so it never matches a readable copy: a PUT that
replaced the copy after the heal checked it still wins."""


class ForeignCopy(errors.ObjectTampered):
    """A member's copy names another object (metadata moved or copied on a drive). Carries the
    data id it names, so healing can replace exactly that copy (and nothing a PUT wrote since)."""

    def __init__(self, message: str, *, resource: str = "", held_data_id: str = ""):
        super().__init__(message, resource=resource)
        self.held_data_id = held_data_id


def failed(outcome) -> bool:
    return isinstance(outcome, BaseException)


def succeeded(outcomes: Iterable) -> list:
    return [o for o in outcomes if not failed(o)]


def count(outcomes: Iterable, cls: type) -> int:
    return sum(1 for o in outcomes if isinstance(o, cls))


def first_of(outcomes: Iterable, cls: type):
    return next(o for o in outcomes if isinstance(o, cls))


def reached(outcomes: Iterable, quorum: int) -> bool:
    """Whether at least `quorum` members succeeded."""
    return len(succeeded(outcomes)) >= quorum


def _is_rejected_argument(outcome) -> bool:
    return failed(outcome) and getattr(outcome, "grpc_status", None) == errors.SC.INVALID_ARGUMENT


def verdict(outcomes: list, quorum: int, what: str) -> errors.SealstoreError:
    """The error to raise when fewer than `quorum` members succeeded.

    A definite error (e.g. NoSuchBucket) wins if `quorum` members gave it; a rejected argument
    (InvalidBucketName, ...) wins when no member succeeded, since every member would reject it;
    else SlowDown.
    """
    if not succeeded(outcomes):
        invalid = [o for o in outcomes if _is_rejected_argument(o)]
        if invalid:
            return invalid[0]
    by_type: collections.Counter = collections.Counter(
        type(o) for o in outcomes if failed(o) and not isinstance(o, AVAILABILITY_ERRORS))
    for cls, n in by_type.most_common():
        if n >= quorum and cls is not errors.SealstoreError:
            return next(o for o in outcomes if type(o) is cls)
    ok = len(succeeded(outcomes))
    return errors.SlowDown(f"{what}: {ok} of {len(outcomes)} drives succeeded, {quorum} needed ({reasons(outcomes)})")


def reasons(outcomes: Iterable) -> str:
    """The distinct failures among `outcomes`, for an error message."""
    return "; ".join(sorted({f"{type(o).__name__}: {o.message}" for o in outcomes if failed(o)}))


def majority(messages: list):
    """The most common of equal-typed protobuf messages (ties: the first seen)."""
    counts = collections.Counter(m.SerializeToString(deterministic=True) for m in messages)
    best = counts.most_common(1)[0][0]
    return next(m for m in messages if m.SerializeToString(deterministic=True) == best)


# ---- buckets ------------------------------------------------------------------------------

def make_bucket_verdict(outcomes: list, write_quorum: int) -> types_pb2.BucketInfo | errors.SealstoreError | None:
    """What the members' answers to MakeBucket mean: the created bucket's info, the error to
    raise (BucketAlreadyOwnedByYou when a quorum already had it), or None: too few created it,
    undo where it was made and raise `verdict`."""
    made = succeeded(outcomes)
    existing = count(outcomes, errors.BucketAlreadyOwnedByYou)
    if existing >= write_quorum:
        return first_of(outcomes, errors.BucketAlreadyOwnedByYou)
    if made and len(made) + existing >= write_quorum:
        return made[0]
    return None


def bucket_deleted(outcomes: list, write_quorum: int) -> bool:
    """A DeleteBucket fan-out succeeded: no member refused (not empty) and the members that
    deleted it, with those that no longer had it, reach write quorum."""
    deleted = len(succeeded(outcomes))
    return (not count(outcomes, errors.BucketNotEmpty) and bool(deleted)
            and deleted + count(outcomes, errors.NoSuchBucket) >= write_quorum)


def merged_buckets(answers: list, read_quorum: int) -> list[types_pb2.BucketInfo]:
    """The buckets at least read_quorum members' ListBuckets answers name, by name, each as
    most of its copies say."""
    copies: dict[str, list] = collections.defaultdict(list)
    for answer in answers:
        for info in answer.buckets:
            copies[info.name].append(info)
    return [majority(copies[name]) for name in sorted(copies) if len(copies[name]) >= read_quorum]


# ---- object metadata ----------------------------------------------------------------------

def names_other_object(meta: types_pb2.ObjectMeta, bucket: str, key: str) -> bool:
    return meta.bucket != bucket or meta.key != key


def without_foreign_copies(outcomes: list, metas: list, bucket: str, key: str) -> list:
    """`outcomes` with ForeignCopy (an ObjectTampered) in place of each copy whose metadata
    (`metas[i]`) names another object than the one requested: metadata moved or copied on a
    drive. Such a copy is a bad copy for the quorum: read around while enough good copies
    remain, never chosen; healing replaces it."""
    foreign = [i for i, meta in enumerate(metas) if meta is not None and names_other_object(meta, bucket, key)]
    if not foreign:
        return outcomes
    # The stored names only through repr: they are attacker-controlled bytes.
    log.warning("%s/%s: members %s hold metadata naming another object (%r/%r); not used", bucket, key,
                foreign, metas[foreign[0]].bucket, metas[foreign[0]].key)
    return [ForeignCopy(f"{bucket}/{key}: a drive's metadata names another object", resource=key,
                        held_data_id=metas[i].data_id) if i in foreign else o
            for i, o in enumerate(outcomes)]


def bucket_missing(outcomes: list, read_quorum: int) -> errors.SealstoreError | None:
    """NoSuchBucket only when too few members could have the bucket for any read to succeed:
    members that lost it with their drive (wiped, replaced) must not hide it from the others."""
    if count(outcomes, errors.NoSuchBucket) > len(outcomes) - read_quorum:
        return first_of(outcomes, errors.NoSuchBucket)
    return None


def comparable_meta(meta: types_pb2.ObjectMeta) -> bytes:
    """A version's metadata as every member should hold it (shard_index differs by member)."""
    copy = types_pb2.ObjectMeta()
    copy.CopyFrom(meta)
    copy.shard_index = 0
    copy.ClearField("inline_shard")
    return copy.SerializeToString(deterministic=True)


def majority_meta(copies: list[types_pb2.ObjectMeta]) -> types_pb2.ObjectMeta:
    """The content most copies of one version share (ties: the first seen)."""
    counts = collections.Counter(comparable_meta(m) for m in copies)
    best = counts.most_common(1)[0][0]
    return next(m for m in copies if comparable_meta(m) == best)


def quorum_version(metas: list[types_pb2.ObjectMeta | None], read_quorum: int) -> types_pb2.ObjectMeta | None:
    """Of per-member copies, the version (data_id) at least read_quorum agree on; newest mtime wins."""
    by_version: dict[str, list[types_pb2.ObjectMeta]] = collections.defaultdict(list)
    for meta in metas:
        if meta is not None:
            by_version[meta.data_id].append(meta)
    agreed = [copies for copies in by_version.values() if len(copies) >= read_quorum]
    if not agreed:
        return None
    copies = max(agreed, key=lambda copies: copies[0].mtime_ns)
    # Copies of one version normally agree byte for byte (but for shard_index); if one drive's
    # copy differs (damaged, or hand-edited), the majority's content wins and healing
    # rewrites the minority (sealstore/erasure/heal.py).
    return majority_meta(copies)


def no_version_verdict(outcomes: list, read_quorum: int, what: str) -> errors.SealstoreError:
    """The error when no version reached read quorum: NoSuchKey only when the members without a
    copy are so many that the object could not be read even if every other member had it;
    else the silent members might have it: SlowDown."""
    absent = count(outcomes, errors.NoSuchKey)
    if absent > len(outcomes) - read_quorum:
        return first_of(outcomes, errors.NoSuchKey)
    return verdict([o for o in outcomes if not isinstance(o, errors.NoSuchKey)] +
                   [errors.ServiceUnavailable("no copy here")] * absent, read_quorum, what)


def version_holders(metas: list[types_pb2.ObjectMeta | None], data_id: str) -> list[int]:
    """The members holding version `data_id`."""
    return [i for i, m in enumerate(metas) if m is not None and m.data_id == data_id]


# ---- listings -----------------------------------------------------------------------------

def agreed_entries(pages: list[storage_pb2.ListObjectsResponse],
                   read_quorum: int) -> tuple[list[storage_pb2.ObjectEntry], str | None]:
    """One round of a listing: the entries >= read_quorum members list with the same data_id,
    in key order (newest mtime wins among agreed versions), and the horizon: the smallest last
    key of a truncated page (a member's view beyond it is unknown, so only keys up to it are
    decided), or None when no page was truncated."""
    truncated_ends = [p.entries[-1].key for p in pages if p.truncated and p.entries]
    horizon = min(truncated_ends) if truncated_ends else None
    copies: dict[str, dict[str, list]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for page in pages:
        for entry in page.entries:
            if horizon is None or entry.key <= horizon:
                copies[entry.key][entry.data_id].append(entry)
    result = []
    for key in sorted(copies):
        agreed = [v for v in copies[key].values() if len(v) >= read_quorum]
        if agreed:
            result.append(max(agreed, key=lambda v: v[0].mtime_ns)[0])
    return result, horizon


def merged_set_pages(pages: list[tuple[list, bool]], max_keys: int) -> tuple[list, bool]:
    """Several erasure sets' listings (each its first max_keys entries after the same key)
    merged in key order: the first max_keys of the merge are exactly the cluster's, since
    every key lives in one set."""
    merged = sorted((e for entries, _ in pages for e in entries), key=lambda e: e.key)
    truncated = len(merged) > max_keys or any(more for _, more in pages)
    return merged[:max_keys], truncated


# ---- writes -------------------------------------------------------------------------------

def commit_failure(outcomes: list, committed: int, members: int, write_quorum: int,
                   what: str) -> errors.SealstoreError:
    """The error of a commit that reached `committed` < write_quorum members (after its undo):
    NoSuchBucket when deleted meanwhile, StorageFull (MinIO's XMinioStorageFull) when a quorum
    of drives is full, else SlowDown."""
    if count(outcomes, errors.NoSuchBucket) >= write_quorum:
        return first_of(outcomes, errors.NoSuchBucket)
    full = [o for o in outcomes if isinstance(o, errors.StorageFull)]
    if len(full) >= write_quorum:
        return full[0]
    return errors.SlowDown(f"{what}: {committed} of {members} drives committed, {write_quorum} needed "
                           f"({reasons(outcomes)})")
