"""What a stored version is made of on a drive: its shard files, each with its stripe count.

- an inline object: none (its shard is inside meta.json);
- a plain object, and a part object of the `.multipart` bucket (whose one ObjectPart has the
  object's own data_id): `<data_id>.shard`;
- a multipart object (meta.parts, data_id being the upload id): `<part.data_id>.shard` for each
  part, with the part's stripe count (erasure.stripe_count is unused).

Shared by the storage node (which files to keep, check, read and remove) and by readers and
healing (which data id to ask ReadShard for, and how many stripes it has). Pure functions.
"""
from __future__ import annotations

from typing import NamedTuple

from sealstore.v1 import types_pb2


class ShardFile(NamedTuple):
    data_id: str
    stripe_count: int


def is_composite(meta: types_pb2.ObjectMeta) -> bool:
    """A completed multipart object: its data lives in its parts' shard files, none under its
    own data_id. (A part object of `.multipart` names exactly one part, itself: not composite.)"""
    return bool(meta.parts) and not (len(meta.parts) == 1 and meta.parts[0].data_id == meta.data_id)


def shard_files(meta: types_pb2.ObjectMeta) -> list[ShardFile]:
    """The shard files of version `meta`, in read order."""
    if meta.inline:
        return []
    if is_composite(meta):
        return [ShardFile(p.data_id, p.stripe_count) for p in meta.parts]
    return [ShardFile(meta.data_id, meta.erasure.stripe_count)]


def shard_names(meta: types_pb2.ObjectMeta | None) -> set[str]:
    """File names of the shard files of `meta` (none for None)."""
    return set() if meta is None else {f"{s.data_id}.shard" for s in shard_files(meta)}
