"""Score labelled windows with model files and baselines; compute the paper's Table 1.

Ground truth (see :mod:`seqwatch.training.dataset`): a window is positive when its host
originated a malicious connection in the window's last interval, negative when it took
part in labelled traffic without originating anything malicious, excluded when all it did
was Background/Unknown. Excluded windows are scored (they count in "% flagged") but are
in neither class; the report says how many there were.

Every detector is judged at its *own* θ (the model file's, or a baseline's from its
training scores), as the sidecar would run it. Scoring model files needs onnxruntime
only (:class:`~seqwatch.sidecar.modelfile.OnnxModel`), not torch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from seqwatch.training import metrics
from seqwatch.training.dataset import WindowSet

log = logging.getLogger(__name__)

SCORE_BATCH = 8192
"""Windows per scoring call; also the progress bar's step."""
TOP_HOSTS = 15
"""Hosts listed per table of recall by host and false alarms by host."""


@runtime_checkable
class Detector(Protocol):
    """What evaluation needs from a detector: scores and the θ they are judged against."""

    name: str
    architecture: str
    threshold: float
    error_mean: float
    """μ of the detector's scores on its training windows."""
    error_std: float
    """σ of the detector's scores on its training windows."""

    def score(self, windows: np.ndarray) -> np.ndarray:
        """Anomaly scores ``[n]`` of raw windows ``[n, T+1, d]`` (higher = more anomalous)."""
        ...

    def describe(self) -> dict:
        """Facts for the report (architecture, hyperparameters, training size ...)."""
        ...


class OnnxDetector:
    """A seqwatch model file as a :class:`Detector` (its ``error`` output is the score)."""

    def __init__(self, path: str | Path, name: str | None = None, threads: int | None = None):
        from seqwatch.sidecar.modelfile import OnnxModel

        self.path = Path(path)
        self.model = OnnxModel.load(self.path, threads=threads)
        info = self.model.info
        self.name = name or self.path.stem
        self.architecture = info.architecture
        self.threshold = info.threshold
        self.error_mean = info.error_mean
        self.error_std = info.error_std

    @property
    def info(self):
        return self.model.info

    def score(self, windows: np.ndarray) -> np.ndarray:
        return self.model.score(windows)[0].astype(np.float64)

    def describe(self) -> dict:
        info = self.model.info
        return {
            "name": self.name,
            "file": str(self.path),
            "model_id": info.model_id,
            "architecture": info.architecture,
            "hyperparameters": info.hyperparameters,
            "threshold_method": info.threshold_method,
            "k": info.k,
            "interval": info.interval,
            "window": info.window,
            "train_size": info.train_size,
            "train_span": info.train_span,
        }


def score_all(detector: Detector, data: WindowSet, progress: bool = True) -> np.ndarray:
    """Scores of every window, in batches, with a progress bar."""
    from tqdm.auto import tqdm

    n = len(data)
    out = np.empty(n, dtype=np.float64)
    with tqdm(
        total=n, desc=f"scoring {detector.name}", unit=" win", disable=not progress, leave=False
    ) as bar:
        for start in range(0, n, SCORE_BATCH):
            stop = min(start + SCORE_BATCH, n)
            out[start:stop] = detector.score(data.windows[start:stop])
            bar.update(stop - start)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{detector.name}: {int(np.sum(~np.isfinite(out)))} non-finite scores")
    return out


def _nan_to_none(value):
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, float | np.floating) and not np.isfinite(value):
        return None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


NO_DETAIL = "(no detailed label)"


def judge(scores: np.ndarray, threshold: float, data: WindowSet) -> dict:
    """All metrics of one detector's ``scores`` on ``data`` at ``threshold``.

    Besides the pooled numbers, each attack kind (detailed label) gets its recall at θ and
    its ROC-AUC against all negative windows, and ``recall_macro`` averages recall over
    kinds: a flood of spoofed sources can contribute thousands of positive windows and
    would otherwise decide every pooled number on its own.
    """
    labels = data.labels
    flagged = scores > threshold
    out = metrics.threshold_metrics(scores, labels, threshold)
    pos, neg = labels == metrics.POSITIVE, labels == metrics.NEGATIVE
    kinds = np.where(data.detailed == "", NO_DETAIL, data.detailed).astype(object)
    by_label = metrics.recall_by_group(kinds, labels, flagged)
    for kind, row in by_label.items():
        # This kind's positives against every negative window, the rest left out.
        subset = neg | (pos & (kinds == kind))
        row["roc_auc"] = metrics.safe(metrics.roc_auc, labels[subset], scores[subset])
    out.update(
        mean_error=float(scores.mean()) if scores.size else float("nan"),
        std_error=float(scores.std()) if scores.size else float("nan"),
        mean_error_negative=float(scores[neg].mean()) if neg.any() else float("nan"),
        mean_error_positive=float(scores[pos].mean()) if pos.any() else float("nan"),
        # Victims of an attack are negatives (they originated nothing malicious); how many
        # false alarms fall on them tells "flags the target" apart from "flags noise".
        fp_attacked=int(np.sum(flagged & neg & data.attacked)),
        roc_auc=metrics.safe(metrics.roc_auc, labels, scores),
        pr_auc=metrics.safe(metrics.average_precision, labels, scores),
        recall_macro=float(np.mean([r["recall"] for r in by_label.values()]))
        if by_label
        else float("nan"),
        kinds_detected=sum(1 for r in by_label.values() if r["detected"] > 0),
        kinds=len(by_label),
        recall_by_label=by_label,
        recall_by_host=_top_hosts(metrics.recall_by_group(data.hosts, labels, flagged)),
        false_alarms_by_host=dict(
            list(metrics.flagged_by_group(data.hosts, labels, flagged).items())[:TOP_HOSTS]
        ),
    )
    return out


def _top_hosts(table: dict, n: int = TOP_HOSTS) -> dict:
    """The hosts with most positive windows; the rest folded into one "other hosts" row.

    Spoofed-source floods and Internet scanners bring thousands of hosts with one positive
    window each; listed one by one they would bury the attackers a reader looks for.
    """
    items = list(table.items())
    kept = [(h, r) for h, r in items[:n] if r["positives"] > 1 or len(items) <= n]
    rest = items[len(kept) :]
    out = dict(kept)
    if rest:
        positives = sum(r["positives"] for _, r in rest)
        detected = sum(r["detected"] for _, r in rest)
        out[f"({len(rest)} other hosts)"] = {
            "positives": positives,
            "detected": detected,
            "recall": detected / positives,
        }
    return out


def evaluate(
    detectors: Sequence[Detector], data: WindowSet, progress: bool = True
) -> tuple[dict, dict[str, np.ndarray]]:
    """Score ``data`` with every detector; return (results, scores by detector name).

    ``results`` is JSON-ready: the data's counts and split, and per detector its
    calibration (μ_E, σ_E, θ), overall metrics and metrics per capture.
    """
    from seqwatch.training.dataset import describe_split

    if not len(data):
        raise ValueError("no windows to evaluate")
    counts = data.counts()
    log.info(
        "evaluating on %d windows: %d positive, %d negative, %d excluded (Background/Unknown)",
        counts["windows"],
        counts["positive"],
        counts["negative"],
        counts["excluded"],
    )
    results: dict = {
        "data": {
            "interval": data.interval,
            "window": data.window,
            "distinct_cap": data.config.distinct_cap,
            "counts": counts,
            "sources": describe_split(data),
            "inputs": {tag: _jsonable_stats(s) for tag, s in data.stats.items()},
        },
        "detectors": [],
    }
    all_scores: dict[str, np.ndarray] = {}
    tags = np.unique(data.sources)
    for detector in detectors:
        started = time.perf_counter()
        scores = score_all(detector, data, progress)
        seconds = time.perf_counter() - started
        overall = judge(scores, detector.threshold, data)
        entry = detector.describe() | {
            "name": detector.name,
            "threshold": detector.threshold,
            "error_mean": detector.error_mean,
            "error_std": detector.error_std,
            "scoring_seconds": seconds,
            "metrics": overall,
            "per_source": {},
        }
        if len(tags) > 1:
            for tag in tags:
                mine = data.sources == tag
                entry["per_source"][str(tag)] = judge(
                    scores[mine], detector.threshold, data.select(mine)
                )
        results["detectors"].append(_nan_to_none(entry))
        all_scores[detector.name] = scores
        log.info(
            "%s: θ=%.4g flagged %.2f%% TPR %.3f FPR %.4f ROC-AUC %s",
            detector.name,
            detector.threshold,
            overall["flagged_pct"],
            overall["tpr"],
            overall["fpr"],
            f"{overall['roc_auc']:.3f}" if np.isfinite(overall["roc_auc"]) else "n/a",
        )
    return _nan_to_none(results), all_scores


def _jsonable_stats(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if isinstance(v, int | float | str | bool | type(None))}
