"""Erasure coding of stripes: any k fragments of k+m rebuild the stripe."""
from __future__ import annotations

import itertools
import os

import pytest

from sealstore import errors
from sealstore.erasure import coder as erasure
from services.crypto.put_pipeline import STRIPE_SIZE


def test_stripe_is_sixteen_packages():
    assert STRIPE_SIZE == 1_049_088 == 16 * 65568


@pytest.mark.parametrize("k,m", [(2, 2), (4, 2), (8, 4)])
@pytest.mark.parametrize("size", [1, 1000, STRIPE_SIZE])
def test_any_k_fragments_decode(k, m, size):
    coder = erasure.StripeCoder(k, m)
    stripe = os.urandom(size)
    fragments = coder.encode(stripe)
    assert len(fragments) == k + m
    subsets = list(itertools.combinations(range(k + m), k))
    for subset in subsets[:: max(1, len(subsets) // 12)]:
        assert coder.decode([fragments[i] for i in subset]) == stripe


def test_too_few_fragments():
    coder = erasure.StripeCoder(2, 2)
    fragments = coder.encode(b"x" * 5000)
    with pytest.raises(errors.SlowDown):
        coder.decode(fragments[:1])


def test_garbage_fragments_are_typed():
    coder = erasure.StripeCoder(2, 2)
    with pytest.raises(errors.ObjectTampered):
        coder.decode([b"\0" * 100, b"\1" * 100])


def test_stripe_maths():
    S = STRIPE_SIZE
    assert erasure.stripe_count(0, S) == 0
    assert erasure.stripe_count(1, S) == 1
    assert erasure.stripe_count(S, S) == 1
    assert erasure.stripe_count(S + 1, S) == 2
    assert erasure.stripe_span(0, S, S) == (0, 1)
    assert erasure.stripe_span(S - 1, 2, S) == (0, 2)
    assert erasure.stripe_span(2 * S, 1, S) == (2, 1)
    assert erasure.stripe_span(5, 0, S) == (0, 0)
