"""``seqwatch train`` / ``evaluate`` / ``demo``: argument parsing and a real training run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from seqwatch.sidecar.cli import build_parser, main
from seqwatch.training.demo import DATA_DIR, TRAIN_FILE

TRAIN_DATA = str(DATA_DIR / TRAIN_FILE)


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_train_defaults():
    args = parse("train", "a.log", "b.log")
    assert args.data == ["a.log", "b.log"]
    assert (args.arch, args.interval, args.window, args.k, args.quantile) == (
        "lstm",
        60.0,
        16,
        3.0,
        None,
    )
    assert args.labels == [] and args.out is None and args.out_dir is None
    assert not args.exclude_attacked and not args.strict


def test_train_options():
    args = parse(
        "train", "x.log", "--arch", "all", "--out-dir", "models", "--quantile", "0.99",
        "--interval", "10", "--window", "8", "--labels", "l1.tsv", "l2.tsv",
        "--until", "+9m", "--removal-delay", "tcp_inactivity=600", "--exclude-attacked",
    )  # fmt: skip
    assert args.arch == "all" and args.out_dir == Path("models") and args.quantile == 0.99
    assert (args.interval, args.window, args.until) == (10.0, 8, "+9m")
    assert args.labels == ["l1.tsv", "l2.tsv"]
    assert args.removal_delay == [("tcp_inactivity", 600.0)]


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "x.log", "--quantile", "1.5"],
        ["train", "x.log", "--k", "2", "--quantile", "0.9"],
        ["train", "x.log", "--out", "m.onnx", "--out-dir", "d"],
        ["train", "x.log", "--arch", "transformer"],
        ["train", "x.log", "--window", "0"],
        ["train", "x.log", "--until", "yesterday"],
        ["train", "x.log", "--removal-delay", "tcp_close"],
        ["train"],
        ["evaluate", "--baseline", "knn", "m.onnx", "x.log"],
    ],
)
def test_bad_arguments_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_evaluate_and_demo_arguments():
    args = parse(
        "evaluate", "a.onnx", "b.onnx", "x.log", "--baseline", "zscore", "--baseline",
        "iforest", "--baseline-train", "t.log", "--out", "res", "--since", "+540",
    )  # fmt: skip
    assert args.inputs == ["a.onnx", "b.onnx", "x.log"]
    assert args.baseline == ["zscore", "iforest"] and args.baseline_train == ["t.log"]
    assert args.out == Path("res") and args.since == "+540"
    demo = parse("demo", "--arch", "lstm", "--epochs", "3")
    assert (demo.arch, demo.epochs, demo.out) == ("lstm", 3, None)


def test_registering_the_commands_imports_no_torch():
    code = (
        "import sys; from seqwatch.sidecar.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'onnxruntime', 'matplotlib', 'sklearn') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_train_writes_a_model_file(tmp_path):
    from seqwatch.sidecar.modelfile import OnnxModel

    out = tmp_path / "m.onnx"
    argv = ["train", TRAIN_DATA, "--arch", "gru", "--interval", "10", "--window", "4"]
    argv += ["--epochs", "2", "--hidden-size", "8", "--quantile", "0.99", "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    info = OnnxModel.load(out).info
    assert (info.architecture, info.interval, info.window) == ("gru", 10.0, 4)
    assert info.threshold_method == "quantile:0.99"
    assert info.train_size["connections"] == 840  # every row of the bundled slice
    assert info.train_size["hosts"] > 10
    summary = json.loads((tmp_path / "m.training.json").read_text())
    assert summary["models"][0]["file"] == str(out)
    assert (tmp_path / "m.training_loss.png").stat().st_size > 0


def test_train_errors(tmp_path, capsys):
    assert main(["train", TRAIN_DATA, "--arch", "all", "--out", str(tmp_path / "m.onnx")]) == 1
    assert "--out-dir" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.log")]) == 1
    assert "no such file" in capsys.readouterr().err
    argv = ["train", TRAIN_DATA, "--interval", "10", "--until", "1000", "--no-progress"]
    assert main(argv) == 1
    assert "no training windows" in capsys.readouterr().err
