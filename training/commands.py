"""``seqwatch train``, ``seqwatch evaluate`` and ``seqwatch demo``.

:func:`register` only declares arguments: torch, onnxruntime and matplotlib are imported
inside the handlers, so ``seqwatch --help`` stays instant and a runtime-only install
still lists these commands.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from seqwatch.sidecar.cli import CommandError

log = logging.getLogger("seqwatch.training")

ARCH_CHOICES = ("rnn", "lstm", "gru", "cnn-lstm", "ensemble", "all")
BASELINE_CHOICES = ("zscore", "zscore-l2", "iforest")


# --- argument helpers ----------------------------------------------------------------


def _quantile(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"quantile must be between 0 and 1, got {text}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _time(text: str) -> str:
    from seqwatch.training.dataset import parse_time

    try:
        parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _delay(text: str) -> tuple[str, float]:
    name, sep, seconds = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=SECONDS, got {text!r}")
    try:
        return name.strip(), float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {seconds!r}") from None


def _add_data_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--labels",
        nargs="+",
        default=[],
        metavar="FILE",
        help="label files (lab2 labels.tsv / attack_uids.tsv, host+time-range files); "
        "label columns inside conn.log are read anyway",
    )
    p.add_argument(
        "--since",
        type=_time,
        metavar="TIME",
        help=f"use only {what} windows whose predicted interval starts at or after TIME "
        "(epoch seconds, ISO 8601, or +N[s|m|h] from each capture's first window)",
    )
    p.add_argument("--until", type=_time, metavar="TIME", help=f"... and before TIME ({what})")
    p.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first malformed line instead of counting it",
    )
    p.add_argument(
        "--exclude-attacked",
        action="store_true",
        help="leave windows of attack targets out of the normal (training) windows too: "
        "right for labelled lab attacks, wrong where every inbound connection of an exposed "
        "host is labelled malicious",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(sub: argparse._SubParsersAction) -> None:
    """Declare ``train``, ``evaluate`` and ``demo`` on the ``seqwatch`` parser."""
    _register_train(sub)
    _register_evaluate(sub)
    _register_demo(sub)


def _register_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train models on normal traffic and write ONNX model files",
        description="Read conn.log / eve.json archives, build per-host windows, train "
        "next-interval predictors on the normal windows (label 0 where the data is labelled, "
        "else all) and write one self-contained ONNX model file per architecture. Train on "
        "some captures (or a time range) and evaluate on others.",
    )
    p.add_argument(
        "data", nargs="+", metavar="DATA", help="conn.log/eve.json files or rotated trees"
    )
    p.add_argument(
        "--arch", choices=ARCH_CHOICES, default="lstm", help="architecture (all: each one)"
    )
    p.add_argument("--interval", type=_positive, default=60.0, help="Δ, seconds per interval (60)")
    p.add_argument("--window", type=_positive_int, default=16, help="T, intervals of context (16)")
    p.add_argument(
        "--distinct-cap", type=_positive_int, default=1024, help="cap C on distinct counts"
    )
    p.add_argument(
        "--removal-delay",
        type=_delay,
        action="append",
        default=[],
        metavar="NAME=SECONDS",
        help="override one Zeek removal delay (tcp_attempt, tcp_close, tcp_inactivity, "
        "long_inactivity, dns, udp_inactivity, icmp_inactivity); must match the sensor",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--out", type=Path, help="model file (one architecture)")
    out.add_argument("--out-dir", type=Path, help="directory for ARCH.onnx files (default .)")
    thr = p.add_mutually_exclusive_group()
    thr.add_argument("--k", type=float, default=3.0, help="θ = μ_E + k·σ_E of training errors (3)")
    thr.add_argument(
        "--quantile", type=_quantile, help="θ = this quantile of training errors instead"
    )
    p.add_argument("--epochs", type=_positive_int, default=30)
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--hidden-size", type=_positive_int, default=64)
    p.add_argument("--num-layers", type=_positive_int, default=1)
    p.add_argument("--learning-rate", type=_positive, default=1e-3)
    p.add_argument(
        "--patience", type=_positive_int, default=5, help="early-stopping patience (epochs)"
    )
    p.add_argument("--seed", type=int, default=0)
    _add_data_options(p, "training")
    p.set_defaults(handler=run_train)


def _register_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score labelled captures with model files (and baselines); write the comparison",
        description="Score the windows of labelled captures with one or more model files "
        "(onnxruntime, no torch) at each model's own θ and report the paper's Table 1 "
        "(mean error, σ, θ, % flagged, TPR, FPR) plus precision, F1, ROC-AUC, PR-AUC and "
        "recall per detailed label and per source host, as JSON, Markdown and PNG plots.",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="MODEL.onnx|DATA",
        help="model files (*.onnx) followed by the captures to evaluate on",
    )
    p.add_argument("--out", type=Path, help="write results.json, table.md and plots here")
    p.add_argument("--title", default="", help="title for the table and plots")
    p.add_argument("--no-plots", action="store_true", help="write results.json and table.md only")
    p.add_argument(
        "--baseline",
        choices=BASELINE_CHOICES,
        action="append",
        default=[],
        help="also evaluate a non-recurrent baseline fitted on --baseline-train (repeatable)",
    )
    p.add_argument(
        "--baseline-train",
        nargs="+",
        default=[],
        metavar="DATA",
        help="captures whose normal windows the baselines are fitted on "
        "(the models' training data)",
    )
    p.add_argument("--baseline-since", type=_time, metavar="TIME")
    p.add_argument("--baseline-until", type=_time, metavar="TIME")
    p.add_argument("--k", type=float, default=3.0, help="k of the baselines' θ = μ + kσ (3)")
    p.add_argument("--seed", type=int, default=0, help="isolation forest seed")
    p.add_argument(
        "--interval", type=_positive, default=60.0, help="Δ when only baselines are evaluated"
    )
    p.add_argument(
        "--window", type=_positive_int, default=16, help="T when only baselines are evaluated"
    )
    _add_data_options(p, "test")
    p.set_defaults(handler=run_evaluate)


def _register_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="train a small model on bundled real traffic, replay an attack, print notices",
        description="Self-contained demonstration on real data shipped with seqwatch: trains "
        "a small GRU on benign lab traffic, replays a capture with a horizontal scan through "
        "the sidecar's pipeline and prints the notices it would raise (notice.log TSV).",
    )
    p.add_argument(
        "--out", type=Path, help="keep the model and notice.log here (default: temp dir)"
    )
    p.add_argument("--arch", choices=ARCH_CHOICES[:-2], default="gru")
    p.add_argument("--epochs", type=_positive_int, default=None, help="training epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=run_demo)


# --- shared steps --------------------------------------------------------------------


def _feature_config(args):
    from seqwatch.sidecar.schema import FeatureConfig, RemovalDelays

    try:
        delays = RemovalDelays.from_dict(dict(getattr(args, "removal_delay", [])))
        return FeatureConfig(args.interval, args.distinct_cap, delays)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _load(paths, config, window, args, what: str):
    """Build windows, turning input problems into one-line errors."""
    from seqwatch.sidecar.problems import InputError
    from seqwatch.training import dataset

    for path in paths:
        if not Path(path).exists():
            raise CommandError(f"{path}: no such file or directory")
    try:
        return dataset.build(
            paths,
            config=config,
            window=window,
            label_files=args.labels,
            strict=args.strict,
            progress=not args.no_progress,
        )
    except (InputError, OSError) as exc:
        raise CommandError(f"reading {what} data: {exc}") from None


def _select(data, since, until, what: str):
    from seqwatch.training.dataset import time_mask

    mask = time_mask(data, since, until)
    if not mask.any():
        raise CommandError(f"no {what} windows between {since or 'start'} and {until or 'end'}")
    return mask


def _quiet_exporter_logs() -> None:
    # The ONNX exporter's optimizer logs every rewrite at INFO: noise for an operator.
    for name in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.WARNING)


# --- train -----------------------------------------------------------------------------


def run_train(args) -> int:
    from seqwatch.training import dataset

    _quiet_exporter_logs()

    archs = ["rnn", "lstm", "gru", "cnn-lstm", "ensemble"] if args.arch == "all" else [args.arch]
    if args.out and len(archs) > 1:
        raise CommandError("--arch all writes one file per architecture: use --out-dir")
    config = _feature_config(args)
    data = _load(args.data, config, args.window, args, "training")
    mask = _select(data, args.since, args.until, "training") & data.normal_mask(
        args.exclude_attacked
    )
    train = data.select(mask)
    if len(train) < 2:
        raise CommandError(f"only {len(train)} normal training window(s): need more data")
    for tag, counts in dataset.describe_split(train).items():
        kind = (
            "labelled: benign windows only"
            if data.stats[tag]["labelled"]
            else "unlabelled: all windows"
        )
        log.info(
            "training windows from %s (%s): %d windows, %d hosts, %s .. %s",
            tag,
            kind,
            counts["windows"],
            counts["hosts"],
            counts["first"],
            counts["last"],
        )
    out_dir = args.out.parent if args.out else (args.out_dir or Path("."))
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"data": dataset.describe_split(train), "models": []}
    histories = {}
    for arch in archs:
        path = args.out or out_dir / f"{arch}.onnx"
        entry = train_one(arch, train, data, config, args, path)
        summary["models"].append(entry)
        histories[arch] = entry.pop("history")
    stem = args.out.stem + "." if args.out else ""
    (out_dir / f"{stem}training.json").write_text(json.dumps(summary, indent=1) + "\n")
    from seqwatch.training.plots import training_history

    training_history(out_dir / f"{stem}training_loss.png", histories)
    return 0


def train_one(arch, train, data, config, args, path: Path) -> dict:
    """Fit one architecture on ``train`` and write its model file; return a summary."""
    from seqwatch.training.detector import SequenceDetector

    detector = SequenceDetector(
        architecture=arch,
        window=args.window,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        patience=args.patience,
        k=args.k,
        threshold="std" if args.quantile is None else args.quantile,
        seed=args.seed,
        progress=not args.no_progress,
    )
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        detector.fit(train.windows, train.times)
    except ValueError as exc:
        raise CommandError(f"training {arch}: {exc}") from None
    # Wall time depends on what else the machine runs; CPU time (all threads) does not.
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    whole = not (args.since or args.until)
    info = detector.export_onnx(
        path,
        {
            "interval": config.interval,
            "distinct_cap": config.distinct_cap,
            "removal_delays": config.delays,
            "train_size": {
                "hosts": len(set(train.hosts.tolist())),
                # Connections are only known per capture; with a time range they overcount.
                "connections": sum(s["connections"] for s in data.stats.values())
                if whole
                else None,
            },
        },
    )
    log.info(
        "%s: %d epochs (best %d) in %.1f s (%.1f s CPU), μ_E=%.4g σ_E=%.4g θ=%.4g -> %s",
        arch,
        detector.epochs_run_,
        detector.best_epoch_,
        seconds,
        cpu_seconds,
        info.error_mean,
        info.error_std,
        info.threshold,
        path,
    )
    return {
        "architecture": arch,
        "file": str(path),
        "model_id": info.model_id,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "epochs_run": detector.epochs_run_,
        "best_epoch": detector.best_epoch_,
        "error_mean": info.error_mean,
        "error_std": info.error_std,
        "threshold": info.threshold,
        "threshold_method": info.threshold_method,
        "history": detector.history_,
    }


# --- evaluate --------------------------------------------------------------------------


def run_evaluate(args) -> int:
    from seqwatch.sidecar.modelfile import ModelError
    from seqwatch.sidecar.schema import FeatureConfig, RemovalDelays
    from seqwatch.training import evaluate

    model_paths = [p for p in args.inputs if p.endswith(".onnx")]
    data_paths = [p for p in args.inputs if not p.endswith(".onnx")]
    if not data_paths:
        raise CommandError("no data to evaluate on: give captures after the model files")
    if not model_paths and not args.baseline:
        raise CommandError("nothing to evaluate: give model files (*.onnx) or --baseline")
    if args.baseline and not args.baseline_train:
        raise CommandError("--baseline needs --baseline-train DATA (the models' training data)")
    detectors = []
    try:
        detectors = [evaluate.OnnxDetector(p) for p in model_paths]
    except ModelError as exc:
        raise CommandError(str(exc)) from None
    names = [d.name for d in detectors]
    if len(set(names)) != len(names):
        # Same file names from different folders: use the parent folder too.
        for d in detectors:
            d.name = f"{d.path.parent.name}/{d.path.stem}"
    if detectors:
        first = detectors[0].info
        setting = (first.interval, first.window, first.distinct_cap, first.removal_delays)
        for d in detectors[1:]:
            i = d.info
            if (i.interval, i.window, i.distinct_cap, i.removal_delays) != setting:
                raise CommandError(
                    f"{d.path} uses Δ={i.interval:g}s T={i.window}, {detectors[0].path} "
                    f"Δ={first.interval:g}s T={first.window} (or other cap/delays): "
                    "evaluate them separately"
                )
        config = FeatureConfig(
            first.interval, first.distinct_cap, RemovalDelays.from_dict(first.removal_delays)
        )
        window = first.window
    else:
        config = FeatureConfig(args.interval)
        window = args.window
    test = _load(data_paths, config, window, args, "test")
    test = test.select(_select(test, args.since, args.until, "test"))

    if args.baseline:
        detectors += _fit_baselines(args.baseline, config, window, args)

    results, scores = evaluate.evaluate(detectors, test, progress=not args.no_progress)
    results["split"] = {
        "test": {"data": data_paths, "since": args.since, "until": args.until},
        "baseline_train": {
            "data": args.baseline_train,
            "since": args.baseline_since,
            "until": args.baseline_until,
        },
        "labels": args.labels,
    }
    from seqwatch.training import report

    if args.out:
        written = report.write(
            args.out, results, scores, test, title=args.title, figures=not args.no_plots
        )
        log.info("wrote %s", ", ".join(str(p) for p in written))
    print(report.table_markdown(results, args.title))
    return 0


def _fit_baselines(kinds, config, window: int, args) -> list:
    """Fit each baseline on the normal windows of ``--baseline-train`` (read once)."""
    from seqwatch.training.baseline import make_baseline

    train = _load(args.baseline_train, config, window, args, "baseline training")
    mask = _select(train, args.baseline_since, args.baseline_until, "baseline training")
    train = train.select(mask & train.normal_mask(args.exclude_attacked))
    if len(train) < 2:
        raise CommandError(f"only {len(train)} normal window(s) to fit the baselines on")
    fitted = []
    for kind in dict.fromkeys(kinds):
        baseline = make_baseline(kind, k=args.k, seed=args.seed).fit(train.windows)
        log.info(
            "%s baseline: fitted on %d normal windows, θ=%.4g",
            baseline.name,
            len(train),
            baseline.threshold,
        )
        fitted.append(baseline)
    return fitted


# --- demo ------------------------------------------------------------------------------


def run_demo(args) -> int:
    from seqwatch.training import demo

    _quiet_exporter_logs()
    return demo.run(
        out=args.out,
        arch=args.arch,
        epochs=args.epochs,
        seed=args.seed,
        progress=not args.no_progress,
    )
