"""Pure parts of the data path: range resolution and stripe assembly."""
from __future__ import annotations

import pytest

from sealstore import errors
from services.crypto.get_pipeline import RangeRequest, ResolvedRange, resolve_range
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
