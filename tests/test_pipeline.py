"""The no-I/O pipeline core: chunk assembly, order, validation, scoring, swaps, metrics."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
from onnx_fixture import reference_score, write_model

from seqwatch.sidecar.features import IntervalFeatures
from seqwatch.sidecar.metrics import Metrics
from seqwatch.sidecar.modelfile import OnnxModel
from seqwatch.sidecar.pipeline import ModelMismatch, Pipeline
from seqwatch.sidecar.policy import PolicyConfig, VerdictPolicy
from seqwatch.sidecar.replay import as_feature_messages
from seqwatch.sidecar.schema import FEATURE_INDEX, FEATURE_NAMES, N_FEATURES, SCHEMA_ID

DELTA = 60.0
T = 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def model(model_dir):
    return OnnxModel.load(write_model(model_dir / "m.onnx", window=T, threshold=1.0))


def interval(bin_: int, hosts: list[str], values) -> IntervalFeatures:
    return IntervalFeatures(
        bin=bin_,
        interval=DELTA,
        hosts=list(hosts),
        values=np.asarray(values, dtype=np.float64).reshape(len(hosts), N_FEATURES),
    )


def traffic(n_bins: int, n_hosts: int, seed: int = 0) -> list[IntervalFeatures]:
    """Noisy steady traffic with a few bursts, every host active every interval."""
    rng = np.random.default_rng(seed)
    hosts = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(n_hosts)]
    out = []
    for b in range(n_bins):
        values = rng.poisson(20, size=(n_hosts, N_FEATURES)).astype(np.float64)
        if b % 3 == 2:
            values[b % n_hosts, FEATURE_INDEX["out_hosts"]] = 5000.0
        out.append(interval(1000 + b, hosts, values))
    return out


def feed_all(pipeline: Pipeline, messages) -> list:
    verdicts = []
    for message in messages:
        verdicts += pipeline.on_features(message)
    return verdicts + pipeline.flush()


def test_whole_intervals_and_chunks_give_the_same_verdicts(model):
    intervals = traffic(12, 7)
    whole = feed_all(Pipeline(model), intervals)
    chunked = feed_all(Pipeline(model), [m for iv in intervals for m in as_feature_messages(iv, 3)])
    assert whole and whole == chunked


def test_an_interval_is_scored_when_its_last_chunk_arrives_in_any_order(model):
    pipeline = Pipeline(model)
    iv = interval(7, ["10.0.0.1", "10.0.0.2", "10.0.0.3"], np.full((3, N_FEATURES), 9.0))
    parts = as_feature_messages(iv, 1)
    assert [len(pipeline.on_features(m)) for m in (parts[2], parts[0])] == [0, 0]
    verdicts = pipeline.on_features(parts[1])
    # Zero history then a jump: every host exceeds θ, in arrival order of the chunks.
    assert [v.host for v in verdicts] == ["10.0.0.3", "10.0.0.1", "10.0.0.2"]
    assert pipeline.stats.intervals == 1 and pipeline.stats.incomplete == 0


def test_a_later_interval_completes_an_incomplete_one(model):
    pipeline = Pipeline(model)
    parts = as_feature_messages(interval(5, ["10.0.0.1", "10.0.0.2"], np.ones((2, 16))), 1)
    assert pipeline.on_features(parts[0]) == []
    # Chunk 1 of interval 5 never comes; interval 6 begins.
    later = as_feature_messages(interval(6, ["10.0.0.9"], np.ones((1, 16))), 1)
    verdicts = pipeline.on_features(later[0])
    assert [v.host for v in verdicts] == ["10.0.0.1", "10.0.0.9"]
    assert [v.start for v in verdicts] == [5 * DELTA, 6 * DELTA]
    assert pipeline.stats.incomplete == 1
    # The missing chunk arriving now is too old.
    assert pipeline.on_features(parts[1]) == []
    assert pipeline.stats.dropped_old == 1


def test_flush_scores_the_open_interval_and_counts_it_incomplete(model):
    pipeline = Pipeline(model)
    parts = as_feature_messages(interval(5, ["10.0.0.1", "10.0.0.2"], np.ones((2, 16))), 1)
    pipeline.on_features(parts[0])
    assert [v.host for v in pipeline.flush()] == ["10.0.0.1"]
    assert pipeline.stats.incomplete == 1
    assert pipeline.flush() == []


def test_old_and_already_scored_intervals_are_dropped(model):
    pipeline = Pipeline(model)
    ones = np.ones((1, 16))
    pipeline.on_features(interval(10, ["10.0.0.1"], ones))
    assert pipeline.on_features(interval(9, ["10.0.0.1"], ones)) == []
    assert pipeline.on_features(interval(10, ["10.0.0.2"], ones)) == []
    assert pipeline.stats.dropped_old == 2
    assert pipeline.stats.intervals == 1
    assert pipeline.on_features(interval(11, ["10.0.0.1"], ones)) != []


def test_multiple_nodes_each_complete_their_own_chunks(model):
    pipeline = Pipeline(model)
    a = as_feature_messages(interval(3, ["10.0.0.1", "10.0.0.2"], np.ones((2, 16))), 1, "w1")
    b = as_feature_messages(interval(3, ["10.0.1.1"], np.ones((1, 16))), 1, "w2")
    assert pipeline.on_features(a[0]) == []
    assert pipeline.on_features(a[1]) != []  # only w1 announced so far: complete
    assert pipeline.on_features(b[0]) == []  # interval 3 was already scored
    assert pipeline.stats.dropped_old == 1


def _message(**changes):
    base = dict(
        node="zeek",
        start=120.0,
        width=DELTA,
        schema=SCHEMA_ID,
        chunk=0,
        chunks=1,
        late=0,
        overflow=0,
        hosts=("10.0.0.1",),
        values=np.ones((1, N_FEATURES)),
    )
    base.update(changes)
    # FeatureMessage itself refuses some of these; the pipeline must too, whatever the source.
    return SimpleNamespace(**base)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"schema": "seqwatch.features.v2"}, "schema"),
        ({"width": 10.0}, "interval"),
        ({"start": 130.0}, "misaligned"),
        ({"values": np.ones((1, 15))}, "shape"),
        ({"hosts": ("10.0.0.1", "10.0.0.2")}, "shape"),
        ({"values": -np.ones((1, N_FEATURES))}, "values"),
        ({"values": np.full((1, N_FEATURES), np.nan)}, "values"),
        ({"chunk": 1, "chunks": 1}, "chunk"),
    ],
)
def test_messages_that_do_not_fit_the_model_are_refused_and_counted(model, changes, reason):
    pipeline = Pipeline(model)
    assert pipeline.on_features(_message(**changes)) == []
    assert pipeline.stats.rejected[reason] == 1
    assert sum(pipeline.stats.rejected.values()) == 1
    assert pipeline.hosts_tracked == 0
    # The refusal leaves the pipeline working.
    assert pipeline.on_features(_message()) != []


def test_refusals_warn_once_per_reason_then_log_at_debug(model, caplog):
    pipeline = Pipeline(model)
    with caplog.at_level(logging.DEBUG, logger="seqwatch.sidecar.pipeline"):
        for _ in range(3):
            pipeline.on_features(_message(width=30.0))
    levels = [r.levelno for r in caplog.records if "refused" in r.message]
    assert levels == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert "width 30 s, model expects Δ=60 s" in caplog.records[0].message
    assert pipeline.stats.rejected["interval"] == 3


def test_duplicate_chunks_are_refused(model):
    pipeline = Pipeline(model)
    parts = as_feature_messages(interval(5, ["10.0.0.1", "10.0.0.2"], np.ones((2, 16))), 1)
    pipeline.on_features(parts[0])
    pipeline.on_features(parts[0])
    assert pipeline.stats.rejected["duplicate_chunk"] == 1
    assert len(pipeline.on_features(parts[1])) == 2


def test_verdicts_carry_error_threshold_model_and_signed_top_features(model):
    pipeline = Pipeline(model)
    host = "2001:db8::7"
    steady = np.full((1, N_FEATURES), 50.0)
    for b in range(T):
        pipeline.on_features(interval(b, [host], steady))
    jump = steady.copy()
    jump[0, FEATURE_INDEX["out_failed"]] = 5000.0  # large rise
    jump[0, FEATURE_INDEX["in_bytes"]] = 0.0  # large drop
    jump[0, FEATURE_INDEX["out_ports"]] = 400.0  # smaller rise
    (verdict,) = pipeline.on_features(interval(T, [host], jump))
    window = np.concatenate([np.repeat(steady, T, axis=0), jump])[None]
    error, residual = reference_score(window)
    assert verdict.host == host
    assert verdict.start == T * DELTA and verdict.width == DELTA
    assert verdict.error == pytest.approx(error[0], rel=1e-5)
    assert verdict.threshold == 1.0
    assert verdict.model_id == model.info.model_id
    assert verdict.top_features == ("out_failed", "in_bytes", "out_ports")
    expected = [residual[0, FEATURE_INDEX[n]] for n in verdict.top_features]
    assert verdict.top_residuals == pytest.approx(expected, rel=1e-5)
    assert verdict.top_residuals[1] < 0 < verdict.top_residuals[0]


def test_a_steady_host_gets_no_verdict_once_its_history_is_full(model):
    pipeline = Pipeline(model)
    steady = np.full((1, N_FEATURES), 50.0)
    verdicts = [pipeline.on_features(interval(b, ["10.0.0.1"], steady)) for b in range(T + 3)]
    # Windows still holding zero history differ from the present; full ones do not.
    assert all(verdicts[b] for b in range(T))
    assert not any(verdicts[b] for b in range(T, T + 3))


def test_threshold_override_and_warmup(model):
    intervals = traffic(10, 5)
    plain = feed_all(Pipeline(model), intervals)
    high = VerdictPolicy(PolicyConfig(threshold=1e9))
    assert feed_all(Pipeline(model, high), intervals) == []
    warm = Pipeline(model, warmup=3)
    warm_verdicts = feed_all(warm, intervals)
    assert warm.stats.warmup_intervals == 3
    assert warm_verdicts == [v for v in plain if v.start >= intervals[3].start]


def test_batching_does_not_change_verdicts(model):
    intervals = traffic(8, 11)
    assert feed_all(Pipeline(model, batch_size=4096), intervals) == feed_all(
        Pipeline(model, batch_size=3), intervals
    )


def test_idle_hosts_expire_and_a_host_flood_evicts(model):
    pipeline = Pipeline(model, max_hosts=4)
    ones = np.ones((1, 16))
    pipeline.on_features(interval(0, ["10.0.0.1"], ones))
    pipeline.on_features(interval(T + 2, ["10.0.0.2"], ones))
    assert pipeline.stats.expired == 1 and pipeline.hosts_tracked == 1
    flood = [f"192.0.2.{i}" for i in range(1, 4)]
    pipeline.on_features(interval(T + 3, flood, np.ones((3, 16))))
    pipeline.on_features(interval(T + 4, ["198.51.100.1"], ones))
    assert pipeline.stats.evictions == 1
    assert pipeline.hosts_tracked == 4
    too_many = [f"203.0.113.{i}" for i in range(1, 6)]
    assert pipeline.on_features(interval(T + 5, too_many, np.ones((5, 16)))) == []
    assert pipeline.stats.rejected["too_many_hosts"] == 1


def test_late_and_overflow_counts_are_summed(model):
    pipeline = Pipeline(model)
    iv = interval(5, ["10.0.0.1", "10.0.0.2"], np.ones((2, 16)))
    iv.late, iv.overflow = 3, 1
    for m in as_feature_messages(iv, 1):
        pipeline.on_features(m)
    assert pipeline.stats.late_connections == 6  # repeated in both chunks, as Zeek sends
    assert pipeline.stats.overflow == 2


def test_swap_with_the_same_shape_keeps_the_windows(model, model_dir):
    other = OnnxModel.load(write_model(model_dir / "same.onnx", window=T, threshold=2.0))
    pipeline = Pipeline(model)
    steady = np.full((1, N_FEATURES), 50.0)
    for b in range(T + 1):
        pipeline.on_features(interval(b, ["10.0.0.1"], steady))
    assert pipeline.swap_model(other) == []
    assert pipeline.threshold == 2.0
    jump = steady.copy()
    jump[0, 0] = 1e5
    (verdict,) = pipeline.on_features(interval(T + 1, ["10.0.0.1"], jump))
    assert verdict.model_id == other.info.model_id
    # History carried over: the window is T steady steps and the jump, nothing else.
    window = np.concatenate([np.repeat(steady, T, axis=0), jump])[None]
    assert verdict.error == pytest.approx(reference_score(window)[0][0], rel=1e-5)
    assert pipeline.stats.window_resets == 0 and pipeline.stats.model_swaps == 1


def test_swap_with_another_window_length_resets_after_scoring_the_open_interval(model, model_dir):
    longer = OnnxModel.load(write_model(model_dir / "t6.onnx", window=6, threshold=1.0))
    pipeline = Pipeline(model, warmup=0)
    parts = as_feature_messages(interval(5, ["10.0.0.1", "10.0.0.2"], np.ones((2, 16))), 1)
    pipeline.on_features(parts[0])
    flushed = pipeline.swap_model(longer)
    assert [(v.host, v.model_id) for v in flushed] == [("10.0.0.1", model.info.model_id)]
    assert pipeline.stats.window_resets == 1 and pipeline.hosts_tracked == 0
    (verdict,) = pipeline.on_features(interval(6, ["10.0.0.1"], np.ones((1, 16))))
    assert verdict.model_id == longer.info.model_id


def test_swap_to_another_interval_width_is_refused(model, model_dir):
    other = OnnxModel.load(write_model(model_dir / "d10.onnx", window=T, interval=10.0))
    pipeline = Pipeline(model)
    with pytest.raises(ModelMismatch, match="Δ 10 s != 60 s"):
        pipeline.swap_model(other)
    with pytest.raises(ModelMismatch):
        pipeline.request_swap(other)
    assert pipeline.model is model


def test_request_swap_takes_effect_at_the_next_message(model, model_dir):
    other = OnnxModel.load(write_model(model_dir / "next.onnx", window=T, threshold=0.5))
    pipeline = Pipeline(model)
    pipeline.request_swap(other)
    assert pipeline.model is model
    (verdict,) = pipeline.on_features(interval(1, ["10.0.0.1"], np.ones((1, 16))))
    assert verdict.model_id == other.info.model_id and verdict.threshold == 0.5


def test_metrics_read_the_pipeline_at_scrape_time(model):
    pipeline = Pipeline(model)
    metrics = Metrics().bind(pipeline)
    other = Metrics()  # a second registry must not clash with the first
    pipeline.scorer = metrics.timed(pipeline.scorer)
    feed_all(pipeline, traffic(3, 4))
    pipeline.on_features(_message(width=1.0))
    text = metrics.render().decode()
    assert "seqwatch_intervals_scored_total 3.0" in text
    assert "seqwatch_host_intervals_scored_total 12.0" in text
    assert 'seqwatch_messages_rejected_total{reason="interval"} 1.0' in text
    assert 'seqwatch_messages_rejected_total{reason="schema"} 0.0' in text
    assert "seqwatch_hosts_tracked 4.0" in text
    assert f'model_id="{model.info.model_id}"' in text
    assert "seqwatch_scoring_seconds_count 3.0" in text
    assert "seqwatch_intervals_scored_total" not in other.render().decode()


def test_feature_names_in_verdicts_are_schema_names(model):
    verdicts = feed_all(Pipeline(model), traffic(4, 3))
    assert verdicts
    assert all(set(v.top_features) <= set(FEATURE_NAMES) for v in verdicts)
    assert all(len(v.top_features) == 3 for v in verdicts)


def test_metrics_are_served_over_http(model):
    import urllib.request

    pipeline = Pipeline(model)
    feed_all(pipeline, traffic(2, 2))
    metrics = Metrics().bind(pipeline)
    port = metrics.serve("127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
    finally:
        metrics.close()
    assert "seqwatch_intervals_scored_total 2.0" in text


def test_hosts_are_scored_while_their_interval_is_still_arriving(model):
    """With more waiting hosts than the eager batch, scoring starts before the last chunk;
    the verdicts are those of scoring the whole interval at once."""
    intervals = traffic(6, 300, seed=3)
    whole = feed_all(Pipeline(model), intervals)
    eager = Pipeline(model, batch_size=64)
    assert eager.eager_batch == 64
    calls = []
    original = eager.scorer.score_batches

    def counting(batches):
        calls.append(len(eager._open.unscored) if eager._open else 0)
        return original(batches)

    eager.scorer.score_batches = counting
    parts = [m for iv in intervals for m in as_feature_messages(iv, 50)]
    assert feed_all(eager, parts) == whole
    # 6 chunks of 50 per interval: scored after chunks 2 and 4 and at completion.
    assert len(calls) == 6 * 3


def test_a_host_named_again_in_a_later_chunk_is_scored_with_its_last_vector(model):
    hosts = [f"10.0.0.{i}" for i in range(1, 5)]
    quiet = np.full((4, N_FEATURES), 5.0)
    history = [interval(b, hosts, quiet) for b in range(10, 16)]
    spike = quiet.copy()
    spike[0, FEATURE_INDEX["out_hosts"]] = 9000.0
    pipeline = Pipeline(model, batch_size=2)
    feed_all(pipeline, history)
    first = as_feature_messages(interval(16, hosts, quiet), 2)
    # chunk 0 (hosts 1-2) is scored early; then a third chunk repeats host 1 with a spike
    m0 = first[0]
    m0 = type(m0)(**{**m0.__dict__, "chunks": 3})
    assert pipeline.on_features(m0) == []
    assert "10.0.0.1" in pipeline._open.scores
    m1 = type(first[1])(**{**first[1].__dict__, "chunks": 3})
    again = type(m1)(**{**m1.__dict__, "chunk": 2, "hosts": ("10.0.0.1",), "values": spike[:1]})
    pipeline.on_features(again)
    verdicts = pipeline.on_features(m1)
    assert [v.host for v in verdicts] == ["10.0.0.1"]
    assert verdicts[0].top_features[0] == "out_hosts"
