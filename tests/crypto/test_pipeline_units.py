"""Pure parts of the data path: range resolution, stripe assembly, the name comparison."""
from __future__ import annotations

import pytest

from sealstore import errors
from sealstore.erasure.quorum import without_foreign_copies
from sealstore.v1 import types_pb2
from services.crypto.get_pipeline import RangeRequest, ResolvedRange, check_names, resolve_range
from services.crypto.put_pipeline import StripeBuffer


@pytest.mark.parametrize("size,req,expected", [
    (100, None, ResolvedRange(0, 100, False)),
    (0, None, ResolvedRange(0, 0, False)),
    (100, RangeRequest(0, 0), ResolvedRange(0, 1, True)),
    (100, RangeRequest(10, 19), ResolvedRange(10, 10, True)),
    (100, RangeRequest(10, -1), ResolvedRange(10, 90, True)),
    (100, RangeRequest(90, 500), ResolvedRange(90, 10, True)),
    (100, RangeRequest(99, 99), ResolvedRange(99, 1, True)),
    (100, RangeRequest(is_suffix=True, suffix_length=10), ResolvedRange(90, 10, True)),
    (100, RangeRequest(is_suffix=True, suffix_length=1000), ResolvedRange(0, 100, True)),
    (100, RangeRequest(20, 10), ResolvedRange(0, 100, False)),
])
def test_resolve_range(size, req, expected):
    assert resolve_range(size, req) == expected


@pytest.mark.parametrize("size,req", [
    (100, RangeRequest(100, 200)), (100, RangeRequest(100, -1)), (0, RangeRequest(0, 0)),
    (100, RangeRequest(is_suffix=True, suffix_length=0)), (0, RangeRequest(is_suffix=True, suffix_length=5)),
])
def test_unsatisfiable_range(size, req):
    with pytest.raises(errors.InvalidRange):
        resolve_range(size, req)


def test_stripe_buffer_cuts_exact_stripes():
    buf = StripeBuffer(10)
    out = buf.add(b"abc") + buf.add(b"defghijklmnopqrstuvwxyz" * 1) + buf.add(b"")
    assert out == [b"abcdefghij", b"klmnopqrst"]
    assert buf.flush() == b"uvwxyz"
    assert buf.flush() is None


def _meta(bucket: str, key: str, data_id: str = "v1") -> types_pb2.ObjectMeta:
    return types_pb2.ObjectMeta(bucket=bucket, key=key, data_id=data_id)


def test_a_copy_naming_another_object_is_a_bad_copy_for_the_quorum():
    requested = ("b2", "B")
    good = _meta(*requested)
    moved = _meta("b1", "A", "v0")           # bucket1/A's metadata copied over bucket2/B
    aliased = _meta("b2", "./B")              # another raw name, even one that cleans to B
    missing = errors.NoSuchKey()
    outcomes = [good, moved, aliased, missing]
    metas = [o if isinstance(o, types_pb2.ObjectMeta) else None for o in outcomes]
    checked = without_foreign_copies(outcomes, metas, *requested)
    assert checked[0] is good and checked[3] is missing
    assert all(isinstance(o, errors.ObjectTampered) for o in checked[1:3])


@pytest.mark.parametrize("stored", [("b1", "A"), ("b2", "a/../B"), ("b2", "B/"), ("B", "b2")])
def test_the_worker_refuses_metadata_naming_another_object(stored):
    with pytest.raises(errors.ObjectTampered):
        check_names(_meta(*stored), "b2", "B")
    check_names(_meta("b2", "B"), "b2", "B")
