"""Evaluation end to end: a small real model file and a baseline on lab2, time-split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from seqwatch.sidecar.schema import FeatureConfig
from seqwatch.training import dataset, metrics
from seqwatch.training.baseline import ZScoreBaseline
from seqwatch.training.evaluate import Detector, OnnxDetector, evaluate
from seqwatch.training.report import write as write_outputs

pytestmark = pytest.mark.slow

T = 4
INTERVAL = 10.0
SPLIT = "+540"


@pytest.fixture(scope="module")
def lab2(shared_data: Path) -> dataset.WindowSet:
    return dataset.build(
        [shared_data / "lab2" / "conn.log"],
        config=FeatureConfig(INTERVAL),
        window=T,
        label_files=[shared_data / "lab2" / "attack_uids.tsv"],
        progress=False,
    )


@pytest.fixture(scope="module")
def trained(lab2, tmp_path_factory):
    """A tiny GRU fitted on lab2's benign windows before the split, and its file."""
    from seqwatch.training.detector import SequenceDetector

    train = lab2.select(dataset.time_mask(lab2, until=SPLIT) & lab2.normal_mask(True))
    model = SequenceDetector(
        architecture="gru", window=T, hidden_size=8, epochs=3, batch_size=64, progress=False
    ).fit(train.windows, train.times)
    path = tmp_path_factory.mktemp("models") / "gru.onnx"
    model.export_onnx(path, {"interval": INTERVAL})
    return model, path, train


@pytest.fixture(scope="module")
def test_set(lab2):
    return lab2.select(dataset.time_mask(lab2, since=SPLIT))


def test_onnx_detector_scores_like_the_trained_model(trained, test_set):
    model, path, _ = trained
    detector = OnnxDetector(path)
    assert isinstance(detector, Detector)
    assert detector.threshold == pytest.approx(model.threshold_)
    sample = test_set.windows[:500]
    np.testing.assert_allclose(detector.score(sample), model.score(sample), rtol=1e-4, atol=1e-4)


def test_results_match_the_scores(trained, test_set):
    _, path, train = trained
    baseline = ZScoreBaseline().fit(train.windows)
    results, scores = evaluate([OnnxDetector(path), baseline], test_set, progress=False)
    assert [d["name"] for d in results["detectors"]] == ["gru", "zscore-max"]
    counts = results["data"]["counts"]
    assert counts["positive"] == int(np.sum(test_set.labels == 1))
    assert counts["excluded"] == 0
    for entry in results["detectors"]:
        s = scores[entry["name"]]
        m = entry["metrics"]
        flagged = s > entry["threshold"]
        pos, neg = test_set.labels == 1, test_set.labels == 0
        assert m["tp"] == int(np.sum(flagged & pos)) and m["fp"] == int(np.sum(flagged & neg))
        assert m["flagged_pct"] == pytest.approx(100 * flagged.mean())
        assert m["roc_auc"] == pytest.approx(metrics.roc_auc(test_set.labels, s))
        assert m["pr_auc"] == pytest.approx(metrics.average_precision(test_set.labels, s))
        kinds = set(test_set.detailed[pos])
        assert set(m["recall_by_label"]) == kinds
        assert m["kinds"] == len(kinds)
        recalls = [r["recall"] for r in m["recall_by_label"].values()]
        assert m["recall_macro"] == pytest.approx(np.mean(recalls))
        # The 8000 spoofed flood sources are folded into one row, not listed one by one.
        assert len(m["recall_by_host"]) <= 16
        assert sum(r["positives"] for r in m["recall_by_host"].values()) == m["tp"] + m["fn"]
        assert m["fp_attacked"] <= m["fp"]


def test_written_outputs(trained, test_set, tmp_path):
    _, path, _ = trained
    results, scores = evaluate([OnnxDetector(path)], test_set, progress=False)
    written = write_outputs(tmp_path, results, scores, test_set, title="lab2 test")
    names = {p.name for p in written}
    assert names == {"results.json", "table.md", "error_over_time.png", "roc.png", "pr.png"}
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["detectors"][0]["metrics"]["tp"] == results["detectors"][0]["metrics"]["tp"]
    table = (tmp_path / "table.md").read_text()
    assert "| detector | μ_E | σ_E | θ |" in table and "| gru |" in table
    assert "syn_flood_spoofed" in table  # recall per detailed label
    for png in ("error_over_time.png", "roc.png", "pr.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_command_end_to_end(trained, shared_data, tmp_path, capsys):
    from seqwatch.sidecar.cli import main

    _, path, _ = trained
    conn = str(shared_data / "lab2" / "conn.log")
    labels = str(shared_data / "lab2" / "attack_uids.tsv")
    code = main(
        [
            "evaluate", str(path), conn,
            "--labels", labels,
            "--since", SPLIT,
            "--baseline", "zscore", "--baseline", "iforest",
            "--baseline-train", conn,
            "--baseline-until", SPLIT,
            "--exclude-attacked",
            "--out", str(tmp_path),
            "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [d["name"] for d in results["detectors"]] == ["gru", "zscore-max", "iforest"]
    assert results["split"]["test"]["since"] == SPLIT
    assert results["data"]["window"] == T and results["data"]["interval"] == INTERVAL
    assert "| gru |" in capsys.readouterr().out


def test_evaluate_command_errors(trained, shared_data, capsys):
    from seqwatch.sidecar.cli import main

    _, path, _ = trained
    assert main(["evaluate", str(path)]) == 1
    assert "no data to evaluate" in capsys.readouterr().err
    conn = str(shared_data / "lab2" / "conn.log")
    assert main(["evaluate", str(path), conn, "--baseline", "zscore"]) == 1
    assert "--baseline-train" in capsys.readouterr().err
    assert main(["evaluate", str(path), "/nonexistent/conn.log"]) == 1
    assert "no such file" in capsys.readouterr().err
