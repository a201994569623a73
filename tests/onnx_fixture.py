"""A tiny but valid seqwatch model file, built with ``onnx.helper`` (no torch needed).

The graph follows the model-file contract (DESIGN.md, "Model file"):
``log1p`` -> standardize with per-feature ``mean``/``std`` -> predict step T+1 as the mean
of the first T standardized steps -> ``residual = z[T] - prediction`` -> ``error =
||residual||_2``. Its errors are easy to reason about in tests: a host whose features stay
constant scores 0, a host that jumps scores high, and the residual's sign says which way
each feature moved.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from seqwatch.sidecar.modelfile import ERROR_OUTPUT, INPUT_NAME, RESIDUAL_OUTPUT, ModelInfo
from seqwatch.sidecar.schema import (
    DEFAULT_DISTINCT_CAP,
    FEATURE_NAMES,
    SCHEMA_ID,
    RemovalDelays,
)

N = len(FEATURE_NAMES)


def build_model_bytes(
    *,
    window: int = 4,
    interval: float = 60.0,
    threshold: float = 3.0,
    mean: float | np.ndarray = 0.0,
    std: float | np.ndarray = 1.0,
    architecture: str = "mean-baseline",
) -> bytes:
    """Serialized ONNX model with seqwatch metadata; ``model_id`` is its content hash."""
    mean_arr = np.broadcast_to(np.asarray(mean, np.float32), (N,)).astype(np.float32)
    std_arr = np.broadcast_to(np.asarray(std, np.float32), (N,)).astype(np.float32)
    steps = window + 1
    inits = [
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(mean_arr, "mean"),
        numpy_helper.from_array(std_arr, "std"),
        numpy_helper.from_array(np.array([0], np.int64), "start"),
        numpy_helper.from_array(np.array([window], np.int64), "stop"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array(window, np.int64), "last_index"),
    ]
    nodes = [
        helper.make_node("Add", [INPUT_NAME, "one"], ["x1"]),
        helper.make_node("Log", ["x1"], ["logged"]),
        helper.make_node("Sub", ["logged", "mean"], ["centered"]),
        helper.make_node("Div", ["centered", "std"], ["z"]),
        helper.make_node("Slice", ["z", "start", "stop", "axis1"], ["past"]),
        helper.make_node("ReduceMean", ["past"], ["prediction"], axes=[1], keepdims=0),
        helper.make_node("Gather", ["z", "last_index"], ["last"], axis=1),
        helper.make_node("Sub", ["last", "prediction"], [RESIDUAL_OUTPUT]),
        helper.make_node("Mul", [RESIDUAL_OUTPUT, RESIDUAL_OUTPUT], ["squared"]),
        helper.make_node("ReduceSum", ["squared", "axis1"], ["sum_sq"], keepdims=0),
        helper.make_node("Sqrt", ["sum_sq"], [ERROR_OUTPUT]),
    ]
    graph = helper.make_graph(
        nodes,
        "seqwatch_fixture",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", steps, N])],
        [
            helper.make_tensor_value_info(ERROR_OUTPUT, TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info(RESIDUAL_OUTPUT, TensorProto.FLOAT, ["batch", N]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    graph_bytes = model.SerializeToString()
    info = ModelInfo(
        schema=SCHEMA_ID,
        feature_names=FEATURE_NAMES,
        interval=interval,
        window=window,
        distinct_cap=DEFAULT_DISTINCT_CAP,
        removal_delays=RemovalDelays().as_dict(),
        architecture=architecture,
        hyperparameters={"baseline": "mean of the first T steps"},
        # θ = μ_E + 3σ_E, as the paper's rule requires.
        error_mean=threshold / 2,
        error_std=threshold / 6,
        k=3.0,
        threshold=threshold,
        threshold_method="mean+k*std",
        train_span=None,
        train_size={"windows": 0, "hosts": 0, "intervals": 0, "connections": 0},
        created=datetime.now(UTC).isoformat(),
        seqwatch_version="0.1.0",
    ).with_model_id(graph_bytes)
    helper.set_model_props(model, info.to_props())
    return model.SerializeToString()


def write_model(path: Path | str, **kwargs) -> Path:
    """Write :func:`build_model_bytes` to ``path`` (atomically: temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(build_model_bytes(**kwargs))
    tmp.replace(path)
    return path


def reference_score(windows: np.ndarray, mean=0.0, std=1.0) -> tuple[np.ndarray, np.ndarray]:
    """What the fixture graph computes, in numpy (to check scores independently)."""
    z = (np.log1p(np.asarray(windows, np.float64)) - mean) / std
    residual = z[:, -1] - z[:, :-1].mean(axis=1)
    return np.sqrt((residual**2).sum(axis=1)), residual
