"""Detection metrics against hand-computed examples and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest

from seqwatch.training import metrics


def test_threshold_metrics_hand_computed():
    # 4 positives, 5 negatives, 1 excluded; θ = 0.5 flags scores 0.9, 0.8, 0.7, 0.6, 0.55.
    scores = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.1, 0.3, 0.4, 0.55, 0.95])
    labels = np.array([1, 1, 0, 1, 1, 0, 0, 0, 0, -1])
    m = metrics.threshold_metrics(scores, labels, 0.5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (3, 2, 3, 1)
    assert m["tpr"] == pytest.approx(3 / 4)
    assert m["fpr"] == pytest.approx(2 / 5)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx(2 * 0.6 * 0.75 / (0.6 + 0.75))
    # The excluded window is flagged too: 6 of 10 windows raise an alert.
    assert m["flagged"] == 6
    assert m["flagged_pct"] == pytest.approx(60.0)
    assert m["excluded"] == 1


def test_threshold_is_strict():
    m = metrics.threshold_metrics(np.array([1.0, 2.0]), np.array([1, 0]), 1.0)
    assert m["tp"] == 0 and m["fp"] == 1


def test_undefined_ratios_are_nan():
    c = metrics.confusion(np.array([0, 0]), np.array([False, False]))
    assert math.isnan(c.tpr) and math.isnan(c.precision) and math.isnan(c.f1)
    assert c.fpr == 0.0
    # Positives present but none detected: F1 is 0, not undefined.
    c = metrics.confusion(np.array([1, 0]), np.array([False, False]))
    assert c.f1 == 0.0


def test_roc_auc_hand_computed_with_tie():
    # Positives 0.8, 0.5; negatives 0.5, 0.2. Pairs: (0.8>0.5) (0.8>0.2) (0.5=0.5 -> 1/2) (0.5>0.2)
    labels = np.array([1, 1, 0, 0])
    scores = np.array([0.8, 0.5, 0.5, 0.2])
    assert metrics.roc_auc(labels, scores) == pytest.approx(3.5 / 4)
    fpr, tpr, thr = metrics.roc_curve(labels, scores)
    # The tie is one step: from (0, 0.5) straight to (0.5, 1).
    assert fpr.tolist() == [0.0, 0.0, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 1.0, 1.0]
    assert thr[0] == np.inf


def test_average_precision_hand_computed():
    # Ranked: P(0.9) N(0.8) P(0.7) N(0.1): AP = 0.5*1 + 0.5*(2/3).
    labels = np.array([1, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    assert metrics.average_precision(labels, scores) == pytest.approx(0.5 + 1 / 3)


def test_order_of_tied_windows_does_not_matter():
    labels = np.array([1, 0, 1, 0, 0, 1])
    scores = np.array([0.3, 0.3, 0.3, 0.1, 0.9, 0.3])
    perm = np.array([5, 4, 3, 2, 1, 0])
    assert metrics.roc_auc(labels, scores) == metrics.roc_auc(labels[perm], scores[perm])
    assert metrics.average_precision(labels, scores) == pytest.approx(
        metrics.average_precision(labels[perm], scores[perm])
    )


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_sklearn(seed):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    n = 500
    labels = rng.choice([1, 0, -1], size=n, p=[0.2, 0.7, 0.1])
    # Rounded scores produce many ties, the case where implementations differ.
    scores = np.round(rng.normal(size=n) + 1.5 * (labels == 1), 1)
    known = labels != -1
    y, s = labels[known], scores[known]
    assert metrics.roc_auc(labels, scores) == pytest.approx(sklearn_metrics.roc_auc_score(y, s))
    assert metrics.average_precision(labels, scores) == pytest.approx(
        sklearn_metrics.average_precision_score(y, s)
    )
    fpr, tpr, _ = metrics.roc_curve(labels, scores)
    ref_fpr, ref_tpr, _ = sklearn_metrics.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)


def test_roc_needs_both_classes():
    with pytest.raises(ValueError, match="positive and one negative"):
        metrics.roc_auc(np.array([0, 0, -1]), np.array([0.1, 0.2, 0.3]))
    assert math.isnan(metrics.safe(metrics.roc_auc, np.array([1, 1]), np.array([0.1, 0.2])))


def test_rejects_bad_labels_and_shapes():
    with pytest.raises(ValueError, match="1, 0 or -1"):
        metrics.confusion(np.array([2, 0]), np.array([True, False]))
    with pytest.raises(ValueError, match="shape"):
        metrics.threshold_metrics(np.array([0.1]), np.array([1, 0]), 0.5)


def test_recall_by_group():
    groups = np.array(["scan", "scan", "scan", "flood", "", "flood"], dtype=object)
    labels = np.array([1, 1, 1, 1, 0, -1])
    flagged = np.array([True, False, True, False, True, True])
    table = metrics.recall_by_group(groups, labels, flagged)
    assert list(table) == ["scan", "flood"]  # most positives first
    assert table["scan"] == {"positives": 3, "detected": 2, "recall": pytest.approx(2 / 3)}
    # The excluded flood window does not count as a detection.
    assert table["flood"] == {"positives": 1, "detected": 0, "recall": 0.0}


def test_flagged_by_group_lists_false_alarm_hosts():
    hosts = np.array(["a", "a", "b", "b", "c"], dtype=object)
    labels = np.array([0, 0, 0, 1, 0])
    flagged = np.array([True, True, False, True, False])
    table = metrics.flagged_by_group(hosts, labels, flagged)
    assert table == {"a": {"negatives": 2, "flagged": 2}}
