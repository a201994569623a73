"""The model file contract: metadata carried in ONNX ``metadata_props`` and scoring with it.

A seqwatch model file is one self-contained ONNX graph (DESIGN.md, "Model file"):

- input ``windows``: raw feature windows, float32 ``[batch, T+1, d]``;
- output ``error``: float32 ``[batch]``, the L2 norm of the standardized residual of the
  last step;
- output ``residual``: float32 ``[batch, d]``, the per-feature standardized residual.

Everything the sidecar needs to use the file (schema, Δ, T, θ, ...) travels in the file's
``metadata_props`` under keys prefixed ``seqwatch.``, each value JSON-encoded.
:class:`ModelInfo` is the single definition of those keys: training writes it with
:meth:`ModelInfo.to_props`, the runtime reads it with :meth:`ModelInfo.from_props`.

This module is part of the light runtime: numpy and onnxruntime only, never onnx or torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from .schema import FEATURE_NAMES, SCHEMA_ID, RemovalDelays

PROP_PREFIX = "seqwatch."
"""Prefix of every seqwatch key in an ONNX file's ``metadata_props``."""
INPUT_NAME = "windows"
ERROR_OUTPUT = "error"
RESIDUAL_OUTPUT = "residual"

THRESHOLD_STD = "mean+k*std"
"""``threshold_method`` for θ = μ_E + k·σ_E (the paper's rule)."""
THRESHOLD_QUANTILE_PREFIX = "quantile:"
"""``threshold_method`` prefix for θ = the q-quantile of the training errors."""
TRAIN_SIZE_KEYS = ("windows", "hosts", "intervals", "connections")
MODEL_ID_LENGTH = 16
"""Hex digits of the content hash kept as the model id (64 bits: ample to tell files apart)."""


class ModelError(ValueError):
    """A model file is unreadable, malformed or incompatible with this seqwatch."""


# --- field parsers ---------------------------------------------------------------------
# Each parser takes a JSON-decoded (or Python) value and returns the normalized value or
# raises ValueError with a message that reads well after "<field>: ".


def _number(value: Any, *, minimum: float | None = None, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"expected a number > 0, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"expected a number >= {minimum:g}, got {value!r}")
    return value


def _integer(value: Any, *, minimum: int) -> int:
    # JSON has no integer type of its own; 16.0 is accepted, 16.5 is not.
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ValueError(f"expected an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def _schema(value: Any) -> str:
    value = _text(value)
    if value != SCHEMA_ID:
        raise ValueError(f"schema {value} is not supported (this seqwatch reads {SCHEMA_ID})")
    return value


def _feature_names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of feature names, got {value!r}")
    names = tuple(value)
    if names != FEATURE_NAMES:
        if len(names) != len(FEATURE_NAMES):
            detail = f"{len(names)} names, {SCHEMA_ID} has {len(FEATURE_NAMES)}"
        else:
            i = next(i for i, (a, b) in enumerate(zip(names, FEATURE_NAMES, strict=True)) if a != b)
            detail = f"position {i} is {names[i]!r}, expected {FEATURE_NAMES[i]!r}"
        raise ValueError(f"do not match {SCHEMA_ID} ({detail})")
    return names


def _removal_delays(value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise ValueError(f"expected an object of delays in seconds, got {value!r}")
    # RemovalDelays validates names and values; a partial dict is completed with defaults
    # so every file states the full table it was trained with.
    return RemovalDelays.from_dict(dict(value)).as_dict()


def _string_keyed(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"expected an object, got {value!r}")
    return dict(value)


def _hyperparameters(value: Any) -> dict[str, Any]:
    value = _string_keyed(value)
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"must be JSON-serializable ({exc})") from None
    return value


def _threshold_method(value: Any) -> str:
    value = _text(value)
    if value == THRESHOLD_STD:
        return value
    if value.startswith(THRESHOLD_QUANTILE_PREFIX):
        q = threshold_quantile(value)
        if q is not None:
            return value
    raise ValueError(f"expected {THRESHOLD_STD!r} or 'quantile:q' with 0 < q < 1, got {value!r}")


def threshold_quantile(method: str) -> float | None:
    """The q of a ``quantile:q`` threshold method, or None for any other method."""
    match = re.fullmatch(r"quantile:([0-9.eE+-]+)", method)
    if not match:
        return None
    try:
        q = float(match.group(1))
    except ValueError:
        return None
    return q if 0 < q < 1 else None


def _train_span(value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"expected [start, end] in epoch seconds or null, got {value!r}")
    start, end = (_number(v) for v in value)
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    return (start, end)


def _train_size(value: Any) -> dict[str, int | None]:
    value = _string_keyed(value)
    missing = [k for k in TRAIN_SIZE_KEYS if k not in value]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    # null means "not recorded" (e.g. a model fitted on bare arrays does not know its hosts).
    return {k: None if v is None else _integer(v, minimum=0) for k, v in value.items()}


def _created(value: Any) -> str:
    value = _text(value)
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"expected an ISO 8601 time, got {value!r}") from None
    if stamp.utcoffset() is None or stamp.utcoffset().total_seconds() != 0:
        raise ValueError(f"expected a UTC time, got {value!r}")
    return value


def _model_id(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{8,64}", value):
        raise ValueError(f"expected a hex content hash, got {value!r}")
    return value


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "schema": _schema,
    "feature_names": _feature_names,
    "interval": lambda v: _number(v, positive=True),
    "window": lambda v: _integer(v, minimum=1),
    "distinct_cap": lambda v: _integer(v, minimum=1),
    "removal_delays": _removal_delays,
    "architecture": _text,
    "hyperparameters": _hyperparameters,
    "error_mean": _number,
    "error_std": lambda v: _number(v, minimum=0.0),
    "k": lambda v: _number(v, minimum=0.0),
    "threshold": _number,
    "threshold_method": _threshold_method,
    "train_span": _train_span,
    "train_size": _train_size,
    "created": _created,
    "seqwatch_version": _text,
    "model_id": _model_id,
}

# Left out of the model id, so re-exporting the same trained model yields the same id.
_NOT_HASHED = frozenset({"model_id", "created"})


@dataclass(frozen=True)
class ModelInfo:
    """Everything a model file says about itself (its ``seqwatch.*`` metadata).

    Construction validates and normalizes every field (lists become tuples, removal delays
    are completed with defaults), so an instance always satisfies the contract.
    """

    schema: str
    """Feature schema id; must be :data:`~seqwatch.sidecar.schema.SCHEMA_ID`."""
    feature_names: tuple[str, ...]
    interval: float
    """Δ, seconds per interval."""
    window: int
    """T: the model sees T intervals and predicts interval T+1."""
    distinct_cap: int
    removal_delays: dict[str, float]
    architecture: str
    hyperparameters: dict[str, Any]
    error_mean: float
    """μ_E, mean error on the training windows."""
    error_std: float
    """σ_E, standard deviation of the training errors."""
    k: float
    threshold: float
    """θ: a window whose error exceeds it is anomalous."""
    threshold_method: str
    """``"mean+k*std"`` or ``"quantile:q"``."""
    train_span: tuple[float, float] | None
    """Interval starts (epoch s) of the earliest and latest predicted training interval."""
    train_size: dict[str, int | None]
    """``windows``, ``hosts``, ``intervals``, ``connections`` (null: not recorded), extras."""
    created: str
    """ISO 8601 UTC creation time."""
    seqwatch_version: str
    model_id: str = "0" * MODEL_ID_LENGTH
    """Short content hash of the graph and this metadata; see :meth:`with_model_id`."""

    def __post_init__(self) -> None:
        for name, parse in _PARSERS.items():
            try:
                value = parse(getattr(self, name))
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
            object.__setattr__(self, name, value)
        if self.threshold_method == THRESHOLD_STD:
            expected = self.error_mean + self.k * self.error_std
            if not math.isclose(self.threshold, expected, rel_tol=1e-6, abs_tol=1e-9):
                raise ValueError(
                    f"threshold: {self.threshold!r} is not error_mean + k*error_std "
                    f"= {expected!r} as threshold_method {THRESHOLD_STD!r} says"
                )

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def to_props(self) -> dict[str, str]:
        """The ``metadata_props`` entries: ``seqwatch.<field>`` -> JSON value."""
        return {
            PROP_PREFIX + f.name: json.dumps(getattr(self, f.name), sort_keys=True, allow_nan=False)
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> ModelInfo:
        """Read the ``seqwatch.*`` entries of ``props`` (other keys are ignored).

        Raises :class:`ModelError` starting with ``source`` and naming the offending key.
        The schema is checked first: a file of another schema may lack keys this version
        expects, and the schema mismatch is then the real problem to report.
        """
        names = ["schema"] + [f.name for f in dataclasses.fields(cls) if f.name != "schema"]
        values: dict[str, Any] = {}
        for name in names:
            key = PROP_PREFIX + name
            if key not in props:
                raise ModelError(f"{source}: metadata key {key} is missing")
            try:
                decoded = json.loads(props[key])
            except json.JSONDecodeError as exc:
                raise ModelError(
                    f"{source}: metadata key {key} is not valid JSON ({exc})"
                ) from None
            try:
                values[name] = _PARSERS[name](decoded)
            except ValueError as exc:
                if name == "schema" and isinstance(decoded, str) and decoded:
                    raise ModelError(f"{source}: {exc}") from None
                raise ModelError(f"{source}: metadata key {key}: {exc}") from None
        try:
            return cls(**values)
        except ValueError as exc:  # cross-field checks
            raise ModelError(f"{source}: metadata key {PROP_PREFIX}{exc}") from None

    def content_id(self, graph: bytes) -> str:
        """Hash of the serialized graph and this metadata, except ``model_id`` and ``created``.

        Stable: the same graph with the same calibration and settings gets the same id, so
        re-exporting a model does not make it look like a new one in alerts.
        """
        props = {
            k: v for k, v in self.to_props().items() if k[len(PROP_PREFIX) :] not in _NOT_HASHED
        }
        digest = hashlib.sha256(graph)
        digest.update(json.dumps(props, sort_keys=True).encode())
        return digest.hexdigest()[:MODEL_ID_LENGTH]

    def with_model_id(self, graph: bytes) -> ModelInfo:
        """A copy whose ``model_id`` is :meth:`content_id` of ``graph``."""
        return dataclasses.replace(self, model_id=self.content_id(graph))


def default_threads() -> int:
    """Intra-op threads per scoring process: 1, because throughput comes from processes.

    The sidecar scales by running N worker processes (DESIGN.md, "Scale"); several
    multi-threaded sessions on one host would just fight over the same cores.
    """
    return 1


class OnnxModel:
    """A loaded, validated model file, ready to score raw windows."""

    def __init__(self, session: Any, info: ModelInfo, path: Path, max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._session = session
        self.info = info
        self.path = path
        self.max_batch = max_batch

    @classmethod
    def load(
        cls, path: str | Path, *, threads: int | None = None, max_batch: int = 4096
    ) -> OnnxModel:
        """Open and validate ``path``; raise :class:`ModelError` saying what is wrong.

        ``threads`` sets onnxruntime's intra-op threads (default :func:`default_threads`);
        ``max_batch`` bounds the rows per ``run`` call and so the peak memory of a score.
        """
        import onnxruntime as ort  # deferred: importing it costs ~0.2 s and CLI help needs none

        path = Path(path)
        source = str(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"{source}: cannot read model file ({exc.strerror or exc})") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads if threads is not None else default_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: warnings would go to stderr unformatted
        try:
            # From bytes, not the path: a file that refers to external weights fails here
            # instead of silently depending on files next to it.
            session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{source}: not a loadable ONNX model ({first})") from None
        props = session.get_modelmeta().custom_metadata_map
        info = ModelInfo.from_props(props, source=source)
        _check_signature(session, info, source)
        return cls(session, info, path, max_batch)

    @property
    def window(self) -> int:
        """T; windows passed to :meth:`score` have T+1 intervals."""
        return self.info.window

    @property
    def n_features(self) -> int:
        return self.info.n_features

    def score(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Errors ``[n]`` and standardized residuals ``[n, d]`` of raw windows ``[n, T+1, d]``."""
        windows = np.asarray(windows)
        expected = (self.window + 1, self.n_features)
        if windows.ndim != 3 or windows.shape[1:] != expected:
            raise ValueError(
                f"windows must have shape [n, {expected[0]}, {expected[1]}], "
                f"got {list(windows.shape)}"
            )
        windows = np.ascontiguousarray(windows, dtype=np.float32)
        n = windows.shape[0]
        errors = np.empty(n, dtype=np.float32)
        residuals = np.empty((n, self.n_features), dtype=np.float32)
        for start in range(0, n, self.max_batch):
            stop = min(start + self.max_batch, n)
            error, residual = self._session.run(
                [ERROR_OUTPUT, RESIDUAL_OUTPUT], {INPUT_NAME: windows[start:stop]}
            )
            errors[start:stop] = error
            residuals[start:stop] = residual
        return errors, residuals

    def __repr__(self) -> str:
        info = self.info
        return (
            f"OnnxModel({str(self.path)!r}, id={info.model_id}, {info.architecture}, "
            f"T={info.window}, interval={info.interval:g}s, threshold={info.threshold:.4g})"
        )


def _check_signature(session: Any, info: ModelInfo, source: str) -> None:
    """The graph's inputs and outputs must be what the contract and the metadata say."""
    steps, d = info.window + 1, info.n_features
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
        names = ", ".join(i.name for i in inputs) or "none"
        raise ModelError(f"{source}: expected one input named {INPUT_NAME!r}, found {names}")
    _check_tensor(inputs[0], [None, steps, d], f"{source}: input {INPUT_NAME!r}", info)
    outputs = {o.name: o for o in session.get_outputs()}
    for name, shape in ((ERROR_OUTPUT, [None]), (RESIDUAL_OUTPUT, [None, d])):
        if name not in outputs:
            found = ", ".join(outputs) or "none"
            raise ModelError(f"{source}: output {name!r} is missing (outputs: {found})")
        _check_tensor(outputs[name], shape, f"{source}: output {name!r}", info)


def _check_tensor(arg: Any, expected: list[int | None], what: str, info: ModelInfo) -> None:
    if arg.type != "tensor(float)":
        raise ModelError(f"{what} has type {arg.type}, expected tensor(float) (float32)")
    shape = list(arg.shape)

    def show(dims: list[Any]) -> str:
        return "[" + ", ".join("batch" if not isinstance(x, int) else str(x) for x in dims) + "]"

    # None = the dynamic batch axis: any symbolic name (or an unnamed dim) is fine there.
    ok = len(shape) == len(expected) and all(
        (want is None and not isinstance(got, int)) or got == want
        for got, want in zip(shape, expected, strict=False)
    )
    if not ok:
        raise ModelError(
            f"{what} has shape {show(shape)}, but the metadata (T={info.window}, "
            f"{info.n_features} features) needs {show(expected)} with a dynamic batch axis"
        )
