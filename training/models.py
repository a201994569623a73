"""Next-interval predictors: the paper's RNN, LSTM, GRU, CNN+LSTM hybrid and ensemble.

Every predictor maps ``[batch, T, d]`` (already log1p'd and standardized) to the predicted
next vector ``[batch, d]``. They are plain ``nn.Module`` s without state between calls, so
:mod:`seqwatch.training.export` can wrap any of them in the same scoring graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

RECURRENT_CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
ARCHITECTURES = ("rnn", "lstm", "gru", "cnn-lstm", "ensemble")
MEMBER_ARCHITECTURES = ("rnn", "lstm", "gru", "cnn-lstm")

# The hyperparameters each architecture uses: the registry passes exactly these, so a
# model file's recorded hyperparameters are the ones that shaped the network.
HYPERPARAMETERS: dict[str, tuple[str, ...]] = {
    "rnn": ("hidden_size", "num_layers", "dropout"),
    "lstm": ("hidden_size", "num_layers", "dropout"),
    "gru": ("hidden_size", "num_layers", "dropout"),
    "cnn-lstm": ("hidden_size", "num_layers", "dropout", "conv_channels", "kernel_size"),
    "ensemble": (
        "members",
        "hidden_size",
        "num_layers",
        "dropout",
        "conv_channels",
        "kernel_size",
    ),
}


class RecurrentPredictor(nn.Module):
    """A stacked RNN (Elman, tanh), LSTM or GRU; a linear head reads the last hidden state."""

    def __init__(
        self,
        cell: str,
        n_features: int,
        hidden_size: int = 64,
        num_layers: int = 1,
        dropout: float = 0.0,
        n_outputs: int | None = None,
    ) -> None:
        """``n_outputs`` defaults to ``n_features``: the next vector of the input sequence."""
        super().__init__()
        if cell not in RECURRENT_CELLS:
            raise ValueError(
                f"unknown recurrent cell {cell!r}; choose from {list(RECURRENT_CELLS)}"
            )
        _check_sizes(n_features, hidden_size, num_layers, dropout)
        self.cell = cell
        # torch applies its dropout only between stacked layers; with one layer it would
        # warn and do nothing, so the head's dropout covers that case.
        self.recurrent = RECURRENT_CELLS[cell](
            n_features,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, n_outputs or n_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output, _ = self.recurrent(x)
        return self.head(self.dropout(output[:, -1]))


class CnnLstmPredictor(nn.Module):
    """The paper's hybrid: a 1-D convolution over time extracts local patterns for an LSTM.

    The convolution is causal (padded on the left only) so every step keeps its position
    and sees only itself and earlier steps; the LSTM then runs over all T steps.
    """

    def __init__(
        self,
        n_features: int,
        hidden_size: int = 64,
        num_layers: int = 1,
        dropout: float = 0.0,
        conv_channels: int = 32,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        _check_sizes(n_features, hidden_size, num_layers, dropout)
        if conv_channels < 1 or kernel_size < 1:
            raise ValueError(
                f"conv_channels and kernel_size must be >= 1, got {conv_channels}, {kernel_size}"
            )
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(n_features, conv_channels, kernel_size)
        self.lstm = RecurrentPredictor(
            "lstm", conv_channels, hidden_size, num_layers, dropout, n_outputs=n_features
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [batch, T, d] -> [batch, d, T] for Conv1d, left-pad time by kernel_size - 1.
        local = F.pad(x.transpose(1, 2), (self.kernel_size - 1, 0))
        local = torch.relu(self.conv(local)).transpose(1, 2)
        return self.lstm(local)


class EnsemblePredictor(nn.Module):
    """Several predictors whose outputs are averaged inside one module, so one ONNX graph."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(dim=0)


def _check_sizes(n_features: int, hidden_size: int, num_layers: int, dropout: float) -> None:
    if n_features < 1 or hidden_size < 1 or num_layers < 1:
        raise ValueError(
            "n_features, hidden_size and num_layers must be >= 1, "
            f"got {n_features}, {hidden_size}, {num_layers}"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


def build_model(arch: str, n_features: int, **hparams: Any) -> nn.Module:
    """Build an untrained predictor by architecture name (one of :data:`ARCHITECTURES`).

    ``hparams`` must be among :data:`HYPERPARAMETERS` ``[arch]``; missing ones take the
    class defaults. For ``"ensemble"``, ``members`` names the member architectures
    (default rnn, lstm, gru) and the other hyperparameters apply to every member.
    """
    if arch not in HYPERPARAMETERS:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    unknown = set(hparams) - set(HYPERPARAMETERS[arch])
    if unknown:
        raise TypeError(
            f"architecture {arch!r} does not take {', '.join(sorted(unknown))}; "
            f"it takes {', '.join(HYPERPARAMETERS[arch])}"
        )
    if arch in RECURRENT_CELLS:
        return RecurrentPredictor(arch, n_features, **hparams)
    if arch == "cnn-lstm":
        return CnnLstmPredictor(n_features, **hparams)
    members = tuple(hparams.pop("members", ("rnn", "lstm", "gru")))
    bad = [m for m in members if m not in MEMBER_ARCHITECTURES]
    if bad or not members:
        raise ValueError(
            f"ensemble members must be a non-empty list of {', '.join(MEMBER_ARCHITECTURES)}; "
            f"got {list(members)}"
        )
    return EnsemblePredictor(
        [build_model(m, n_features, **select_hparams(m, hparams)) for m in members]
    )


def select_hparams(arch: str, hparams: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``hparams`` that ``arch`` uses (see :data:`HYPERPARAMETERS`)."""
    if arch not in HYPERPARAMETERS:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    return {k: v for k, v in hparams.items() if k in HYPERPARAMETERS[arch]}
