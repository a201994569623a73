"""Replay: archives through the live pipeline give the live path's verdicts."""

from __future__ import annotations

import pytest
from onnx_fixture import write_model

from seqwatch.sidecar.cli import main
from seqwatch.sidecar.features import DEFAULT_LATENESS, featurize
from seqwatch.sidecar.modelfile import OnnxModel
from seqwatch.sidecar.notices import read_notices
from seqwatch.sidecar.pipeline import Pipeline, feature_config
from seqwatch.sidecar.policy import PolicyConfig, VerdictPolicy
from seqwatch.sidecar.replay import as_feature_messages, format_verdict, replay_files

T = 4


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    # θ is set so that real lab traffic gives some verdicts, not one per host.
    return write_model(tmp_path_factory.mktemp("r") / "model.onnx", window=T, threshold=6.0)


@pytest.fixture(scope="module")
def model(model_path):
    return OnnxModel.load(model_path)


@pytest.fixture(scope="module")
def conn_log(shared_data):
    return shared_data / "lab2" / "conn.log"


def live_form(model, conn_log, policy=None, hosts_per_message=5):
    """The same intervals as Zeek would send them: FeatureMessage chunks, one by one."""
    from seqwatch.sidecar.archives import read_connections

    pipeline = Pipeline(model, policy)
    intervals = featurize(
        read_connections([conn_log]), feature_config(model.info), DEFAULT_LATENESS
    )
    verdicts = []
    chunks = 0
    for interval in intervals:
        for message in as_feature_messages(interval, hosts_per_message, node="zeek"):
            chunks += 1
            verdicts += pipeline.on_features(message)
    return verdicts + pipeline.flush(), pipeline, chunks


def test_replay_equals_the_live_form_of_the_same_intervals(model, conn_log):
    replayed_pipeline = Pipeline(model)
    replayed = list(replay_files([conn_log], replayed_pipeline))
    live, live_pipeline, chunks = live_form(model, conn_log)
    assert chunks > live_pipeline.stats.intervals  # intervals really came in several chunks
    assert replayed and replayed == live
    assert replayed_pipeline.stats.intervals == live_pipeline.stats.intervals
    assert live_pipeline.stats.incomplete == 0 and live_pipeline.stats.dropped_old == 0
    assert len({v.key for v in replayed}) == len(replayed)


def test_replay_equals_live_with_a_stateful_policy(model, conn_log):
    def policy():
        return VerdictPolicy(PolicyConfig(k=2, n=3, cooldown=2))

    replayed = list(replay_files([conn_log], Pipeline(model, policy())))
    live, _, _ = live_form(model, conn_log, policy(), hosts_per_message=3)
    assert replayed == live
    plain = list(replay_files([conn_log], Pipeline(model)))
    assert len(replayed) < len(plain)


def test_replay_command_prints_and_writes_the_verdicts(
    model, model_path, conn_log, tmp_path, capsys
):
    out = tmp_path / "notice.log"
    assert main(["replay", str(conn_log), "--model", str(model_path), "--out", str(out)]) == 0
    expected = list(replay_files([conn_log], Pipeline(model)))
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [format_verdict(v) for v in expected]
    assert f"replay: {len(expected)} verdicts" in captured.err
    assert list(read_notices(out)) == expected


def test_replay_command_reports_a_missing_model(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SEQWATCH_MODEL", raising=False)
    monkeypatch.setenv("SEQWATCH_CONFIG", str(tmp_path / "none.toml"))
    (tmp_path / "none.toml").write_text("")
    assert main(["replay", str(tmp_path / "conn.log")]) == 1
    assert "no model" in capsys.readouterr().err
