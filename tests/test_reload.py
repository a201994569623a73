"""Model hot reload: good files are swapped in, bad ones refused, the old model kept."""

from __future__ import annotations

import logging
import os
import queue
import time

import numpy as np
import pytest
from onnx_fixture import build_model_bytes, write_model

from seqwatch.sidecar.features import IntervalFeatures
from seqwatch.sidecar.modelfile import OnnxModel
from seqwatch.sidecar.pipeline import Pipeline
from seqwatch.sidecar.reload import ModelReloader

T = 4


def one_interval(bin_: int) -> IntervalFeatures:
    return IntervalFeatures(bin=bin_, interval=60.0, hosts=["10.0.0.1"], values=np.ones((1, 16)))


@pytest.fixture
def setup(tmp_path):
    path = write_model(tmp_path / "model.onnx", window=T, threshold=1.0)
    pipeline = Pipeline(OnnxModel.load(path))
    results: queue.Queue = queue.Queue()
    reloader = ModelReloader(
        path, pipeline, debounce=1.0, on_result=lambda ok, msg: results.put((ok, msg))
    )
    assert reloader.start()
    yield path, pipeline, reloader, results
    reloader.stop()


def replace_atomically(path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_a_new_model_renamed_into_place_is_swapped_in(setup):
    path, pipeline, _, results = setup
    old_id = pipeline.info.model_id
    replace_atomically(path, build_model_bytes(window=T, threshold=0.5))
    ok, message = results.get(timeout=10)
    assert ok and "accepted" in message
    # The swap happens between messages, on the pipeline's own thread.
    assert pipeline.info.model_id == old_id
    (verdict,) = pipeline.on_features(one_interval(1))
    assert verdict.model_id != old_id and verdict.threshold == 0.5
    assert pipeline.stats.model_swaps == 1


def test_a_corrupt_file_is_refused_and_the_old_model_stays(setup, caplog):
    path, pipeline, _, results = setup
    old_id = pipeline.info.model_id
    with caplog.at_level(logging.ERROR, logger="seqwatch.sidecar.reload"):
        replace_atomically(path, b"\x08\x07garbage, not a protobuf")
        ok, message = results.get(timeout=10)
    assert not ok
    assert "keeping model " + old_id in message and "not a loadable ONNX model" in message
    assert any("model reload refused" in r.message for r in caplog.records)
    (verdict,) = pipeline.on_features(one_interval(1))
    assert verdict.model_id == old_id
    # A good file afterwards is still picked up.
    replace_atomically(path, build_model_bytes(window=T, threshold=0.25))
    assert results.get(timeout=10)[0]


def test_a_file_written_in_place_is_loaded_once_after_it_settles(setup):
    path, pipeline, _, results = setup
    data = build_model_bytes(window=T, threshold=0.75)
    with open(path, "wb") as f:  # a slow, non-atomic copy
        for i in range(0, len(data), 64):
            f.write(data[i : i + 64])
            f.flush()
            time.sleep(0.01)
    ok, _ = results.get(timeout=10)
    assert ok
    with pytest.raises(queue.Empty):
        results.get(timeout=1.0)  # debounced: no second attempt on a half-written file
    pipeline.on_features(one_interval(1))
    assert pipeline.threshold == 0.75


def test_a_model_of_another_interval_width_is_refused(setup):
    path, pipeline, _, results = setup
    old_id = pipeline.info.model_id
    replace_atomically(path, build_model_bytes(window=T, interval=10.0))
    ok, message = results.get(timeout=10)
    assert not ok and "Δ 10 s != 60 s" in message
    pipeline.on_features(one_interval(1))
    assert pipeline.info.model_id == old_id


def test_a_model_that_scores_nan_is_refused(tmp_path):
    path = write_model(tmp_path / "model.onnx", window=T)
    pipeline = Pipeline(OnnxModel.load(path))
    old_id = pipeline.info.model_id
    messages = []
    reloader = ModelReloader(path, pipeline, on_result=lambda ok, msg: messages.append(msg))
    replace_atomically(path, build_model_bytes(window=T, std=0.0))  # 0/0 on a zero window
    assert reloader.check_now() is False
    assert "test score on a zero window is not finite" in messages[0]
    pipeline.on_features(one_interval(1))
    assert pipeline.info.model_id == old_id


def test_an_unchanged_file_is_ignored(tmp_path):
    path = write_model(tmp_path / "model.onnx", window=T)
    pipeline = Pipeline(OnnxModel.load(path))
    calls = []
    reloader = ModelReloader(path, pipeline, on_result=lambda ok, msg: calls.append(ok))
    path.touch()
    assert reloader.check_now() is False and calls == []
