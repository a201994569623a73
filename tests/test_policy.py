"""The verdict policy: θ, k of n, cooldown, bounded state."""

from __future__ import annotations

import numpy as np
import pytest

from seqwatch.sidecar.policy import PolicyConfig, VerdictPolicy

THETA = 1.0


def run(policy: VerdictPolicy, errors_by_bin: dict[int, float], host: str = "10.0.0.1"):
    """Bins in which ``host`` got a verdict, given its error per active bin."""
    fired = []
    for bin_ in sorted(errors_by_bin):
        policy.expire(bin_)
        mask = policy.decide(bin_, [host], np.array([errors_by_bin[bin_]]), THETA)
        if mask[0]:
            fired.append(bin_)
    return fired


def test_plain_rule_is_strictly_greater_than_theta():
    policy = VerdictPolicy()
    mask = policy.decide(1, ["a", "b", "c", "d"], np.array([0.5, 1.0, 1.0001, np.nan]), THETA)
    assert mask.tolist() == [False, False, True, False]
    assert len(policy) == 0  # the plain rule keeps no state


def test_threshold_override():
    assert VerdictPolicy(PolicyConfig(threshold=7.5)).threshold(3.0) == 7.5
    assert VerdictPolicy().threshold(3.0) == 3.0


def test_k_of_n_needs_k_exceedances_within_n_intervals():
    policy = VerdictPolicy(PolicyConfig(k=2, n=3))
    errors = {1: 5.0, 2: 0.1, 3: 5.0, 4: 5.0, 8: 5.0, 11: 5.0, 12: 0.2, 13: 5.0}
    # 1: first exceedance. 3: second within (0, 3] -> fires. 4: 3 and 4 -> fires.
    # 8: alone. 11: 8 is outside (8, 11]. 13: 11 and 13 within (10, 13] -> fires.
    assert run(policy, errors) == [3, 4, 13]
    assert policy.suppressed_k_of_n == 3


def test_k_of_n_never_fires_on_an_interval_below_theta():
    policy = VerdictPolicy(PolicyConfig(k=2, n=4))
    assert run(policy, {1: 5.0, 2: 5.0, 3: 0.5}) == [2]


def test_inactive_intervals_count_as_not_exceeding():
    policy = VerdictPolicy(PolicyConfig(k=2, n=2))
    assert run(policy, {1: 5.0, 3: 5.0, 4: 5.0}) == [4]


def test_cooldown_suppresses_the_next_intervals():
    policy = VerdictPolicy(PolicyConfig(cooldown=2))
    errors = dict.fromkeys(range(1, 9), 5.0)
    assert run(policy, errors) == [1, 4, 7]
    assert policy.suppressed_cooldown == 5  # bins 2, 3, 5, 6 and 8


def test_cooldown_and_k_of_n_together_are_per_host():
    policy = VerdictPolicy(PolicyConfig(k=2, n=2, cooldown=1))
    for bin_ in range(1, 6):
        policy.expire(bin_)
        mask = policy.decide(bin_, ["a", "b"], np.array([5.0, 5.0 if bin_ >= 3 else 0.0]), THETA)
        if bin_ == 2:
            assert mask.tolist() == [True, False]
        if bin_ == 4:
            assert mask.tolist() == [True, True]
        if bin_ == 5:
            assert mask.tolist() == [False, False]


def test_several_batches_of_one_bin_do_not_count_twice():
    policy = VerdictPolicy(PolicyConfig(k=2, n=2))
    policy.decide(1, ["a"], np.array([5.0]), THETA)
    assert not policy.decide(1, ["a"], np.array([5.0]), THETA)[0]


def test_state_expires_and_can_be_forgotten():
    policy = VerdictPolicy(PolicyConfig(k=3, n=4, cooldown=2))
    policy.decide(1, ["a", "b", "c"], np.array([5.0, 5.0, 5.0]), THETA)
    assert len(policy) == 3
    policy.forget(lambda host: host != "b")
    assert len(policy) == 2
    policy.expire(5)  # 1 <= 5 - 4: outside every span
    assert len(policy) == 0


def test_state_is_bounded_by_recent_exceedances():
    policy = VerdictPolicy(PolicyConfig(k=2, n=3))
    for bin_ in range(100):
        policy.expire(bin_)
        hosts = [f"10.0.{bin_}.{i}" for i in range(50)]
        policy.decide(bin_, hosts, np.full(50, 5.0), THETA)
    assert len(policy) <= 3 * 50


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 3, "n": 2}, "between 1 and n=2"),
        ({"k": 0, "n": 2}, "between 1 and n=2"),
        ({"n": 0}, "n \\(k_of_n\\) must be >= 1"),
        ({"cooldown": -1}, "cooldown"),
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": float("inf")}, "threshold"),
    ],
)
def test_invalid_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PolicyConfig(**kwargs)
