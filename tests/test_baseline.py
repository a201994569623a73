"""Non-recurrent baselines: z-scores of the last interval and the isolation forest."""

from __future__ import annotations

import numpy as np
import pytest

from seqwatch.sidecar.schema import FEATURE_INDEX, N_FEATURES
from seqwatch.training import metrics
from seqwatch.training.baseline import (
    STD_FLOOR,
    IsolationForestBaseline,
    ZScoreBaseline,
    make_baseline,
)
from seqwatch.training.evaluate import Detector

T = 4


def _normal(n: int, seed: int = 0) -> np.ndarray:
    """Windows of a host with a steady, noisy connection rate and no failures."""
    rng = np.random.default_rng(seed)
    w = np.zeros((n, T + 1, N_FEATURES), np.float32)
    w[..., FEATURE_INDEX["out_conns"]] = rng.poisson(20, size=(n, T + 1))
    w[..., FEATURE_INDEX["out_hosts"]] = rng.poisson(3, size=(n, T + 1))
    w[..., FEATURE_INDEX["out_bytes"]] = rng.lognormal(9, 0.5, size=(n, T + 1))
    return w


def _scan(n: int) -> np.ndarray:
    w = _normal(n, seed=1)
    w[:, -1, FEATURE_INDEX["out_conns"]] = 2000
    w[:, -1, FEATURE_INDEX["out_failed"]] = 1990
    w[:, -1, FEATURE_INDEX["out_rejected"]] = 1990
    return w


def test_zscore_matches_hand_computation():
    train = _normal(400)
    model = ZScoreBaseline("max").fit(train)
    x = np.log1p(train[:, -1, :].astype(np.float64))
    std = np.maximum(x.std(axis=0), STD_FLOOR)
    z = np.abs((x - x.mean(axis=0)) / std)
    np.testing.assert_allclose(model.score(train), z.max(axis=1))
    # θ is μ + 3σ of the training scores, like a model's.
    assert model.threshold == pytest.approx(z.max(axis=1).mean() + 3 * z.max(axis=1).std())
    l2 = ZScoreBaseline("l2").fit(train)
    np.testing.assert_allclose(l2.score(train), np.sqrt((z**2).sum(axis=1)))


def test_zscore_uses_only_the_last_interval():
    train = _normal(200)
    model = ZScoreBaseline().fit(train)
    probe = _normal(10, seed=5)
    changed = probe.copy()
    changed[:, :-1, :] = 1e6  # history is invisible to this baseline
    np.testing.assert_allclose(model.score(probe), model.score(changed))


@pytest.mark.parametrize("kind", ["zscore", "zscore-l2"])
def test_zscores_flag_a_scan_and_few_normals(kind):
    train, normal_test, scan = _normal(600), _normal(300, seed=2), _scan(50)
    model = make_baseline(kind).fit(train)
    assert isinstance(model, Detector)
    assert np.all(model.score(scan) > model.threshold)
    assert np.mean(model.score(normal_test) > model.threshold) < 0.05


def test_isolation_forest_ranks_a_scan_above_normals():
    train, normal_test, scan = _normal(600), _normal(300, seed=2), _scan(50)
    model = IsolationForestBaseline(seed=0).fit(train)
    assert isinstance(model, Detector)
    labels = np.r_[np.zeros(300, int), np.ones(50, int)]
    scores = np.r_[model.score(normal_test), model.score(scan)]
    # A forest never splits on features constant in training (out_failed here), so an
    # outlier's score saturates: it ranks scans high but θ = μ+3σ need not catch them all.
    assert metrics.roc_auc(labels, scores) > 0.9
    assert np.mean(model.score(normal_test) > model.threshold) < 0.05


def test_constant_feature_gets_floor_not_infinity():
    train = _normal(100)
    model = ZScoreBaseline().fit(train)  # out_icmp is always 0 in training
    probe = _normal(1, seed=3)
    probe[0, -1, FEATURE_INDEX["out_icmp"]] = 1.0
    z = model.z(probe)[0, FEATURE_INDEX["out_icmp"]]
    assert z == pytest.approx(np.log1p(1.0) / STD_FLOOR)


def test_quantile_threshold():
    train = _normal(500)
    model = ZScoreBaseline(quantile=0.99).fit(train)
    assert model.threshold == pytest.approx(np.quantile(model.score(train), 0.99))
    assert model.describe()["threshold_method"] == "quantile:0.99"


def test_zscore_save_load_round_trip(tmp_path):
    model = ZScoreBaseline("l2").fit(_normal(100))
    path = tmp_path / "z.json"
    model.save(path)
    again = ZScoreBaseline.load(path)
    probe = _scan(3)
    np.testing.assert_allclose(again.score(probe), model.score(probe))
    assert again.threshold == model.threshold


def test_errors():
    with pytest.raises(RuntimeError, match="not fitted"):
        ZScoreBaseline().score(_normal(2))
    with pytest.raises(ValueError, match="reduce"):
        ZScoreBaseline("mean")
    with pytest.raises(ValueError, match="unknown baseline"):
        make_baseline("knn")
    with pytest.raises(ValueError, match="at least 2"):
        IsolationForestBaseline().fit(_normal(1))
