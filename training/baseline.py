"""Non-recurrent baselines, scored and thresholded the way the recurrent models are.

A recurrent model earns its place only if it beats something simpler. Two baselines look
at the *last* interval of each window alone (no sequence context):

- :class:`ZScoreBaseline`: per-feature z-scores of ``log1p(x_{T+1})`` against the training
  windows' last intervals; the score is the largest |z| (``reduce="max"``) or their L2 norm
  (``reduce="l2"``, the same norm the models' error uses).
- :class:`IsolationForestBaseline`: scikit-learn's isolation forest on the same
  ``log1p`` vectors; the score is the forest's anomaly score (higher = more anomalous).

Both set θ = μ + k·σ of their own training scores (or a quantile), exactly like a model's
θ, and expose the evaluation interface (:class:`seqwatch.training.evaluate.Detector`):
``name``, ``architecture``, ``threshold``, ``error_mean``, ``error_std``, ``score(windows)``,
``describe()``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from seqwatch.sidecar.schema import FEATURE_NAMES

STD_FLOOR = 0.1
"""Smallest per-feature σ in log1p space.

A feature that never varied in training (e.g. ``out_icmp`` always 0) would otherwise give
an infinite z-score to its first non-zero value; a tenth of an e-fold keeps such a jump
large (z ≈ 7 for a single event) without letting one feature swamp all others.
"""


def last_interval_log(windows: np.ndarray) -> np.ndarray:
    """``log1p`` of the last interval of each raw window: float64 ``[n, d]``."""
    windows = np.asarray(windows)
    if windows.ndim != 3:
        raise ValueError(f"windows must have shape [n, T+1, d], got {list(windows.shape)}")
    return np.log1p(np.maximum(windows[:, -1, :].astype(np.float64), 0.0))


class _Thresholded:
    """θ from the training scores, shared by the baselines."""

    architecture = "baseline"

    def __init__(self, k: float = 3.0, quantile: float | None = None):
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        if quantile is not None and not 0 < quantile < 1:
            raise ValueError(f"quantile must be between 0 and 1, got {quantile}")
        self.k = float(k)
        self.quantile = quantile
        self.threshold: float | None = None
        self.error_mean: float | None = None
        self.error_std: float | None = None
        self.train_windows = 0

    def _calibrate(self, train_scores: np.ndarray) -> None:
        self.train_windows = int(train_scores.size)
        self.error_mean = float(np.mean(train_scores))
        self.error_std = float(np.std(train_scores))
        if self.quantile is None:
            self.threshold = self.error_mean + self.k * self.error_std
        else:
            self.threshold = float(np.quantile(train_scores, self.quantile))

    @property
    def threshold_method(self) -> str:
        return "mean+k*std" if self.quantile is None else f"quantile:{self.quantile:g}"

    def _require_fit(self) -> None:
        if self.threshold is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted")

    def describe(self) -> dict:
        self._require_fit()
        return {
            "name": self.name,
            "architecture": self.architecture,
            "threshold_method": self.threshold_method,
            "k": self.k,
            "train_windows": self.train_windows,
        }


class ZScoreBaseline(_Thresholded):
    """Per-feature z-scores of the last interval (log1p space) against training."""

    architecture = "zscore"

    def __init__(self, reduce: str = "max", k: float = 3.0, quantile: float | None = None):
        super().__init__(k, quantile)
        if reduce not in ("max", "l2"):
            raise ValueError(f"reduce must be 'max' or 'l2', got {reduce!r}")
        self.reduce = reduce
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    @property
    def name(self) -> str:
        return f"zscore-{self.reduce}"

    def fit(self, windows: np.ndarray) -> ZScoreBaseline:
        """Learn per-feature mean/σ and θ from normal training windows."""
        x = last_interval_log(windows)
        if x.shape[0] < 2:
            raise ValueError(f"need at least 2 training windows, got {x.shape[0]}")
        self.mean = x.mean(axis=0)
        self.std = np.maximum(x.std(axis=0), STD_FLOOR)
        self._calibrate(self._reduce(x))
        return self

    def z(self, windows: np.ndarray) -> np.ndarray:
        """Per-feature z-scores ``[n, d]`` of the last interval (explains a score)."""
        if self.mean is None:
            raise RuntimeError("ZScoreBaseline is not fitted")
        return (last_interval_log(windows) - self.mean) / self.std

    def score(self, windows: np.ndarray) -> np.ndarray:
        """Anomaly score ``[n]`` of raw windows ``[n, T+1, d]``."""
        self._require_fit()
        return self._reduce(last_interval_log(windows))

    def _reduce(self, x: np.ndarray) -> np.ndarray:
        z = np.abs((x - self.mean) / self.std)
        return z.max(axis=1) if self.reduce == "max" else np.sqrt(np.sum(z * z, axis=1))

    def describe(self) -> dict:
        out = super().describe()
        out.update(reduce=self.reduce, std_floor=STD_FLOOR)
        return out

    # JSON, not pickle: the parameters are two vectors and four numbers.
    def save(self, path: str | Path) -> None:
        self._require_fit()
        data = {
            "kind": "seqwatch.baseline.zscore",
            "feature_names": list(FEATURE_NAMES),
            "reduce": self.reduce,
            "k": self.k,
            "quantile": self.quantile,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "threshold": self.threshold,
            "error_mean": self.error_mean,
            "error_std": self.error_std,
            "train_windows": self.train_windows,
        }
        Path(path).write_text(json.dumps(data, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> ZScoreBaseline:
        data = json.loads(Path(path).read_text())
        if data.get("kind") != "seqwatch.baseline.zscore":
            raise ValueError(f"{path}: not a seqwatch z-score baseline file")
        if data["feature_names"] != list(FEATURE_NAMES):
            raise ValueError(f"{path}: feature names do not match this seqwatch's schema")
        model = cls(reduce=data["reduce"], k=data["k"], quantile=data["quantile"])
        model.mean = np.asarray(data["mean"], dtype=np.float64)
        model.std = np.asarray(data["std"], dtype=np.float64)
        model.threshold = float(data["threshold"])
        model.error_mean = float(data["error_mean"])
        model.error_std = float(data["error_std"])
        model.train_windows = int(data["train_windows"])
        return model


class IsolationForestBaseline(_Thresholded):
    """scikit-learn's isolation forest on the last interval's log1p features."""

    architecture = "iforest"
    name = "iforest"

    def __init__(
        self,
        n_estimators: int = 200,
        seed: int = 0,
        k: float = 3.0,
        quantile: float | None = None,
    ):
        super().__init__(k, quantile)
        self.n_estimators = n_estimators
        self.seed = seed
        self.forest = None

    def fit(self, windows: np.ndarray) -> IsolationForestBaseline:
        from sklearn.ensemble import IsolationForest  # only this baseline needs sklearn

        x = last_interval_log(windows)
        if x.shape[0] < 2:
            raise ValueError(f"need at least 2 training windows, got {x.shape[0]}")
        self.forest = IsolationForest(n_estimators=self.n_estimators, random_state=self.seed)
        self.forest.fit(x)
        self._calibrate(self._score_log(x))
        return self

    def score(self, windows: np.ndarray) -> np.ndarray:
        self._require_fit()
        return self._score_log(last_interval_log(windows))

    def _score_log(self, x: np.ndarray) -> np.ndarray:
        # score_samples is higher for normal points; negate so that larger = more anomalous.
        return -self.forest.score_samples(x)

    def describe(self) -> dict:
        out = super().describe()
        out.update(n_estimators=self.n_estimators, seed=self.seed)
        return out


BASELINES = ("zscore", "zscore-l2", "iforest")


def make_baseline(
    kind: str, *, k: float = 3.0, quantile: float | None = None, seed: int = 0
) -> ZScoreBaseline | IsolationForestBaseline:
    """A fresh baseline by its CLI name (one of :data:`BASELINES`)."""
    if kind in ("zscore", "zscore-max"):
        return ZScoreBaseline("max", k=k, quantile=quantile)
    if kind == "zscore-l2":
        return ZScoreBaseline("l2", k=k, quantile=quantile)
    if kind == "iforest":
        return IsolationForestBaseline(seed=seed, k=k, quantile=quantile)
    raise ValueError(f"unknown baseline {kind!r}; choose from {', '.join(BASELINES)}")
