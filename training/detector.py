"""SequenceDetector: fit a next-interval predictor on normal windows, calibrate θ, export.

scikit-learn conventions: the constructor only stores configuration, :meth:`fit` learns,
everything learned is an attribute ending in ``_``. The steps follow the paper: windows of
T+1 raw intervals, log1p and standardization fitted on the training part, the model
trained to predict step T+1 from steps 1..T (MSE, Adam, early stopping on a later slice
of time), then θ from the errors on the training windows.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
import warnings
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from torch import nn
from tqdm import tqdm

from seqwatch.sidecar import __version__
from seqwatch.sidecar.modelfile import ModelInfo
from seqwatch.sidecar.schema import (
    DEFAULT_DISTINCT_CAP,
    DEFAULT_INTERVAL,
    FEATURE_NAMES,
    N_FEATURES,
    SCHEMA_ID,
    RemovalDelays,
)

from .export import ScoringGraph, export_model
from .models import ARCHITECTURES, build_model, select_hparams
from .threshold import fit_threshold

MIN_STD = 1e-6
"""Below this standard deviation (log1p units) a feature counts as constant in training."""
EVAL_BATCH = 4096
"""Windows per forward pass when scoring: no gradients, so far larger than training batches."""
INFO_EXTRA_KEYS = frozenset(
    {"interval", "distinct_cap", "removal_delays", "train_span", "train_size", "created"}
)
"""What :meth:`SequenceDetector.export_onnx` takes from the caller: facts about the data
that arrays alone do not carry."""


class SequenceDetector(BaseEstimator):
    """Recurrent next-interval anomaly detector over raw windows ``[n, T+1, 16]``.

    Parameters
    ----------
    architecture: "rnn", "lstm", "gru", "cnn-lstm" or "ensemble".
    window: T, the intervals of context; windows have T+1 intervals.
    hidden_size, num_layers, dropout: recurrent layers (every ensemble member alike).
    conv_channels, kernel_size: the 1-D convolution of "cnn-lstm" (also as an ensemble member).
    ensemble_members: member architectures of "ensemble".
    epochs, batch_size, learning_rate, weight_decay: Adam on the standardized MSE.
    patience: epochs without validation improvement before stopping (None: never stop early);
        the best epoch's weights are restored either way.
    validation_fraction: the latest share of the time span held out for early stopping.
    gradient_clip: max gradient norm per step (None: off); keeps the tanh RNN from diverging.
    k, threshold: θ = μ_E + k·σ_E with threshold="std", or the ``threshold`` quantile of the
        training errors if it is a number in (0, 1).
    seed: seeds python, numpy and torch; fits with equal seeds and data are identical.
    device: torch device for training and scoring ("cpu", "cuda", ...).
    progress: show a tqdm bar over epochs.
    """

    def __init__(
        self,
        architecture: str = "lstm",
        window: int = 16,
        hidden_size: int = 64,
        num_layers: int = 1,
        dropout: float = 0.0,
        conv_channels: int = 32,
        kernel_size: int = 3,
        ensemble_members: Sequence[str] = ("rnn", "lstm", "gru"),
        epochs: int = 30,
        batch_size: int = 256,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        patience: int | None = 5,
        validation_fraction: float = 0.2,
        gradient_clip: float | None = 1.0,
        k: float = 3.0,
        threshold: str | float = "std",
        seed: int = 0,
        device: str = "cpu",
        progress: bool = True,
    ) -> None:
        self.architecture = architecture
        self.window = window
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout
        self.conv_channels = conv_channels
        self.kernel_size = kernel_size
        self.ensemble_members = ensemble_members
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.gradient_clip = gradient_clip
        self.k = k
        self.threshold = threshold
        self.seed = seed
        self.device = device
        self.progress = progress

    # --- configuration -----------------------------------------------------------------

    def model_hparams(self) -> dict[str, Any]:
        """The keyword arguments :func:`~seqwatch.training.models.build_model` gets."""
        hparams = {
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "dropout": self.dropout,
            "conv_channels": self.conv_channels,
            "kernel_size": self.kernel_size,
            "members": list(self.ensemble_members),
        }
        return select_hparams(self.architecture, hparams)

    def _check_params(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture must be one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}"
            )
        for name in ("window", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience < 1):
            raise ValueError(f"patience must be an integer >= 1 or None, got {self.patience!r}")
        if not self.learning_rate > 0 or not self.weight_decay >= 0:
            raise ValueError("learning_rate must be > 0 and weight_decay >= 0")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction must be in [0, 1), got {self.validation_fraction}"
            )
        if self.gradient_clip is not None and not self.gradient_clip > 0:
            raise ValueError(f"gradient_clip must be > 0 or None, got {self.gradient_clip}")
        # fit_threshold validates threshold and k; do it now rather than after training.
        fit_threshold(np.zeros(1), self.threshold, self.k)

    def _check_windows(self, windows: np.ndarray) -> np.ndarray:
        # Writable: torch.from_numpy warns on read-only arrays (e.g. sliding_window_view).
        windows = np.require(windows, dtype=np.float32, requirements="W")
        expected = (self.window + 1, N_FEATURES)
        if windows.ndim != 3 or windows.shape[1:] != expected:
            raise ValueError(
                f"windows must have shape [n, {expected[0]}, {expected[1]}] (T+1 intervals of "
                f"{SCHEMA_ID} features), got {list(windows.shape)}"
            )
        if not np.all(np.isfinite(windows)):
            raise ValueError("windows contain NaN or infinite values")
        return windows

    # --- fitting -------------------------------------------------------------------------

    def fit(self, windows: np.ndarray, times: np.ndarray | None = None) -> SequenceDetector:
        """Learn from raw normal-traffic windows ``[n, T+1, d]``.

        ``times`` holds each window's time (the start of its last interval, epoch s); the
        latest ``validation_fraction`` of the time span becomes the validation set. Without
        ``times`` the array order stands for time.
        """
        self._check_params()
        windows = self._check_windows(windows)
        n = len(windows)
        if times is not None:
            times = np.asarray(times, dtype=np.float64)
            if times.shape != (n,) or not np.all(np.isfinite(times)):
                raise ValueError(f"times must be {n} finite numbers, one per window")
        train_idx, val_idx = self._split(n, times)
        if len(train_idx) < 2:
            raise ValueError(f"need at least 2 training windows, got {len(train_idx)} of {n}")
        self.validation_used_ = len(val_idx) >= 2
        if not self.validation_used_ and self.validation_fraction > 0:
            warnings.warn(
                f"only {len(val_idx)} validation window(s) of {n}: early stopping and the "
                "best-epoch choice use the training loss instead",
                stacklevel=2,
            )
            train_idx = np.sort(np.concatenate([train_idx, val_idx]))
            val_idx = val_idx[:0]

        _seed_everything(self.seed)
        train = torch.from_numpy(windows[train_idx])
        val = torch.from_numpy(windows[val_idx])
        self.mean_, self.scale_ = fit_standardization(windows[train_idx])
        self.n_features_in_ = N_FEATURES
        with _deterministic():
            self.predictor_ = build_model(self.architecture, N_FEATURES, **self.model_hparams())
            self.graph_ = ScoringGraph(self.predictor_, self.mean_, self.scale_).to(self.device)
            self._train(train, val)
            self.graph_.eval()
            self.training_errors_ = self._errors(train)[0]

        found, self.threshold_method_ = fit_threshold(self.training_errors_, self.threshold, self.k)
        self.error_mean_, self.error_std_, self.threshold_ = found
        self.train_span_ = None if times is None else (float(times.min()), float(times.max()))
        self.train_size_ = {
            "windows": n,
            "hosts": None,
            "intervals": None if times is None else int(np.unique(times).size),
            "connections": None,
            "training_windows": len(train_idx),
            "validation_windows": len(val_idx),
        }
        return self

    def _split(self, n: int, times: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Indices of training and validation windows: validation is the latest time."""
        if self.validation_fraction == 0:
            return np.arange(n), np.arange(0)
        if times is None:
            n_val = round(n * self.validation_fraction)
            return np.arange(n - n_val), np.arange(n - n_val, n)
        start, end = float(times.min()), float(times.max())
        cut = end - self.validation_fraction * (end - start)
        late = times > cut
        return np.flatnonzero(~late), np.flatnonzero(late)

    def _train(self, train: torch.Tensor, val: torch.Tensor) -> None:
        graph, device = self.graph_, self.device
        optimizer = torch.optim.Adam(
            self.predictor_.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay
        )
        loss_fn = nn.MSELoss()
        order = torch.Generator().manual_seed(self.seed)
        self.history_: dict[str, list[float]] = {"train_loss": [], "val_loss": [], "seconds": []}
        best_loss, best_state, since_best = math.inf, None, 0
        self.best_epoch_ = 0
        bar = tqdm(
            total=self.epochs, disable=not self.progress, unit="epoch", desc=self.architecture
        )
        with bar:
            for epoch in range(1, self.epochs + 1):
                started = time.perf_counter()
                graph.train()
                total = 0.0
                for batch in torch.randperm(len(train), generator=order).split(self.batch_size):
                    x = graph.standardize(train[batch].to(device))
                    loss = loss_fn(self.predictor_(x[:, :-1]), x[:, -1])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if self.gradient_clip is not None:
                        nn.utils.clip_grad_norm_(self.predictor_.parameters(), self.gradient_clip)
                    optimizer.step()
                    total += loss.item() * len(batch)
                train_loss = total / len(train)
                val_loss = self._errors(val)[1] if self.validation_used_ else math.nan
                self.history_["train_loss"].append(train_loss)
                self.history_["val_loss"].append(val_loss)
                self.history_["seconds"].append(time.perf_counter() - started)
                bar.update(1)
                bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}")

                monitored = val_loss if self.validation_used_ else train_loss
                if monitored < best_loss:
                    best_loss, since_best, self.best_epoch_ = monitored, 0, epoch
                    best_state = copy.deepcopy(self.predictor_.state_dict())
                else:
                    since_best += 1
                    if self.patience is not None and since_best >= self.patience:
                        break
        if best_state is not None:  # None only if every loss was NaN
            self.predictor_.load_state_dict(best_state)
        self.epochs_run_ = len(self.history_["train_loss"])

    def _errors(self, raw: torch.Tensor) -> tuple[np.ndarray, float, np.ndarray]:
        """Errors ``[n]``, the mean squared standardized residual (the MSE) and residuals."""
        errors, residuals = [], []
        self.graph_.eval()
        with torch.no_grad():
            for start in range(0, len(raw), EVAL_BATCH):
                error, residual = self.graph_(raw[start : start + EVAL_BATCH].to(self.device))
                errors.append(error.cpu())
                residuals.append(residual.cpu())
        if not errors:
            empty = np.zeros((0, N_FEATURES), np.float32)
            return np.zeros(0, np.float32), math.nan, empty
        residual = torch.cat(residuals)
        return torch.cat(errors).numpy(), float(residual.pow(2).mean()), residual.numpy()

    # --- using a fitted detector ---------------------------------------------------------

    def score(self, windows: np.ndarray) -> np.ndarray:
        """Error E of each raw window ``[n, T+1, d]`` (torch; the model file gives the same)."""
        check_is_fitted(self, "graph_")
        return self._errors(torch.from_numpy(self._check_windows(windows)))[0]

    def residuals(self, windows: np.ndarray) -> np.ndarray:
        """Standardized residuals ``[n, d]`` of the last step of each raw window."""
        check_is_fitted(self, "graph_")
        return self._errors(torch.from_numpy(self._check_windows(windows)))[2]

    def hyperparameters(self) -> dict[str, Any]:
        """What the model file records: model shape, training settings and their outcome."""
        check_is_fitted(self, "graph_")
        return {
            **self.model_hparams(),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "weight_decay": self.weight_decay,
            "patience": self.patience,
            "validation_fraction": self.validation_fraction,
            "gradient_clip": self.gradient_clip,
            "seed": self.seed,
            "epochs_run": self.epochs_run_,
            "best_epoch": self.best_epoch_,
            "validation_used": self.validation_used_,
        }

    def model_info(self, info_extra: dict[str, Any] | None = None) -> ModelInfo:
        """The model file's metadata (without its model id, which needs the graph).

        ``info_extra`` supplies what the arrays do not tell: ``interval`` (default
        60 s), ``distinct_cap``, ``removal_delays`` (dict or RemovalDelays), ``train_span``,
        ``train_size`` (merged over the counts fit() knows: hosts and connections),
        ``created``.
        """
        check_is_fitted(self, "graph_")
        extra = dict(info_extra or {})
        unknown = set(extra) - INFO_EXTRA_KEYS
        if unknown:
            raise ValueError(
                f"info_extra does not take {', '.join(sorted(unknown))}; "
                f"it takes {', '.join(sorted(INFO_EXTRA_KEYS))}"
            )
        delays = extra.get("removal_delays", RemovalDelays())
        if isinstance(delays, RemovalDelays):
            delays = delays.as_dict()
        return ModelInfo(
            schema=SCHEMA_ID,
            feature_names=FEATURE_NAMES,
            interval=extra.get("interval", DEFAULT_INTERVAL),
            window=self.window,
            distinct_cap=extra.get("distinct_cap", DEFAULT_DISTINCT_CAP),
            removal_delays=delays,
            architecture=self.architecture,
            hyperparameters=self.hyperparameters(),
            error_mean=self.error_mean_,
            error_std=self.error_std_,
            k=self.k,
            threshold=self.threshold_,
            threshold_method=self.threshold_method_,
            train_span=extra.get("train_span", self.train_span_),
            train_size={**self.train_size_, **extra.get("train_size", {})},
            created=extra.get("created", datetime.now(UTC).isoformat(timespec="seconds")),
            seqwatch_version=__version__,
        )

    def export_onnx(self, path: str | Path, info_extra: dict[str, Any] | None = None) -> ModelInfo:
        """Write the model file (see :meth:`model_info` for ``info_extra``); return its info."""
        info = self.model_info(info_extra)
        return export_model(self.predictor_, self.mean_, self.scale_, info, path)


def fit_standardization(windows: np.ndarray, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and scale of log1p(raw) over every interval of ``windows``.

    Accumulated in float64 chunk by chunk, so a large training set needs no log1p copy of
    itself. A feature constant in training (std < :data:`MIN_STD`, e.g. never any ICMP)
    gets scale 1, as scikit-learn's StandardScaler does: its later values then count in
    plain log1p units instead of being blown up by a near-zero divisor.
    """
    d = windows.shape[-1]
    count, mean, m2 = 0, np.zeros(d), np.zeros(d)
    for start in range(0, len(windows), chunk):
        logs = np.log1p(np.maximum(windows[start : start + chunk], 0).astype(np.float64))
        logs = logs.reshape(-1, d)
        # Chan et al.'s pairwise merge of (count, mean, M2): no E[x²]-E[x]² cancellation,
        # which near MIN_STD would decide whether a feature counts as constant.
        n, chunk_mean = len(logs), logs.mean(axis=0)
        delta = chunk_mean - mean
        m2 += np.square(logs - chunk_mean).sum(axis=0) + np.square(delta) * count * n / (count + n)
        mean += delta * n / (count + n)
        count += n
    std = np.sqrt(m2 / count)
    scale = np.where(std < MIN_STD, 1.0, std)
    return mean.astype(np.float32), scale.astype(np.float32)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """torch's deterministic algorithms for the duration of a fit, then the caller's setting."""
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    # warn_only: on GPUs some kernels (e.g. cuDNN RNN backward) have no deterministic
    # variant; better a warning than a fit that refuses to run.
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)
