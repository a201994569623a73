"""The model-file contract: ModelInfo metadata and OnnxModel loading/validation/scoring.

The files here are built with ``onnx.helper`` (no torch): the simplest graph that keeps the
contract, ``residual = log1p(x[:, T])``, ``error = ||residual||``. Variants of it break one
rule at a time.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from seqwatch.sidecar.modelfile import PROP_PREFIX, ModelError, ModelInfo, OnnxModel
from seqwatch.sidecar.schema import FEATURE_NAMES, N_FEATURES, SCHEMA_ID

T = 4


def make_info(**changes) -> ModelInfo:
    values = dict(
        schema=SCHEMA_ID,
        feature_names=FEATURE_NAMES,
        interval=60.0,
        window=T,
        distinct_cap=1024,
        removal_delays={"tcp_attempt": 5.0},
        architecture="lstm",
        hyperparameters={"hidden_size": 8, "members": ["rnn", "gru"]},
        error_mean=1.5,
        error_std=0.5,
        k=3.0,
        threshold=3.0,
        threshold_method="mean+k*std",
        train_span=[1_700_000_000.0, 1_700_086_400.0],
        train_size={"windows": 1000, "hosts": 12, "intervals": 1440, "connections": 50_000},
        created="2025-12-04T21:00:00+00:00",
        seqwatch_version="0.1.0",
    )
    values.update(changes)
    return ModelInfo(**values)


def make_graph(
    *,
    steps: int = T + 1,
    d: int = N_FEATURES,
    input_name: str = "windows",
    outputs: tuple[str, ...] = ("error", "residual"),
    batch: str | int = "batch",
    elem_type: int = TensorProto.FLOAT,
) -> onnx.ModelProto:
    """Last step's log1p as residual and its L2 norm as error, with the given signature."""
    cast = elem_type != TensorProto.FLOAT
    x = "x32" if cast else input_name
    nodes = [helper.make_node("Cast", [input_name], ["x32"], to=TensorProto.FLOAT)] if cast else []
    nodes += [
        helper.make_node("Gather", [x, "last"], ["last_step"], axis=1),
        helper.make_node("Add", ["last_step", "one"], ["plus_one"]),
        helper.make_node("Log", ["plus_one"], ["residual"]),
        helper.make_node("ReduceL2", ["residual", "axis"], ["error"], keepdims=0),
    ]
    out_info = {
        "error": helper.make_tensor_value_info("error", TensorProto.FLOAT, [batch]),
        "residual": helper.make_tensor_value_info("residual", TensorProto.FLOAT, [batch, d]),
    }
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info(input_name, elem_type, [batch, steps, d])],
        [out_info[name] for name in outputs],
        initializer=[
            numpy_helper.from_array(np.array(steps - 1, np.int64), "last"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
            numpy_helper.from_array(np.array([1], np.int64), "axis"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8  # what onnxruntime >= 1.17 reads
    return model


def write(
    path: Path, model: onnx.ModelProto | None = None, props: dict[str, str] | None = None
) -> Path:
    model = model or make_graph()
    if props is None:
        props = make_info().with_model_id(model.graph.SerializeToString()).to_props()
    helper.set_model_props(model, props)
    onnx.save_model(model, path)
    return path


def reference(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    residual = np.log1p(windows[:, -1].astype(np.float64))
    return np.linalg.norm(residual, axis=1), residual


# --- ModelInfo -----------------------------------------------------------------------------


def test_props_round_trip_and_are_prefixed_json():
    info = make_info().with_model_id(b"graph")
    props = info.to_props()
    assert all(key.startswith(PROP_PREFIX) for key in props)
    assert {key[len(PROP_PREFIX) :] for key in props} == {
        f.name for f in dataclasses.fields(ModelInfo)
    }
    assert json.loads(props["seqwatch.window"]) == T
    assert json.loads(props["seqwatch.feature_names"]) == list(FEATURE_NAMES)
    again = ModelInfo.from_props({**props, "other.key": "not json"})  # foreign keys ignored
    assert again == info
    assert again.train_span == (1_700_000_000.0, 1_700_086_400.0)
    assert again.feature_names == FEATURE_NAMES
    # A partial delay table is completed, so a file states every delay it assumes.
    assert again.removal_delays["tcp_attempt"] == 5.0
    assert again.removal_delays["dns"] == 10.0


def test_model_id_hashes_graph_and_settings_but_not_creation_time():
    info = make_info()
    same = info.content_id(b"graph")
    assert len(same) == 16
    assert make_info(created="2031-05-01T00:00:00Z").content_id(b"graph") == same
    assert info.content_id(b"other graph") != same
    assert make_info(threshold=4.0, error_std=2.5 / 3).content_id(b"graph") != same
    assert make_info(interval=10.0).content_id(b"graph") != same


def test_missing_key_is_named():
    props = make_info().to_props()
    del props["seqwatch.error_std"]
    with pytest.raises(ModelError, match=r"^m\.onnx: metadata key seqwatch\.error_std is missing$"):
        ModelInfo.from_props(props, source="m.onnx")


def test_invalid_json_is_named():
    props = {**make_info().to_props(), "seqwatch.k": "three"}
    with pytest.raises(ModelError, match=r"m\.onnx: metadata key seqwatch\.k is not valid JSON"):
        ModelInfo.from_props(props, source="m.onnx")


def test_other_schema_is_reported_before_anything_else():
    # A v2 file may lack v1 keys; the schema is what the operator must hear about.
    props = {"seqwatch.schema": json.dumps("seqwatch.features.v2")}
    with pytest.raises(ModelError) as caught:
        ModelInfo.from_props(props, source="model.onnx")
    assert str(caught.value) == (
        "model.onnx: schema seqwatch.features.v2 is not supported "
        "(this seqwatch reads seqwatch.features.v1)"
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("window", 0, "integer >= 1"),
        ("window", 4.5, "expected an integer"),
        ("interval", -60, "> 0"),
        ("interval", "60", "expected a number"),
        ("feature_names", list(reversed(FEATURE_NAMES)), "position 0"),
        ("feature_names", list(FEATURE_NAMES[:3]), "3 names"),
        ("threshold_method", "quantile:1.5", "quantile"),
        ("threshold_method", "max", "mean\\+k\\*std"),
        ("train_span", [10.0, 5.0], "before start"),
        ("train_size", {"windows": 3}, "missing hosts, intervals, connections"),
        ("train_size", {"windows": -1, "hosts": 0, "intervals": 0, "connections": 0}, ">= 0"),
        ("created", "2025-12-04T21:00:00", "UTC"),
        ("created", "yesterday", "ISO 8601"),
        ("removal_delays", {"tcp_attempt": -5}, "removal delay"),
        ("removal_delays", {"teleport": 5}, "unknown removal delay"),
        ("model_id", "not-a-hash", "hex"),
        ("error_std", -1.0, ">= 0"),
        ("schema", 2, "non-empty string"),
    ],
)
def test_invalid_values_are_named(key, value, message):
    props = {**make_info().to_props(), PROP_PREFIX + key: json.dumps(value)}
    with pytest.raises(ModelError, match=rf"^m\.onnx: metadata key seqwatch\.{key}: .*{message}"):
        ModelInfo.from_props(props, source="m.onnx")


def test_threshold_must_follow_its_method():
    props = {**make_info().to_props(), "seqwatch.threshold": "7.0"}
    with pytest.raises(ModelError, match=r"seqwatch\.threshold: 7\.0 is not error_mean \+ k"):
        ModelInfo.from_props(props, source="m.onnx")
    # A quantile threshold has no such relation to the moments.
    quantile = make_info(threshold=7.0, threshold_method="quantile:0.999")
    assert ModelInfo.from_props(quantile.to_props()) == quantile


def test_direct_construction_validates_too():
    with pytest.raises(ValueError, match=r"schema seqwatch\.features\.v0 is not supported"):
        make_info(schema="seqwatch.features.v0")
    with pytest.raises(ValueError, match=r"^window:"):
        make_info(window=-1)


# --- OnnxModel -----------------------------------------------------------------------------


def test_load_and_score_in_batches(tmp_path):
    path = write(tmp_path / "m.onnx")
    model = OnnxModel.load(path, max_batch=7, threads=2)
    assert model.path == path
    assert model.window == T and model.n_features == N_FEATURES
    assert model.info.model_id == make_info().content_id(make_graph().graph.SerializeToString())
    windows = np.random.default_rng(0).poisson(5, (20, T + 1, N_FEATURES)).astype(np.float32)
    error, residual = model.score(windows)
    assert error.dtype == residual.dtype == np.float32
    assert error.shape == (20,) and residual.shape == (20, N_FEATURES)
    expected_error, expected_residual = reference(windows)
    np.testing.assert_allclose(error, expected_error, rtol=1e-5)
    np.testing.assert_allclose(residual, expected_residual, rtol=1e-5, atol=1e-6)
    # float64 input is converted; an empty batch gives empty results
    np.testing.assert_array_equal(model.score(windows.astype(np.float64))[0], error)
    empty_error, empty_residual = model.score(np.zeros((0, T + 1, N_FEATURES), np.float32))
    assert empty_error.shape == (0,) and empty_residual.shape == (0, N_FEATURES)
    assert model._session.get_session_options().intra_op_num_threads == 2
    assert "lstm" in repr(model)


def test_default_is_one_thread(tmp_path):
    model = OnnxModel.load(write(tmp_path / "m.onnx"))
    assert model._session.get_session_options().intra_op_num_threads == 1


def test_score_rejects_windows_of_another_shape(tmp_path):
    model = OnnxModel.load(write(tmp_path / "m.onnx"))
    with pytest.raises(ValueError, match=r"\[n, 5, 16\]"):
        model.score(np.zeros((3, T, N_FEATURES), np.float32))


def test_unreadable_files(tmp_path):
    with pytest.raises(ModelError, match=r"missing\.onnx: cannot read model file"):
        OnnxModel.load(tmp_path / "missing.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelError, match=r"corrupt\.onnx: not a loadable ONNX model"):
        OnnxModel.load(corrupt)
    with pytest.raises(ModelError, match=r"cannot read model file \(Is a directory\)"):
        OnnxModel.load(tmp_path)


@pytest.mark.parametrize(
    ("graph", "message"),
    [
        (dict(steps=T + 2), r"input 'windows' has shape \[batch, 6, 16\].*T=4, 16 features"),
        (dict(d=N_FEATURES - 1), r"input 'windows' has shape \[batch, 5, 15\]"),
        (dict(batch=8), r"input 'windows' has shape \[8, 5, 16\].*dynamic batch axis"),
        (dict(input_name="x"), "expected one input named 'windows', found x"),
        (dict(outputs=("error",)), "output 'residual' is missing"),
        (dict(outputs=("residual",)), "output 'error' is missing"),
        (dict(elem_type=TensorProto.DOUBLE), r"tensor\(double\), expected tensor\(float\)"),
    ],
)
def test_graph_must_match_the_contract_and_its_metadata(tmp_path, graph, message):
    path = write(tmp_path / "m.onnx", make_graph(**graph))
    with pytest.raises(ModelError, match=rf"^{tmp_path}/m\.onnx: .*{message}"):
        OnnxModel.load(path)


def test_file_errors_name_the_file_and_the_problem(tmp_path):
    props = make_info().to_props()
    props["seqwatch.schema"] = json.dumps("seqwatch.features.v2")
    path = write(tmp_path / "model.onnx", props=props)
    with pytest.raises(ModelError) as caught:
        OnnxModel.load(path)
    assert str(caught.value) == (
        f"{path}: schema seqwatch.features.v2 is not supported "
        "(this seqwatch reads seqwatch.features.v1)"
    )
    props = make_info().to_props()
    del props["seqwatch.threshold"]
    with pytest.raises(
        ModelError, match=r"model\.onnx: metadata key seqwatch\.threshold is missing"
    ):
        OnnxModel.load(write(tmp_path / "model.onnx", make_graph(), props))
    with pytest.raises(ModelError, match=r"seqwatch\.schema is missing"):
        OnnxModel.load(write(tmp_path / "model.onnx", make_graph(), {"author": "someone"}))
