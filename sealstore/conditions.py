"""HTTP conditional reads (RFC 7232) against an object's metadata, as S3 evaluates them.

The gateway parses the headers (HEAD evaluates them itself: it has the metadata and needs no
key); the crypto worker evaluates the same conditions for GET right after its metadata read,
so a 304 or 412 never costs a kms Decrypt.

Order (RFC 7232 section 6, which the S3 documentation follows):
1. If-Match, else If-Unmodified-Since: false -> 412 PreconditionFailed;
2. If-None-Match, else If-Modified-Since: "not modified" -> 304 NotModified.
A present If-Match makes If-Unmodified-Since irrelevant (S3: If-Match true and
If-Unmodified-Since false -> 200) and a present If-None-Match makes If-Modified-Since
irrelevant (S3: If-None-Match false and If-Modified-Since true -> 304). A date that does
not parse is ignored, as the RFC requires; Last-Modified has one-second resolution, so the
object's time is compared in whole seconds.
"""
from __future__ import annotations

import datetime
import email.utils
from dataclasses import dataclass
from typing import Mapping

from sealstore import errors
from sealstore.v1 import crypto_pb2, types_pb2


@dataclass(frozen=True)
class Conditions:
    if_match: str | None = None
    if_none_match: str | None = None
    if_modified_since: int | None = None
    if_unmodified_since: int | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> "Conditions":
        """From a case-insensitive header mapping (aiohttp's CIMultiDict)."""
        return cls(headers.get("If-Match"), headers.get("If-None-Match"),
                   _http_date_seconds(headers.get("If-Modified-Since")),
                   _http_date_seconds(headers.get("If-Unmodified-Since")))

    @classmethod
    def from_proto(cls, msg: crypto_pb2.ObjectConditions) -> "Conditions":
        def field(name):
            return getattr(msg, name) if msg.HasField(name) else None
        return cls(field("if_match"), field("if_none_match"), field("if_modified_since"),
                   field("if_unmodified_since"))

    def to_proto(self) -> crypto_pb2.ObjectConditions:
        msg = crypto_pb2.ObjectConditions()
        for name in ("if_match", "if_none_match", "if_modified_since", "if_unmodified_since"):
            value = getattr(self, name)
            if value is not None:
                setattr(msg, name, value)
        return msg

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.if_match, self.if_none_match, self.if_modified_since,
                                           self.if_unmodified_since))

    def check(self, meta: types_pb2.ObjectMeta, resource: str = "") -> None:
        """Raises PreconditionFailed (412) or NotModified (304); returns when the read goes on."""
        modified = meta.mtime_ns // 1_000_000_000
        if self.if_match is not None:
            if not etag_matches(self.if_match, meta.etag):
                raise errors.PreconditionFailed(resource=resource)
        elif self.if_unmodified_since is not None and modified > self.if_unmodified_since:
            raise errors.PreconditionFailed(resource=resource)
        if self.if_none_match is not None:
            if etag_matches(self.if_none_match, meta.etag):
                raise errors.NotModified(resource=resource)
        elif self.if_modified_since is not None and modified <= self.if_modified_since:
            raise errors.NotModified(resource=resource)


def etag_matches(header: str, etag: str) -> bool:
    """Whether an If-Match / If-None-Match list names `etag` (or is "*"); weak tags compare
    by their value, which is what S3 does for reads."""
    wanted = etag.strip('"')
    return any(t.strip() in ("*", wanted, f'"{wanted}"', f'W/"{wanted}"') for t in header.split(","))


def _http_date_seconds(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:  # asctime format: HTTP dates are always GMT
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return int(parsed.timestamp())
