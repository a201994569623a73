"""Scorers: the part of the pipeline that runs the model on ready windows.

A scorer turns raw windows ``float32 [n, T+1, d]`` into ``(error [n], residual [n, d])``.
The pipeline hands it an iterator of batches and consumes the results in order, so a
scorer may keep several batches in flight (:class:`seqwatch.sidecar.workers.WorkerPool`)
while the pipeline gathers the next ones; memory stays bounded by the batches in flight.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol, runtime_checkable

import numpy as np

Scores = tuple[np.ndarray, np.ndarray]
"""``(error float32 [n], residual float32 [n, d])``."""


@runtime_checkable
class Scorer(Protocol):
    """What the pipeline needs from a scorer."""

    def score(self, windows: np.ndarray) -> Scores:
        """Score one batch of windows."""
        ...

    def score_batches(self, batches: Iterable[np.ndarray]) -> Iterator[Scores]:
        """Score many batches; results come back in the order of ``batches``."""
        ...

    def set_model(self, model) -> None:
        """Use ``model`` from the next batch on (hot reload)."""
        ...

    def close(self) -> None:
        """Release processes and sockets (a no-op for in-process scorers)."""
        ...


class LocalScorer:
    """Scores in this process with the model's onnxruntime session.

    ``batch_size`` splits an oversized input so that onnxruntime's working memory stays
    bounded whatever the caller passes.
    """

    def __init__(self, model, batch_size: int = 4096):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.batch_size = batch_size

    def score(self, windows: np.ndarray) -> Scores:
        """Score ``windows`` (any length), splitting into batches of ``batch_size``."""
        windows = np.ascontiguousarray(windows, dtype=np.float32)
        n = windows.shape[0]
        if n <= self.batch_size:
            return self._run(windows)
        parts = [self._run(windows[i : i + self.batch_size]) for i in range(0, n, self.batch_size)]
        return (
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
        )

    def score_batches(self, batches: Iterable[np.ndarray]) -> Iterator[Scores]:
        """Score batches one after the other (nothing to overlap in one process)."""
        for batch in batches:
            yield self.score(batch)

    def set_model(self, model) -> None:
        self.model = model

    def close(self) -> None:
        pass

    def _run(self, windows: np.ndarray) -> Scores:
        if windows.shape[0] == 0:
            d = windows.shape[2] if windows.ndim == 3 else 0
            return np.zeros(0, np.float32), np.zeros((0, d), np.float32)
        error, residual = self.model.score(windows)
        return np.asarray(error, dtype=np.float32), np.asarray(residual, dtype=np.float32)
