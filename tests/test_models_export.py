"""Every architecture: build, train briefly, export, and run the file like the sidecar does.

The exported file must compute what torch computes (error and residual, batch sizes 1 and
37 on one file: the batch axis is dynamic), be self-contained, and carry its metadata.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from test_detector import periodic_windows

from seqwatch.sidecar.modelfile import OnnxModel
from seqwatch.sidecar.schema import N_FEATURES
from seqwatch.training.detector import SequenceDetector
from seqwatch.training.export import ScoringGraph
from seqwatch.training.models import (
    ARCHITECTURES,
    CnnLstmPredictor,
    EnsemblePredictor,
    build_model,
)

T = 8


# --- models --------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_every_architecture_predicts_one_vector_per_window(arch, num_layers):
    torch.manual_seed(0)
    model = build_model(arch, N_FEATURES, hidden_size=6, num_layers=num_layers, dropout=0.1)
    out = model.eval()(torch.randn(5, T, N_FEATURES))
    assert out.shape == (5, N_FEATURES)
    assert torch.isfinite(out).all()


def test_registry_rejects_unknown_names_and_foreign_hyperparameters():
    with pytest.raises(ValueError, match="unknown architecture 'tcn'"):
        build_model("tcn", N_FEATURES)
    with pytest.raises(TypeError, match="'gru' does not take kernel_size"):
        build_model("gru", N_FEATURES, kernel_size=3)
    with pytest.raises(ValueError, match="ensemble members"):
        build_model("ensemble", N_FEATURES, members=["ensemble"])
    with pytest.raises(ValueError, match="dropout"):
        build_model("lstm", N_FEATURES, dropout=1.0)


def test_ensemble_averages_its_members():
    torch.manual_seed(0)
    model = build_model("ensemble", N_FEATURES, members=("rnn", "cnn-lstm"), hidden_size=4)
    assert isinstance(model, EnsemblePredictor)
    assert [type(m).__name__ for m in model.members] == ["RecurrentPredictor", "CnnLstmPredictor"]
    x = torch.randn(3, T, N_FEATURES)
    expected = (model.members[0](x) + model.members[1](x)) / 2
    torch.testing.assert_close(model(x), expected)


def test_cnn_lstm_convolution_is_causal_and_keeps_every_step():
    torch.manual_seed(0)
    model = CnnLstmPredictor(N_FEATURES, hidden_size=4, conv_channels=5, kernel_size=3).eval()
    x = torch.randn(2, T, N_FEATURES)
    seen: list[torch.Tensor] = []
    model.conv.register_forward_hook(lambda _m, _i, out: seen.append(out))
    model(x)
    changed = x.clone()
    changed[:, 5] += 10.0  # steps before 5 must not see it
    model(changed)
    before, after = seen
    assert before.shape == (2, 5, T)
    torch.testing.assert_close(before[..., :5], after[..., :5])
    assert not torch.allclose(before[..., 5:], after[..., 5:])


def test_scoring_graph_clamps_negative_counts():
    torch.manual_seed(0)
    graph = ScoringGraph(build_model("gru", N_FEATURES, hidden_size=4), np.ones(16), np.ones(16))
    windows = torch.rand(4, T + 1, N_FEATURES) * 10
    negative = windows.clone()
    negative[:, :, 3] = -7.0
    zeroed = windows.clone()
    zeroed[:, :, 3] = 0.0
    with torch.no_grad():
        error, residual = graph.eval()(negative)
        expected_error, expected_residual = graph(zeroed)
    assert torch.isfinite(residual).all()
    torch.testing.assert_close(error, expected_error)
    torch.testing.assert_close(residual, expected_residual)


# --- train, export, run in onnxruntime -----------------------------------------------------


@pytest.fixture(scope="module", params=ARCHITECTURES)
def exported(request, tmp_path_factory):
    """(detector, loaded OnnxModel, file path) for one architecture, trained for 2 epochs."""
    arch = request.param
    windows, times = periodic_windows(300, T)
    detector = SequenceDetector(
        architecture=arch,
        window=T,
        hidden_size=8,
        num_layers=2,
        dropout=0.1,
        conv_channels=6,
        kernel_size=3,
        ensemble_members=("rnn", "lstm", "gru", "cnn-lstm"),
        epochs=2,
        batch_size=32,
        progress=False,
    ).fit(windows, times)
    folder = tmp_path_factory.mktemp(arch)
    path = folder / "model.onnx"
    info = detector.export_onnx(path, {"train_size": {"hosts": 1, "connections": 9000}})
    model = OnnxModel.load(path)
    assert model.info == info
    return detector, model, path


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 37])
def test_onnx_matches_torch(exported, batch):
    detector, model, _ = exported
    normal, _ = periodic_windows(batch, T, seed=3)
    # Also traffic unlike training: a host far busier than ever seen, and zeros.
    odd = normal.copy()
    odd[: batch // 2] *= 1000
    odd[batch // 2 :, :, ::3] = 0
    for windows in (normal, odd):
        error, residual = model.score(windows)
        np.testing.assert_allclose(error, detector.score(windows), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(residual, detector.residuals(windows), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_file_is_self_contained_with_the_contract_signature(exported):
    detector, model, path = exported
    assert [p.name for p in path.parent.iterdir()] == ["model.onnx"]  # no side files
    proto = onnx.load(path, load_external_data=False)
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in proto.graph.initializer)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert all(not node.metadata_props for node in proto.graph.node)  # debug info stripped
    info = model.info
    assert info.architecture == detector.architecture
    assert info.window == T
    assert info.threshold == pytest.approx(detector.threshold_)
    assert info.error_mean == pytest.approx(detector.error_mean_)
    assert info.error_std == pytest.approx(detector.error_std_)
    assert info.train_size == {
        "windows": 300,
        "hosts": 1,
        "intervals": 300,
        "connections": 9000,
        "training_windows": 240,
        "validation_windows": 60,
    }


@pytest.mark.slow
def test_training_errors_reproduce_from_the_file(exported):
    detector, model, _ = exported
    windows, times = periodic_windows(300, T)
    train = windows[times <= times.min() + 0.8 * (times.max() - times.min())]
    error, _ = model.score(train)
    np.testing.assert_allclose(error, detector.training_errors_, rtol=1e-4, atol=1e-4)
    assert error.mean() + 3 * error.std() == pytest.approx(model.info.threshold, rel=1e-4)
