"""Multipart uploads: where an upload in progress lives, and AWS's rules for its parts.

An upload in progress is a set of ordinary objects in the system bucket `.multipart` (a name no
S3 bucket can have, so clients can never address it), one per drive of the erasure set the
completed object belongs to:

    <bucket>/uploads/<upload_id>              the upload's record (ObjectMeta.upload set; its
                                              `encryption` is the completed object's envelope)
    <bucket>/parts/<upload_id>/<NNNNN>        one object per part (ObjectMeta.parts[0] says which)

So parts get the same quorum commit, overwrite, listing index and heal as any object, a part
uploaded again simply replaces the previous one, and an abort is a prefix delete. Completing
moves the parts' shard files into the object's folder (storage CompleteMultipart): no data is
copied. Pure functions only; no I/O.
"""
from __future__ import annotations

import hashlib
import re

from sealstore import errors

SYSTEM_BUCKET = ".multipart"
MIN_PART_SIZE = 5 * 1024 * 1024
"""Every part but the last must be at least this (AWS's EntityTooSmall)."""
MAX_PART_SIZE = 5 * 1024 * 1024 * 1024
MAX_PART_NUMBER = 10_000
MAX_PARTS_LISTED = 1000
DEFAULT_UPLOAD_EXPIRY_S = 7 * 24 * 3600
"""Uploads neither completed nor aborted are removed after this long (SEALSTORE_UPLOAD_EXPIRY)."""
_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")


def validate_upload_id(upload_id: str) -> None:
    """Upload ids are ours (uuid4 hex): anything else cannot name an upload (NoSuchUpload)."""
    if not _UPLOAD_ID.match(upload_id or ""):
        raise errors.NoSuchUpload()


def parse_part_number(raw: str | None) -> int:
    """`partNumber` as AWS takes it: an integer 1..10000, else InvalidArgument."""
    if raw is None or not raw.isascii() or not raw.isdigit() or len(raw) > 6:
        raise errors.InvalidArgument("Part number must be an integer between 1 and 10000, inclusive")
    number = int(raw)
    if not 1 <= number <= MAX_PART_NUMBER:
        raise errors.InvalidArgument("Part number must be an integer between 1 and 10000, inclusive")
    return number


def record_key(bucket: str, upload_id: str) -> str:
    return f"{bucket}/uploads/{upload_id}"


def uploads_prefix(bucket: str) -> str:
    return f"{bucket}/uploads/"


def part_key(bucket: str, upload_id: str, number: int) -> str:
    return f"{parts_prefix(bucket, upload_id)}{number:05d}"


def parts_prefix(bucket: str, upload_id: str) -> str:
    return f"{bucket}/parts/{upload_id}/"


def part_number_of(system_key: str) -> int:
    """The part number a part object's key names."""
    return int(system_key.rsplit("/", 1)[1])


def multipart_etag(part_etags: list[str]) -> str:
    """AWS's multipart ETag: MD5 of the concatenated binary part MD5s, "-", the part count.

    Part ETags that are not 32 hex digits (encrypted parts carry no MD5) are hashed as their
    UTF-8 text, which keeps the result deterministic for the same parts."""
    digest = hashlib.md5()
    for etag in part_etags:
        try:
            digest.update(bytes.fromhex(etag) if len(etag) == 32 else etag.encode())
        except ValueError:
            digest.update(etag.encode())
    return f"{digest.hexdigest()}-{len(part_etags)}"


def part_span(meta, part_number: int) -> tuple[int, int]:
    """(offset, length) in the object of `?partNumber=N`: the part numbered N of a multipart object,
    the whole of any other object for N = 1. Else InvalidPartNumber (AWS: 416)."""
    if not meta.parts:
        if part_number != 1:
            raise errors.InvalidPartNumber(f"the object has 1 part, not {part_number}")
        return 0, meta.size
    offset = 0
    for part in meta.parts:
        if part.number == part_number:
            return offset, part.size
        offset += part.size
    raise errors.InvalidPartNumber(f"the object has no part {part_number} ({len(meta.parts)} parts)")
