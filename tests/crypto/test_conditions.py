"""Conditional reads (sealstore/conditions.py): RFC 7232 order as S3 documents it."""
from __future__ import annotations

import pytest

from sealstore import errors
from sealstore.conditions import Conditions
from sealstore.v1 import types_pb2

MODIFIED = 1_700_000_000  # Last-Modified, in seconds
META = types_pb2.ObjectMeta(etag="abc123", mtime_ns=MODIFIED * 1_000_000_000 + 750_000_000)
BEFORE, AFTER = MODIFIED - 60, MODIFIED + 60
OK, NOT_MODIFIED, FAILED = "200", "304", "412"


def outcome(**kwargs) -> str:
    try:
        Conditions(**kwargs).check(META)
    except errors.NotModified:
        return NOT_MODIFIED
    except errors.PreconditionFailed:
        return FAILED
    return OK


@pytest.mark.parametrize("kwargs, expected", [
    ({}, OK),
    ({"if_match": '"abc123"'}, OK),
    ({"if_match": "abc123"}, OK),
    ({"if_match": '"x", "abc123"'}, OK),
    ({"if_match": "*"}, OK),
    ({"if_match": '"other"'}, FAILED),
    ({"if_none_match": '"abc123"'}, NOT_MODIFIED),
    ({"if_none_match": 'W/"abc123"'}, NOT_MODIFIED),
    ({"if_none_match": "*"}, NOT_MODIFIED),
    ({"if_none_match": '"other"'}, OK),
    ({"if_modified_since": AFTER}, NOT_MODIFIED),
    ({"if_modified_since": MODIFIED}, NOT_MODIFIED),  # same second as Last-Modified: not modified
    ({"if_modified_since": BEFORE}, OK),
    ({"if_unmodified_since": BEFORE}, FAILED),
    ({"if_unmodified_since": MODIFIED}, OK),
    ({"if_unmodified_since": AFTER}, OK),
    # S3: If-Match true and If-Unmodified-Since false -> 200 (If-Match decides).
    ({"if_match": '"abc123"', "if_unmodified_since": BEFORE}, OK),
    ({"if_match": '"other"', "if_unmodified_since": AFTER}, FAILED),
    # S3: If-None-Match false (the ETag matches) and If-Modified-Since true -> 304.
    ({"if_none_match": '"abc123"', "if_modified_since": BEFORE}, NOT_MODIFIED),
    ({"if_none_match": '"other"', "if_modified_since": AFTER}, OK),
    # A failed precondition (412) is checked before "not modified" (304).
    ({"if_match": '"other"', "if_none_match": '"abc123"'}, FAILED),
    ({"if_unmodified_since": BEFORE, "if_modified_since": AFTER}, FAILED),
])
def test_evaluation_order(kwargs, expected):
    assert outcome(**kwargs) == expected


def test_headers_round_trip_through_the_worker_request():
    headers = {"If-Match": '"abc123"', "If-Modified-Since": "Tue, 14 Nov 2023 22:13:20 GMT",
               "If-Unmodified-Since": "not a date"}
    conditions = Conditions.from_headers(headers)
    assert conditions.if_modified_since == MODIFIED
    assert conditions.if_unmodified_since is None  # an invalid date is ignored (RFC 7232)
    assert conditions.if_none_match is None
    assert Conditions.from_proto(conditions.to_proto()) == conditions
    assert not Conditions.from_headers({})
    assert not Conditions.from_proto(Conditions().to_proto())


def test_all_three_http_date_formats():
    for value in ("Tue, 14 Nov 2023 22:13:20 GMT", "Tuesday, 14-Nov-23 22:13:20 GMT", "Tue Nov 14 22:13:20 2023"):
        assert Conditions.from_headers({"If-Modified-Since": value}).if_modified_since == MODIFIED, value
