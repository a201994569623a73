"""The anomaly threshold θ, fitted on the errors a model makes on its training windows.

The paper's rule is θ = μ_E + k·σ_E with k = 3 (:func:`mean_k_std`). Prediction errors are
non-negative and right-skewed, so a quantile of the training errors (:func:`quantile`) is
offered as the distribution-free alternative. Both return ``(mu, sigma, theta)`` so the
model file always records the error distribution's mean and spread.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from seqwatch.sidecar.modelfile import THRESHOLD_QUANTILE_PREFIX, THRESHOLD_STD


class Threshold(NamedTuple):
    mu: float
    """μ_E, mean training error."""
    sigma: float
    """σ_E, population standard deviation of the training errors."""
    theta: float
    """θ: errors above it are anomalous."""


def _check_errors(errors: np.ndarray) -> np.ndarray:
    errors = np.asarray(errors, dtype=np.float64)
    if errors.ndim != 1 or errors.size == 0:
        raise ValueError(f"errors must be a non-empty 1-D array, got shape {list(errors.shape)}")
    if not np.all(np.isfinite(errors)):
        raise ValueError(f"errors contain {int(np.sum(~np.isfinite(errors)))} non-finite values")
    return errors


def _moments(errors: np.ndarray) -> tuple[float, float]:
    # Population std (ddof=0): with thousands of training windows the difference is noise,
    # and it stays defined for a single window.
    return float(errors.mean()), float(errors.std())


def mean_k_std(errors: np.ndarray, k: float = 3.0) -> Threshold:
    """θ = μ_E + k·σ_E of ``errors`` (the paper's rule, k=3)."""
    if not (math.isfinite(k) and k >= 0):
        raise ValueError(f"k must be a finite number >= 0, got {k}")
    mu, sigma = _moments(_check_errors(errors))
    return Threshold(mu, sigma, mu + k * sigma)


def quantile(errors: np.ndarray, q: float) -> Threshold:
    """θ = the q-quantile of ``errors`` (linear interpolation), 0 < q < 1."""
    if not (0 < q < 1):
        raise ValueError(f"quantile q must be in (0, 1), got {q}")
    errors = _check_errors(errors)
    mu, sigma = _moments(errors)
    return Threshold(mu, sigma, float(np.quantile(errors, q)))


def fit_threshold(errors: np.ndarray, method: str | float, k: float = 3.0) -> tuple[Threshold, str]:
    """θ by ``method`` ("std" for μ+kσ, or a quantile q in (0, 1)) and its model-file label.

    The label is the ``threshold_method`` a model file records: ``"mean+k*std"`` or
    ``"quantile:q"``.
    """
    if isinstance(method, str):
        if method != "std":
            raise ValueError(f"threshold must be 'std' or a quantile in (0, 1), got {method!r}")
        return mean_k_std(errors, k), THRESHOLD_STD
    if isinstance(method, bool) or not isinstance(method, int | float):
        raise ValueError(f"threshold must be 'std' or a quantile in (0, 1), got {method!r}")
    q = float(method)
    return quantile(errors, q), f"{THRESHOLD_QUANTILE_PREFIX}{q!r}"
