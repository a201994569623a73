"""Figures of an evaluation: error over time with θ and attack spans, ROC and PR curves.

matplotlib with the Agg backend (files only, no display); every function writes one PNG
and returns its path. Inputs are plain arrays so the figures can be redrawn from a saved
evaluation without the models.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from seqwatch.training import metrics

# One colour per detector, stable across figures (tab10 is readable and colour-blind aware).
_COLORS = [f"C{i}" for i in range(10)]


@dataclass
class Curve:
    """One detector's scores on the evaluation windows (what the figures need)."""

    name: str
    scores: np.ndarray
    threshold: float


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def attack_spans(
    times: np.ndarray, labels: np.ndarray, interval: float
) -> list[tuple[float, float]]:
    """Merged ``[start, end)`` spans of the intervals that hold a positive window."""
    starts = np.unique(times[labels == metrics.POSITIVE])
    spans: list[tuple[float, float]] = []
    for t in starts:
        if spans and t <= spans[-1][1] + 1e-9:
            spans[-1] = (spans[-1][0], t + interval)
        else:
            spans.append((float(t), float(t + interval)))
    return spans


def error_over_time(
    path: str | Path,
    curves: Sequence[Curve],
    times: np.ndarray,
    labels: np.ndarray,
    sources: np.ndarray,
    interval: float,
    title: str = "",
) -> Path:
    """A grid of error-vs-time scatter plots: one row per detector, one column per capture.

    Every scored (host, interval) window is a dot: grey negatives, red positives, pale blue
    excluded (Background/Unknown); the dashed line is the detector's θ and the shaded
    spans are intervals holding positive windows. Time is minutes since each capture's
    first window (captures of different days share no clock); the subplot title gives
    its UTC start.
    """
    plt = _pyplot()
    tags = list(dict.fromkeys(sources.tolist()))
    rows, cols = len(curves), len(tags)
    fig, axes = plt.subplots(
        rows, cols, figsize=(6.5 * cols, 2.3 * rows + 0.8), squeeze=False, sharex="col"
    )
    for c, tag in enumerate(tags):
        mine = sources == tag
        t0 = float(times[mine].min())
        minutes = (times[mine] - t0) / 60.0
        lab = labels[mine]
        spans = attack_spans(times[mine], lab, interval)
        # Draw positives last so they stay visible over the many negatives.
        order = np.argsort(lab == metrics.POSITIVE, kind="stable")
        for r, curve in enumerate(curves):
            ax = axes[r, c]
            s = np.maximum(curve.scores[mine], 1e-3)
            for start, end in spans:
                ax.axvspan((start - t0) / 60, (end - t0) / 60, color="#f4c7c3", lw=0, zorder=0)
            colors = np.where(
                lab == metrics.POSITIVE,
                "#d62728",
                np.where(lab == metrics.NEGATIVE, "#7f7f7f", "#9ecae1"),
            )
            ax.scatter(minutes[order], s[order], s=4, c=colors[order], lw=0, zorder=2)
            ax.axhline(curve.threshold, color="k", ls="--", lw=1, zorder=3)
            ax.set_yscale("log")
            ax.set_ylabel(f"{curve.name}\nerror")
            if r == 0:
                start = datetime.fromtimestamp(t0, UTC).strftime("%Y-%m-%d %H:%M UTC")
                ax.set_title(f"{tag} (from {start})", fontsize=10)
            if r == rows - 1:
                ax.set_xlabel("minutes since first window")
    handles = [
        plt.Line2D([], [], ls="", marker="o", color="#d62728", label="attack window"),
        plt.Line2D([], [], ls="", marker="o", color="#7f7f7f", label="benign window"),
        plt.Line2D([], [], ls="", marker="o", color="#9ecae1", label="excluded (Background)"),
        plt.Line2D([], [], ls="--", color="k", label="θ"),
    ]
    # Legend at the bottom, title at the top: neither covers the other or a subplot.
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    title_lines = textwrap.wrap(title, width=60 * cols)
    if title_lines:
        fig.suptitle("\n".join(title_lines), x=0.01, ha="left", fontsize=10)
    height = fig.get_figheight()  # inches: reserve 0.35 in below, 0.2 in per title line above
    fig.tight_layout(rect=(0, 0.35 / height, 1, 1 - (0.15 + 0.2 * len(title_lines)) / height))
    return _save(fig, path)


def roc(path: str | Path, curves: Sequence[Curve], labels: np.ndarray, title: str = "") -> Path:
    """ROC curves of every detector on one plot, each with its operating point at θ."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for i, curve in enumerate(curves):
        color = _COLORS[i % len(_COLORS)]
        try:
            fpr, tpr, _ = metrics.roc_curve(labels, curve.scores)
        except ValueError:
            continue
        auc = metrics.roc_area(fpr, tpr)
        ax.plot(fpr, tpr, color=color, lw=1.4, label=f"{curve.name} (AUC {auc:.3f})")
        point = metrics.confusion(labels, curve.scores > curve.threshold)
        ax.plot(point.fpr, point.tpr, "o", color=color, ms=5)
    ax.plot([0, 1], [0, 1], color="#bbbbbb", lw=0.8, ls=":")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_title(title or "ROC (dots: operating point at θ)", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def precision_recall(
    path: str | Path, curves: Sequence[Curve], labels: np.ndarray, title: str = ""
) -> Path:
    """Precision-recall curves of every detector, with the positive share as chance level."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for i, curve in enumerate(curves):
        color = _COLORS[i % len(_COLORS)]
        try:
            precision, recall, _ = metrics.pr_curve(labels, curve.scores)
        except ValueError:
            continue
        ap = metrics.precision_area(precision, recall)
        ax.step(
            recall,
            precision,
            where="post",
            color=color,
            lw=1.4,
            label=f"{curve.name} (AP {ap:.3f})",
        )
        point = metrics.confusion(labels, curve.scores > curve.threshold)
        if point.tp + point.fp:
            ax.plot(point.tpr, point.precision, "o", color=color, ms=5)
    known = labels != metrics.EXCLUDED
    if known.any():
        ax.axhline(np.mean(labels[known] == metrics.POSITIVE), color="#bbbbbb", lw=0.8, ls=":")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_title(title or "Precision-recall (dots: operating point at θ)", fontsize=10)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def training_history(path: str | Path, histories: dict[str, dict[str, list[float]]]) -> Path:
    """Training and validation loss per epoch of each architecture (standardized MSE)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (name, history) in enumerate(histories.items()):
        color = _COLORS[i % len(_COLORS)]
        epochs = np.arange(1, len(history["train_loss"]) + 1)
        ax.plot(epochs, history["train_loss"], color=color, lw=1.4, label=f"{name} train")
        val = np.asarray(history.get("val_loss", []), dtype=float)
        if val.size and np.isfinite(val).any():
            ax.plot(epochs, val, color=color, lw=1.2, ls="--", label=f"{name} validation")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE (standardized log1p features)")
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("Training loss", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
