"""Detection metrics for windows scored against ground truth (numpy only).

Labels follow :mod:`seqwatch.sidecar.features`: 1 positive, 0 negative, -1 excluded
(Background/Unknown or unlabelled). Excluded windows never count as a positive or a
negative; they only enter "% flagged", which describes what an operator would see.

Ranking metrics treat tied scores as one threshold step, so their value does not depend
on the order in which tied windows happen to be stored (the same convention as
scikit-learn's ``roc_curve``/``average_precision_score``, which the tests compare against).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

POSITIVE = 1
NEGATIVE = 0
EXCLUDED = -1


@dataclass(frozen=True)
class Confusion:
    """Counts of one thresholded detector over the labelled windows."""

    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def positives(self) -> int:
        return self.tp + self.fn

    @property
    def negatives(self) -> int:
        return self.fp + self.tn

    @property
    def tpr(self) -> float:
        """Recall: detected positives / positives (NaN without positives)."""
        return _ratio(self.tp, self.positives)

    @property
    def fpr(self) -> float:
        """Flagged negatives / negatives (NaN without negatives)."""
        return _ratio(self.fp, self.negatives)

    @property
    def precision(self) -> float:
        """Positives among flagged labelled windows (NaN when nothing labelled was flagged)."""
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall, 2TP / (2TP + FP + FN); NaN without positives."""
        if self.positives == 0:
            return float("nan")
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn)

    def as_dict(self) -> dict[str, float | int]:
        out: dict[str, float | int] = asdict(self)
        out.update(tpr=self.tpr, fpr=self.fpr, precision=self.precision, f1=self.f1)
        return out


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


def _check(labels: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    bad = ~np.isin(labels, (POSITIVE, NEGATIVE, EXCLUDED))
    if bad.any():
        raise ValueError(f"labels must be 1, 0 or -1; found {np.unique(labels[bad])[:5]}")
    if scores is not None and np.shape(scores) != labels.shape:
        raise ValueError(f"scores shape {np.shape(scores)} != labels shape {labels.shape}")
    return labels


def confusion(labels: np.ndarray, flagged: np.ndarray) -> Confusion:
    """Confusion counts of boolean ``flagged`` against labels (excluded windows ignored)."""
    labels = _check(labels, flagged)
    flagged = np.asarray(flagged, dtype=bool)
    pos, neg = labels == POSITIVE, labels == NEGATIVE
    return Confusion(
        tp=int(np.sum(flagged & pos)),
        fp=int(np.sum(flagged & neg)),
        tn=int(np.sum(~flagged & neg)),
        fn=int(np.sum(~flagged & pos)),
    )


def threshold_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """The paper's thresholded columns plus precision/F1 for ``score > threshold``.

    ``flagged_pct`` is over *all* scored windows (excluded ones too): it is the share of
    windows an operator would be alerted on.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = _check(labels, scores)
    flagged = scores > threshold
    out = confusion(labels, flagged).as_dict()
    out.update(
        windows=int(scores.size),
        excluded=int(np.sum(labels == EXCLUDED)),
        flagged=int(flagged.sum()),
        flagged_pct=100.0 * float(flagged.mean()) if scores.size else float("nan"),
    )
    return out


def _ranked(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative TP/FP counts at each distinct score, highest score first."""
    labels = _check(labels, scores)
    keep = labels != EXCLUDED
    y = labels[keep] == POSITIVE
    s = np.asarray(scores, dtype=np.float64)[keep]
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    # The last index of each run of equal scores: a tie group is one threshold step.
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), y.size - 1] if y.size else np.array([], int)
    tps = np.cumsum(y)[ends]
    fps = (ends + 1) - tps
    return tps.astype(np.float64), fps.astype(np.float64), s[ends]


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points (fpr, tpr, thresholds), starting at (0, 0) with threshold +inf.

    Raises ValueError when the labelled windows do not contain both classes.
    """
    tps, fps, thresholds = _ranked(labels, scores)
    if tps.size == 0 or tps[-1] == 0 or fps[-1] == 0:
        raise ValueError("ROC needs at least one positive and one negative window")
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return fpr, tpr, np.r_[np.inf, thresholds]


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids, so a tie group counts half)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return roc_area(fpr, tpr)


def roc_area(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """The area under ROC points from :func:`roc_curve` (for callers that have them)."""
    return float(np.trapezoid(tpr, fpr))


def pr_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall points (precision, recall, thresholds), by decreasing threshold.

    Starts at recall 0 with precision 1 (the usual convention) and ends at recall 1.
    """
    tps, fps, thresholds = _ranked(labels, scores)
    if tps.size == 0 or tps[-1] == 0:
        raise ValueError("a precision-recall curve needs at least one positive window")
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return np.r_[1.0, precision], np.r_[0.0, recall], np.r_[np.inf, thresholds]


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """PR-AUC as average precision: sum over thresholds of ΔRecall × Precision.

    A step function without interpolation, which does not overstate the area the way
    trapezoids on a PR curve do.
    """
    precision, recall, _ = pr_curve(labels, scores)
    return precision_area(precision, recall)


def precision_area(precision: np.ndarray, recall: np.ndarray) -> float:
    """Average precision of points from :func:`pr_curve` (for callers that have them)."""
    return float(np.sum(np.diff(recall) * precision[1:]))


def safe(metric, *args) -> float:
    """``metric(*args)``, or NaN when the data cannot define it (e.g. one class only)."""
    try:
        return float(metric(*args))
    except ValueError:
        return float("nan")


def _count_by_group(
    groups: Sequence[str] | np.ndarray, labels: np.ndarray, flagged: np.ndarray, cls: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The groups holding windows of class ``cls``; their windows and flagged ones, each."""
    labels = _check(labels, flagged)
    groups = np.asarray(groups, dtype=object)
    if groups.shape != labels.shape:
        raise ValueError(f"groups shape {groups.shape} != labels shape {labels.shape}")
    chosen = labels == cls
    flagged = np.asarray(flagged, dtype=bool)
    names, inverse = np.unique(groups[chosen].astype(str), return_inverse=True)
    windows = np.bincount(inverse, minlength=len(names))
    hits = np.bincount(inverse, weights=flagged[chosen], minlength=len(names)).astype(int)
    return names, windows, hits


def recall_by_group(
    groups: Sequence[str] | np.ndarray, labels: np.ndarray, flagged: np.ndarray
) -> dict[str, dict[str, float | int]]:
    """Recall of the positive windows of each group (detailed label, source host ...).

    Returns ``{group: {"positives", "detected", "recall"}}`` sorted by positives, largest
    first; groups without positive windows are left out.
    """
    names, positives, detected = _count_by_group(groups, labels, flagged, POSITIVE)
    rows = {
        str(name): {
            "positives": int(p),
            "detected": int(d),
            "recall": float(d / p),
        }
        for name, p, d in zip(names, positives, detected, strict=True)
    }
    return dict(sorted(rows.items(), key=lambda kv: (-kv[1]["positives"], kv[0])))


def flagged_by_group(
    groups: Sequence[str] | np.ndarray, labels: np.ndarray, flagged: np.ndarray
) -> dict[str, dict[str, int]]:
    """False alarms per group: flagged negative windows of each group (negatives only).

    Lets a report say *which* benign hosts raise alarms, not only how many.
    """
    names, negatives, alarms = _count_by_group(groups, labels, flagged, NEGATIVE)
    rows = {
        str(name): {"negatives": int(n), "flagged": int(a)}
        for name, n, a in zip(names, negatives, alarms, strict=True)
        if a > 0
    }
    return dict(sorted(rows.items(), key=lambda kv: (-kv[1]["flagged"], kv[0])))
