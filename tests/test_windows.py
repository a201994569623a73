"""Sequence windows: contents, gaps, idle expiry and the LRU cap."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqwatch.sidecar.features import IntervalFeatures
from seqwatch.sidecar.windows import HostWindows, IntervalOrderError, iter_windows


def vec(x: float, d: int = 3) -> list[float]:
    return [x] * d


def test_window_holds_the_last_t_plus_one_intervals_oldest_first():
    w = HostWindows(window=3, n_features=3)
    for b in range(10, 15):
        out = w.update(b, ["h"], [vec(b)])
    assert out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist() == [11, 12, 13, 14]


def test_intervals_without_traffic_are_zeros():
    w = HostWindows(window=3, n_features=3)
    w.update(10, ["h"], [vec(1)])
    w.update(12, ["h"], [vec(2)])
    out = w.update(13, ["h"], [vec(3)])
    assert out[0, :, 0].tolist() == [1, 0, 2, 3]


def test_a_new_host_sees_only_its_own_vector():
    w = HostWindows(window=4, n_features=3)
    w.update(5, ["a"], [vec(9)])
    out = w.update(6, ["b"], [vec(1)])
    assert out[0, :, 0].tolist() == [0, 0, 0, 0, 1]


def test_hosts_idle_for_t_intervals_are_dropped():
    w = HostWindows(window=3, n_features=3)
    w.update(0, ["a", "b"], [vec(1), vec(1)])
    w.update(3, ["b"], [vec(2)])
    assert "a" in w  # idle 3 intervals, its vector is still inside b's next window span
    w.update(4, ["b"], [vec(2)])
    assert "a" not in w and "b" in w
    assert w.expired == 1


def test_lru_cap_evicts_least_recently_active_and_counts():
    w = HostWindows(window=8, n_features=3, max_hosts=3, initial_capacity=1)
    w.update(0, ["a"], [vec(1)])
    w.update(1, ["b"], [vec(1)])
    w.update(2, ["c"], [vec(1)])
    w.update(3, ["d", "e"], [vec(1), vec(1)])
    assert len(w) == 3
    assert w.evictions == 2
    assert set(w._slot) == {"c", "d", "e"}
    with pytest.raises(OverflowError, match="max_hosts=3"):
        w.update(4, ["f", "g", "h", "i"], [vec(1)] * 4)


def test_older_interval_is_refused():
    w = HostWindows(window=2, n_features=3)
    w.update(5, ["a"], [vec(1)])
    with pytest.raises(IntervalOrderError):
        w.update(4, ["a"], [vec(1)])


def test_one_interval_may_come_in_chunks():
    w = HostWindows(window=2, n_features=3)
    w.update(1, ["a"], [vec(1)])
    w.update(2, ["a"], [vec(2)])
    out = w.update(2, ["b"], [vec(3)])
    assert out[0, :, 0].tolist() == [0, 0, 3]
    assert w.windows(2, ["a"])[0, :, 0].tolist() == [0, 1, 2]


def test_shape_errors_are_clear():
    w = HostWindows(window=2, n_features=3)
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        w.update(1, ["a", "b"], [vec(1)])


@settings(max_examples=50, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.integers(0, 3), st.sets(st.sampled_from("abcdef"), min_size=1)),
        min_size=1,
        max_size=30,
    ),
    window=st.integers(1, 5),
)
def test_ring_buffer_equals_a_dictionary_of_full_histories(events, window):
    """Property: whatever the gaps, windows equal those cut from the full history."""
    w = HostWindows(window=window, n_features=2, initial_capacity=1)
    history: dict[tuple[str, int], float] = {}
    b = 0
    for step, hosts in events:
        b += step
        hosts = sorted(hosts)
        values = np.array([[hash((h, b)) % 97, b] for h in hosts], dtype=np.float32)
        out = w.update(b, hosts, values)
        for i, h in enumerate(hosts):
            history[(h, b)] = values[i, 0]
            expected = [history.get((h, t), 0.0) for t in range(b - window, b + 1)]
            assert out[i, :, 0].tolist() == expected


def test_iter_windows_pairs_intervals_with_windows():
    ivs = [
        IntervalFeatures(bin=b, interval=60.0, hosts=["x"], values=np.full((1, 16), b, float))
        for b in (1, 2, 4)
    ]
    got = list(iter_windows(ivs, window=2))
    assert [iv.bin for iv, _ in got] == [1, 2, 4]
    assert got[-1][1][0, :, 0].tolist() == [2, 0, 4]


def test_memory_per_tracked_host_is_small():
    w = HostWindows(window=16, n_features=16, max_hosts=4096, initial_capacity=4096)
    assert w.nbytes() / w.capacity <= 2048
