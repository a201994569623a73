"""SequenceDetector: splitting, standardization, training, θ, reproducibility, behaviour."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from seqwatch.sidecar.modelfile import OnnxModel
from seqwatch.sidecar.schema import FEATURE_INDEX, N_FEATURES
from seqwatch.training.detector import SequenceDetector, fit_standardization
from seqwatch.training.threshold import fit_threshold, mean_k_std, quantile

INTERVAL = 60.0


def periodic_windows(
    n: int, window: int, *, period: int = 12, seed: int = 0, start: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` raw windows of one host with a daily-like cycle and Poisson noise, and times.

    Each feature has its own level; all follow the same cycle, as a host's connection
    counts, bytes and packets rise and fall together.
    """
    rng = np.random.default_rng(seed)
    steps = np.arange(start, start + n + window)
    cycle = 1.0 + 0.8 * np.sin(2 * np.pi * steps / period)
    levels = np.geomspace(2.0, 2000.0, N_FEATURES)
    series = rng.poisson(np.outer(cycle, levels)).astype(np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(series, window + 1, axis=0)
    windows = np.ascontiguousarray(windows.transpose(0, 2, 1))
    times = (steps[window:] * INTERVAL).astype(np.float64)
    return windows, times


def small(**params) -> SequenceDetector:
    base = dict(window=8, hidden_size=8, epochs=2, batch_size=64, progress=False)
    return SequenceDetector(**{**base, **params})


# --- threshold -----------------------------------------------------------------------------


def test_mean_k_std_is_the_papers_rule():
    errors = np.array([1.0, 2.0, 3.0, 4.0])
    mu, sigma, theta = mean_k_std(errors, k=3)
    assert mu == 2.5
    assert sigma == pytest.approx(math.sqrt(1.25))
    assert theta == pytest.approx(2.5 + 3 * math.sqrt(1.25))
    assert mean_k_std(errors, k=0).theta == 2.5


def test_quantile_threshold_keeps_the_moments():
    errors = np.arange(101, dtype=np.float64)
    mu, sigma, theta = quantile(errors, 0.99)
    assert theta == pytest.approx(99.0)
    assert mu == 50.0
    assert sigma == pytest.approx(errors.std())


@pytest.mark.parametrize(
    "call",
    [
        lambda: mean_k_std(np.array([]), 3),
        lambda: mean_k_std(np.array([1.0, np.nan]), 3),
        lambda: mean_k_std(np.ones((2, 2)), 3),
        lambda: mean_k_std(np.ones(3), -1),
        lambda: quantile(np.ones(3), 1.0),
        lambda: quantile(np.ones(3), 0.0),
        lambda: fit_threshold(np.ones(3), "median"),
        lambda: fit_threshold(np.ones(3), True),
    ],
)
def test_threshold_rejects_bad_input(call):
    with pytest.raises(ValueError):
        call()


def test_fit_threshold_labels_match_the_model_file():
    errors = np.linspace(0, 1, 50)
    assert fit_threshold(errors, "std", 3.0)[1] == "mean+k*std"
    found, label = fit_threshold(errors, 0.95)
    assert label == "quantile:0.95"
    assert found.theta == pytest.approx(np.quantile(errors, 0.95))


# --- standardization and split -----------------------------------------------------------


def test_standardization_is_log1p_mean_and_std_per_feature():
    windows, _ = periodic_windows(50, 4)
    windows[:, :, FEATURE_INDEX["out_icmp"]] = 0.0  # constant in training
    mean, scale = fit_standardization(windows, chunk=7)  # chunks must not change the result
    logs = np.log1p(windows.astype(np.float64)).reshape(-1, N_FEATURES)
    expected_std = logs.std(axis=0)
    constant = FEATURE_INDEX["out_icmp"]
    np.testing.assert_allclose(mean, logs.mean(axis=0), rtol=1e-6)
    varying = np.arange(N_FEATURES) != constant
    np.testing.assert_allclose(scale[varying], expected_std[varying], rtol=1e-5)
    assert scale[constant] == 1.0  # not a near-zero divisor


def test_time_split_and_standardization_use_only_the_training_time():
    windows, times = periodic_windows(100, 4)
    # The latest fifth of the time is very different traffic; shuffle the array order so
    # only `times` can tell which windows are late.
    late = times > times.min() + 0.8 * (times.max() - times.min())
    windows[late] *= 1000
    order = np.random.default_rng(1).permutation(len(times))
    detector = small(window=4, epochs=1).fit(windows[order], times[order])
    assert detector.train_size_["validation_windows"] == late.sum() == 20
    assert detector.train_size_["training_windows"] == 80
    expected, _ = fit_standardization(windows[~late])
    np.testing.assert_allclose(detector.mean_, expected, rtol=1e-6)
    assert detector.train_span_ == (times.min(), times.max())
    assert detector.train_size_["intervals"] == 100
    assert len(detector.training_errors_) == 80


def test_without_times_the_array_order_is_time():
    windows, _ = periodic_windows(50, 4)
    detector = small(window=4, epochs=1, validation_fraction=0.3).fit(windows)
    assert detector.train_size_["validation_windows"] == 15
    expected, _ = fit_standardization(windows[:35])
    np.testing.assert_allclose(detector.mean_, expected, rtol=1e-6)
    assert detector.train_span_ is None


def test_tiny_dataset_trains_on_everything_and_warns():
    windows, times = periodic_windows(5, 4)
    with pytest.warns(UserWarning, match="validation window"):
        detector = small(window=4, batch_size=256).fit(windows, times)
    assert not detector.validation_used_
    assert detector.train_size_["training_windows"] == 5
    assert all(math.isnan(v) for v in detector.history_["val_loss"])
    assert np.isfinite(detector.threshold_)


def test_no_warning_when_validation_is_switched_off():
    windows, times = periodic_windows(20, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        detector = small(window=4, validation_fraction=0.0).fit(windows, times)
    assert detector.train_size_["validation_windows"] == 0


GOOD_SHAPE = (10, 9, N_FEATURES)


@pytest.mark.parametrize(
    ("params", "shape", "message"),
    [
        ({}, (10, 5, N_FEATURES), "shape"),
        ({}, (10, 9, 3), "shape"),
        ({"architecture": "transformer"}, GOOD_SHAPE, "architecture"),
        ({"threshold": 2.0}, GOOD_SHAPE, "quantile"),
        ({"patience": 0}, GOOD_SHAPE, "patience"),
        ({"validation_fraction": 1.0}, GOOD_SHAPE, "validation_fraction"),
    ],
)
def test_fit_rejects_bad_configuration_and_shapes(params, shape, message):
    with pytest.raises(ValueError, match=message):
        small(**params).fit(np.ones(shape, np.float32))


def test_fit_rejects_non_finite_windows():
    windows, _ = periodic_windows(20, 8)
    windows[3, 2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        small().fit(windows)


def test_sklearn_conventions():
    detector = small(architecture="gru", hidden_size=5)
    assert clone(detector).get_params() == detector.get_params()
    with pytest.raises(NotFittedError):
        detector.score(np.zeros((1, 9, N_FEATURES), np.float32))


# --- training ------------------------------------------------------------------------------


def test_same_seed_same_model_other_seed_other_model():
    windows, times = periodic_windows(120, 8)
    fits = [small(architecture="lstm", seed=s, dropout=0.2).fit(windows, times) for s in (7, 7, 8)]
    first, again, other = (f.predictor_.state_dict() for f in fits)
    assert all(torch.equal(first[name], again[name]) for name in first)
    np.testing.assert_array_equal(fits[0].training_errors_, fits[1].training_errors_)
    assert fits[0].history_["train_loss"] == fits[1].history_["train_loss"]
    assert not all(torch.equal(first[name], other[name]) for name in first)


@pytest.mark.slow
def test_early_stopping_restores_the_best_epoch():
    windows, times = periodic_windows(200, 8)
    # A large learning rate makes the validation loss bounce, so the best epoch is rarely
    # the last one; whichever it is, the returned model must be that epoch's.
    detector = small(epochs=12, patience=2, learning_rate=0.05, batch_size=16)
    detector.fit(windows, times)
    val_loss = detector.history_["val_loss"]
    assert detector.best_epoch_ == int(np.argmin(val_loss)) + 1
    assert detector.best_epoch_ < detector.epochs_run_  # else restoring proves nothing
    assert detector.epochs_run_ == len(val_loss) <= 12
    if detector.epochs_run_ < 12:  # stopped early: exactly `patience` epochs after the best
        assert detector.epochs_run_ == detector.best_epoch_ + 2
    late = times > times.min() + 0.8 * (times.max() - times.min())
    residual = detector.residuals(windows[late])
    assert float(np.mean(residual.astype(np.float64) ** 2)) == pytest.approx(
        min(val_loss), rel=1e-4
    )


@pytest.mark.slow
def test_a_spike_scores_above_theta_and_normal_traffic_below():
    train, train_times = periodic_windows(600, 8, seed=0)
    detector = small(architecture="lstm", hidden_size=16, epochs=25, batch_size=32, patience=5)
    detector.fit(train, train_times)
    normal, _ = periodic_windows(200, 8, seed=1, start=600)
    # A scan: the last interval suddenly has ~50x the connections, peers, ports and
    # failures (+1 so that a quiet feature, which may count 0, rises too).
    spiked = normal.copy()
    for name in ("out_conns", "out_hosts", "out_ports", "out_failed"):
        spiked[:, -1, FEATURE_INDEX[name]] = (spiked[:, -1, FEATURE_INDEX[name]] + 1) * 50
    normal_errors, spike_errors = detector.score(normal), detector.score(spiked)
    assert np.mean(normal_errors > detector.threshold_) < 0.05
    assert np.all(spike_errors > detector.threshold_)
    assert spike_errors.min() > normal_errors.max()
    # The explanation points at what moved: the spiked features have the largest residuals.
    top4 = np.argsort(-detector.residuals(spiked[:1])[0])[:4]
    assert {int(i) for i in top4} == {
        FEATURE_INDEX[n] for n in ("out_conns", "out_hosts", "out_ports", "out_failed")
    }
    # And it learned the cycle: better than a model that always predicts the mean (E≈√d).
    assert np.median(normal_errors) < 0.8 * math.sqrt(N_FEATURES)


# --- export --------------------------------------------------------------------------------


@pytest.mark.slow
def test_export_records_what_fit_and_the_caller_know(tmp_path):
    windows, times = periodic_windows(100, 8)
    detector = small(architecture="gru", threshold=0.99).fit(windows, times)
    info = detector.export_onnx(
        tmp_path / "m.onnx",
        {
            "interval": 10.0,
            "removal_delays": {"dns": 12.0},
            "train_size": {"hosts": 1, "connections": 12345},
        },
    )
    loaded = OnnxModel.load(tmp_path / "m.onnx").info
    assert loaded == info
    assert loaded.interval == 10.0
    assert loaded.removal_delays["dns"] == 12.0
    assert loaded.removal_delays["tcp_attempt"] == 5.0
    assert loaded.train_size["windows"] == 100
    assert loaded.train_size["hosts"] == 1
    assert loaded.train_size["connections"] == 12345
    assert loaded.train_span == (times.min(), times.max())
    assert loaded.threshold_method == "quantile:0.99"
    assert loaded.threshold == pytest.approx(detector.threshold_)
    assert loaded.hyperparameters["hidden_size"] == 8
    assert loaded.hyperparameters["epochs_run"] == detector.epochs_run_
    assert loaded.architecture == "gru"
    # Same model, exported again later: same id, although the creation time differs.
    again = detector.export_onnx(
        tmp_path / "again.onnx",
        {
            "interval": 10.0,
            "removal_delays": {"dns": 12.0},
            "train_size": {"hosts": 1, "connections": 12345},
            "created": "2030-01-01T00:00:00+00:00",
        },
    )
    assert again.model_id == info.model_id
    assert again.created != info.created
    with pytest.raises(ValueError, match="does not take"):
        detector.export_onnx(tmp_path / "x.onnx", {"colour": "blue"})
