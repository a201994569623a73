"""Turn a trained predictor into a seqwatch model file (DESIGN.md, "Model file").

:class:`ScoringGraph` is the whole scoring path as one module: raw windows in, error and
standardized residual out. The detector scores with it in torch and :func:`export_model`
exports it, so torch and onnxruntime compute the same function by construction; the export
is then checked numerically against onnxruntime before the file is put in place.

Export path: ``torch.onnx.export(..., dynamo=True)``, torch 2.13's default exporter
(``torch.export`` + onnxscript). It exports LSTM and GRU to the native ONNX ``LSTM``/``GRU``
ops and unrolls the Elman RNN over the fixed T steps, all matching torch to ~1e-6. The
legacy TorchScript exporter also works here but has been deprecated since torch 2.9.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from seqwatch.sidecar.modelfile import (
    ERROR_OUTPUT,
    INPUT_NAME,
    RESIDUAL_OUTPUT,
    ModelInfo,
    OnnxModel,
)

OPSET = 18
"""ONNX opset of exported files: LSTM/GRU/ReduceL2 semantics are settled there, and
onnxruntime has run it since 1.14."""
VERIFY_RTOL = 1e-4
VERIFY_ATOL = 1e-4


class ScoringGraph(nn.Module):
    """Raw windows ``[batch, T+1, d]`` -> (error ``[batch]``, residual ``[batch, d]``).

    log1p of the raw counts (clamped at 0, so a stray negative value cannot give NaN), the
    training set's standardization as constants, the predictor on steps 0..T-1, and the
    residual of step T in standardized space.
    """

    def __init__(self, predictor: nn.Module, mean: np.ndarray, scale: np.ndarray) -> None:
        super().__init__()
        mean = np.asarray(mean, dtype=np.float32)
        scale = np.asarray(scale, dtype=np.float32)
        if mean.ndim != 1 or mean.shape != scale.shape:
            raise ValueError(
                f"mean and scale must be equal 1-D arrays, got {mean.shape}, {scale.shape}"
            )
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(scale)) and np.all(scale > 0)):
            raise ValueError("mean must be finite and scale finite and > 0")
        self.predictor = predictor
        # Buffers, not parameters: the exporter folds them into the graph as constants.
        self.register_buffer("mean", torch.from_numpy(mean.copy()))
        self.register_buffer("scale", torch.from_numpy(scale.copy()))

    @property
    def n_features(self) -> int:
        return int(self.mean.shape[0])

    def standardize(self, windows: torch.Tensor) -> torch.Tensor:
        """Raw counts -> standardized log space, the model's input and target space."""
        return (torch.log1p(torch.clamp(windows, min=0.0)) - self.mean) / self.scale

    def forward(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.standardize(windows)
        residual = x[:, -1] - self.predictor(x[:, :-1])
        return torch.linalg.vector_norm(residual, dim=1), residual


def example_windows(
    mean: np.ndarray, scale: np.ndarray, window: int, batch: int, seed: int = 0
) -> torch.Tensor:
    """Raw windows drawn from the training distribution (normal in standardized log space).

    Used as the export's example input (batch >= 2: torch.export specializes a batch of
    1 to a constant) and to compare torch with onnxruntime on realistic magnitudes.
    """
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, window + 1, len(mean), generator=generator)
    logs = torch.from_numpy(np.asarray(mean, np.float32)) + z * torch.from_numpy(
        np.asarray(scale, np.float32)
    )
    return torch.expm1(logs).clamp(min=0.0)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's chatter about torch internals (not about the model).

    The export is verified numerically afterwards, so these messages carry nothing an
    operator could act on: deprecations inside torch.export, the RNN modules' flat weight
    cache, and the optional torchvision ops the ONNX registry looks for.
    """
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*_check_is_size", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r".*LeafSpec", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r".*_flat_weights", category=UserWarning)
            yield
    finally:
        registry_log.setLevel(level)


def _strip_debug_info(graph: onnx.GraphProto) -> None:
    """Drop the exporter's per-node annotations (source stack traces, symbolic ranges).

    They make the file ~4x larger, reveal the training machine's paths, and vary between
    runs, which would make the content hash (the model id) unstable.
    """
    del graph.metadata_props[:]
    graph.doc_string = ""
    for values in (graph.input, graph.output, graph.value_info, graph.initializer):
        for value in values:
            del value.metadata_props[:]
            value.doc_string = ""
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
        for attribute in node.attribute:
            if attribute.HasField("g"):
                _strip_debug_info(attribute.g)
            for subgraph in attribute.graphs:
                _strip_debug_info(subgraph)


def to_onnx(graph: ScoringGraph, window: int) -> onnx.ModelProto:
    """Export ``graph`` for windows of T+1 = ``window`` + 1 steps and any batch size."""
    graph = graph.eval()
    example = example_windows(graph.mean.numpy(), graph.scale.numpy(), window, batch=2)
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[ERROR_OUTPUT, RESIDUAL_OUTPUT],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            opset_version=OPSET,
            external_data=False,
            optimize=True,
            verbose=False,
        )
    model = program.model_proto
    _strip_debug_info(model.graph)
    if any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer):
        raise RuntimeError(
            "the exporter left weights outside the graph; the file must be self-contained"
        )
    return model


def export_model(
    predictor: nn.Module,
    mean: np.ndarray,
    scale: np.ndarray,
    info: ModelInfo,
    path: str | Path,
    *,
    verify: bool = True,
) -> ModelInfo:
    """Write ``predictor`` with its standardization and ``info`` as one ONNX file at ``path``.

    Returns ``info`` with its ``model_id`` set. The file is written next to ``path`` and
    renamed into place, so a sidecar watching ``path`` never sees half a file. With
    ``verify``, the written file is loaded like the sidecar loads it and its outputs must
    match torch's on the training distribution and on batch sizes 1 and 37.
    """
    path = Path(path)
    # A CPU copy in eval mode: exporting must not move or re-mode the caller's model.
    graph = ScoringGraph(copy.deepcopy(predictor).cpu(), mean, scale).eval()
    if graph.n_features != info.n_features:
        raise ValueError(f"predictor has {graph.n_features} features, info says {info.n_features}")
    model = to_onnx(graph, info.window)
    info = info.with_model_id(model.graph.SerializeToString())
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, info.to_props())
    model.doc_string = f"seqwatch {info.architecture} next-interval model, schema {info.schema}"
    onnx.checker.check_model(model, full_check=True)

    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        onnx.save_model(model, tmp, save_as_external_data=False)
        if verify:
            verify_model_file(graph, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return info


def verify_model_file(graph: ScoringGraph, path: Path) -> float:
    """Load ``path`` with the runtime and compare it with ``graph``; return the max |diff|.

    Raises RuntimeError if the file's metadata or outputs disagree with torch beyond
    ``VERIFY_RTOL``/``VERIFY_ATOL`` (relative, since errors of unseen traffic can be large).
    """
    loaded = OnnxModel.load(path)
    window = loaded.window
    worst = 0.0
    for batch, seed in ((1, 1), (37, 2)):
        windows = example_windows(graph.mean.numpy(), graph.scale.numpy(), window, batch, seed)
        with torch.no_grad():
            error, residual = (t.numpy() for t in graph(windows))
        ort_error, ort_residual = loaded.score(windows.numpy())
        for name, ours, theirs in (
            ("error", error, ort_error),
            ("residual", residual, ort_residual),
        ):
            if not np.allclose(theirs, ours, rtol=VERIFY_RTOL, atol=VERIFY_ATOL):
                diff = float(np.max(np.abs(theirs - ours)))
                raise RuntimeError(
                    f"exported {name} differs from torch by up to {diff:.3g} (batch {batch})"
                )
            worst = max(worst, float(np.max(np.abs(theirs - ours))))
    return worst
