"""The featurizer's one-pass per-group sums (_groupsums) against numpy's bincount."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqwatch.sidecar._groupsums import group_sums


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=0, max_value=300),
    st.integers(min_value=0, max_value=2**32 - 1),
)
def test_sums_are_bincounts_to_the_last_bit(groups: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    out_g = rng.integers(0, groups, n)
    in_g = rng.integers(0, groups, n)
    # Weights spanning magnitudes, so that a different summation order would show.
    weights = rng.lognormal(0, 8, n) * rng.choice([1, -1], n)
    codes = rng.integers(0, 256, n).astype(np.uint8)
    table = rng.choice([0.0, 1.0], 256)
    values = np.zeros((groups, 5))
    group_sums(
        values,
        out_g,
        in_g,
        [(0, 0, None), (1, 1, None), (2, 0, weights), (3, 1, weights), (4, 0, (codes, table))],
    )
    assert np.array_equal(values[:, 0], np.bincount(out_g, minlength=groups))
    assert np.array_equal(values[:, 1], np.bincount(in_g, minlength=groups))
    assert np.array_equal(values[:, 2], np.bincount(out_g, weights=weights, minlength=groups))
    assert np.array_equal(values[:, 3], np.bincount(in_g, weights=weights, minlength=groups))
    expected = np.bincount(out_g, weights=table[codes], minlength=groups)
    assert np.array_equal(values[:, 4], expected)


def test_bad_arguments_are_errors_and_write_nothing() -> None:
    values = np.zeros((2, 3))
    ids = np.array([0, 1])
    with pytest.raises(IndexError, match="row 1"):
        group_sums(values, ids, np.array([0, 2]), [(0, 0, None)])
    assert not values.any()  # checked before anything is added
    with pytest.raises(ValueError, match="in_g"):
        group_sums(values, ids, ids.astype(np.int32), [(0, 0, None)])
    with pytest.raises(ValueError, match="weights"):
        group_sums(values, ids, ids, [(0, 0, np.ones(3))])
    with pytest.raises(ValueError, match="codes"):
        group_sums(values, ids, ids, [(0, 0, (np.zeros(2, np.int8), np.zeros(256)))])
    with pytest.raises(ValueError, match="table"):
        group_sums(values, ids, ids, [(0, 0, (np.zeros(2, np.uint8), np.zeros(255)))])
    with pytest.raises(ValueError, match="bad column"):
        group_sums(values, ids, ids, [(3, 0, None)])
    with pytest.raises(ValueError, match="2-D float64"):
        group_sums(np.zeros(6), ids, ids, [])
    with pytest.raises(ValueError):
        group_sums(np.zeros((2, 3))[:, :2], ids, ids, [])  # not C-contiguous
