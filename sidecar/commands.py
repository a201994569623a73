"""``seqwatch run``, ``seqwatch replay`` and ``seqwatch worker``.

``run`` assembles the sidecar from its configuration (:func:`build_runtime`: model,
scorer or worker pool, policy, pipeline, spool, metrics, enforcer, hot reload) and hands
it to one adapter: the file tail with ``--tail PATH`` (or ``[tail] path``), otherwise the
live WebSocket client, :func:`seqwatch.sidecar.live.run_live`. ``run --check`` builds
nothing long-lived: it validates the configuration and the model and exits 0 or 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seqwatch.sidecar.cli import CommandError

log = logging.getLogger("seqwatch")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``run``, ``replay`` and ``worker``."""
    _register_run(subparsers)
    _register_replay(subparsers)
    _register_worker(subparsers)


# -- run ------------------------------------------------------------------------------------------
def _register_run(subparsers) -> None:
    run = subparsers.add_parser(
        "run",
        help="run the sidecar (Zeek WebSocket client, or --tail a conn.log / eve.json)",
        description="Score per-host traffic windows live and report verdicts. Settings come "
        "from the config file, then SEQWATCH_* environment variables, then these flags.",
    )
    run.add_argument(
        "--config",
        type=Path,
        help="TOML config (default: $SEQWATCH_CONFIG, else /etc/seqwatch/seqwatch.toml if present)",
    )
    run.add_argument(
        "--check", action="store_true", help="validate the config and the model, then exit 0/1"
    )
    run.add_argument("--tail", type=Path, metavar="PATH", help="follow this conn.log or eve.json")
    run.add_argument("--model", type=Path, help="model file ([model] path)")
    run.add_argument("--workers", type=int, help="scoring worker processes ([model] workers)")
    run.add_argument(
        "--worker-bind", help="also accept remote workers here, e.g. tcp://0.0.0.0:5557"
    )
    run.add_argument("--batch-size", type=int, help="windows per scoring batch")
    run.add_argument("--zeek-url", help="Zeek WebSocket URL ([zeek] url)")
    run.add_argument("--notices", type=Path, help="notice log / spool path ([notices] path)")
    run.add_argument("--notices-format", choices=("tsv", "json"), help="notice log format")
    run.add_argument("--threshold", type=float, help="θ override ([policy] threshold)")
    run.add_argument("--max-hosts", type=int, help="hosts tracked at most ([buffers] max_hosts)")
    run.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    run.set_defaults(handler=_run)


def _run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model.path": args.model,
        "model.workers": args.workers,
        "model.worker_bind": args.worker_bind,
        "model.batch_size": args.batch_size,
        "zeek.url": args.zeek_url,
        "notices.path": args.notices,
        "notices.format": args.notices_format,
        "policy.threshold": args.threshold,
        "buffers.max_hosts": args.max_hosts,
        "metrics.port": args.metrics_port,
        "tail.path": args.tail,
    }


def read_config(path: Path | None, overrides: dict[str, Any] | None = None):
    """Load the configuration, turning ConfigError into a one-line CommandError."""
    from seqwatch.sidecar.config import ConfigError, default_config_path, load_config

    try:
        return load_config(path if path is not None else default_config_path(), overrides=overrides)
    except ConfigError as exc:
        raise CommandError(str(exc)) from None


def load_model(path: Path | None, *, threads: int = 1, batch_size: int = 4096):
    """Load and test-score the model named by ``[model] path``; CommandError if unusable."""
    from seqwatch.sidecar.modelfile import ModelError, OnnxModel
    from seqwatch.sidecar.reload import _test_score

    if path is None:
        raise CommandError(
            "no model: set [model] path in the config, SEQWATCH_MODEL, or --model PATH"
        )
    try:
        model = OnnxModel.load(path, threads=threads, max_batch=batch_size)
        _test_score(model)
    except (ModelError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    return model


@dataclass
class Runtime:
    """Everything ``seqwatch run`` assembles; :meth:`close` releases it in order."""

    config: Any
    model: Any
    pipeline: Any
    spool: Any
    metrics: Any
    enforcer: Any = None
    reloader: Any = None
    closers: list = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self.closers):
            try:
                close()
            except Exception:  # one failing part must not keep the others open
                log.exception("error while shutting down")


def build_runtime(
    config,
    *,
    serve_metrics: bool = True,
    watch_model: bool = True,
    with_spool: bool = True,
    with_enforcer: bool = True,
) -> Runtime:
    """Assemble the sidecar's parts from a validated configuration.

    Replay and tests switch off what they do not need (metrics server, reload watcher,
    spool, enforcer); ``seqwatch run`` uses everything the configuration enables.
    """
    from seqwatch.sidecar.metrics import Metrics
    from seqwatch.sidecar.pipeline import Pipeline
    from seqwatch.sidecar.policy import VerdictPolicy
    from seqwatch.sidecar.scoring import LocalScorer
    from seqwatch.sidecar.spool import Spool

    m = config.model
    model = load_model(m.path, threads=m.threads, batch_size=m.batch_size)
    closers: list = []
    metrics = Metrics()
    if m.workers or m.worker_bind:
        from seqwatch.sidecar.workers import WorkerPool

        inner = WorkerPool(model, m.path, m.workers, bind=m.worker_bind, threads=m.threads)
    else:
        inner = LocalScorer(model, m.batch_size)
    warmup = config.policy.warmup
    pipeline = Pipeline(
        model,
        VerdictPolicy(config.policy_config()),
        max_hosts=config.buffers.max_hosts,
        batch_size=m.batch_size,
        scorer=metrics.timed(inner),
        warmup=model.info.window if warmup is None else warmup,
    )
    closers.append(pipeline.close)
    spool = None
    if with_spool:
        n = config.notices
        if n.path is None:
            raise CommandError("no notice log: set [notices] path (it is also the verdict spool)")
        try:
            spool = Spool(n.path, n.format, fsync=n.fsync, max_pending=n.max_pending)
        except OSError as exc:
            raise CommandError(f"cannot open the notice log {n.path}: {exc.strerror}") from None
        closers.append(spool.close)
    metrics.bind(pipeline, spool)
    if serve_metrics and config.metrics.port is not None:
        port = metrics.serve(config.metrics.listen, config.metrics.port)
        log.info("metrics on http://%s:%d/metrics", config.metrics.listen, port)
        closers.append(metrics.close)
    enforcer = _enforcer(config) if with_enforcer else None
    if enforcer is not None:
        closers.append(enforcer.close)
    reloader = None
    if watch_model and m.reload:
        from seqwatch.sidecar.reload import ModelReloader

        def count(ok: bool, _message: str) -> None:
            metrics.model_reloads.labels("ok" if ok else "refused").inc()

        reloader = ModelReloader(
            m.path, pipeline, threads=m.threads, max_batch=m.batch_size, on_result=count
        )
        reloader.start()
        closers.append(reloader.stop)
    return Runtime(config, model, pipeline, spool, metrics, enforcer, reloader, closers)


def _enforcer(config):
    from seqwatch.sidecar.mitigation.config import Mode

    if config.mitigation is None or config.mitigation.mode is Mode.OFF:
        return None
    from seqwatch.sidecar.mitigation.enforcer import Enforcer
    from seqwatch.sidecar.mitigation.firewall import MitigationUnavailable

    enforcer = Enforcer(config.mitigation)
    try:
        enforcer.check()
        enforcer.start()
    except MitigationUnavailable as exc:
        raise CommandError(f"mitigation: {exc}") from None
    log.info("mitigation: %s", config.mitigation.mode.value)
    return enforcer


def _run(args: argparse.Namespace) -> int:
    config = read_config(args.config, _run_overrides(args))
    if args.check:
        return check(config)
    runtime = build_runtime(config)
    try:
        if config.tail.path is not None:
            return _run_tail(runtime)
        return _run_live(runtime)
    finally:
        runtime.close()


def check(config, out=None) -> int:
    """``run --check``: config, model, notice log, TLS files, mitigation; 0 if all usable."""
    from seqwatch.sidecar.mitigation.config import Mode

    out = out if out is not None else sys.stdout
    print(f"config: {config.source}: ok", file=out)
    model = load_model(
        config.model.path, threads=config.model.threads, batch_size=config.model.batch_size
    )
    info = model.info
    print(
        f"model: {config.model.path}: ok (id {info.model_id}, {info.architecture}, "
        f"T={info.window}, Δ={info.interval:g}s, θ={info.threshold:.4g})",
        file=out,
    )
    notices = config.notices.path
    if notices is None:
        raise CommandError("notices.path: not set (it is also the verdict spool)")
    directory = notices.parent
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    if not os.access(directory, os.W_OK):
        raise CommandError(f"notices.path: {notices}: {directory} is not writable")
    print(f"notices: {notices} ({config.notices.format}): writable", file=out)
    for key in ("tls_ca", "tls_cert", "tls_key"):
        path = getattr(config.zeek, key)
        if path is not None and not path.is_file():
            raise CommandError(f"zeek.{key}: {path} does not exist")
    if config.tail.path is not None:
        where = "exists" if config.tail.path.exists() else "does not exist yet (will be waited for)"
        print(f"tail: {config.tail.path} {where}", file=out)
    else:
        print(f"zeek: {config.zeek.url}", file=out)
    mitigation = config.mitigation
    if mitigation is not None and mitigation.mode is not Mode.OFF:
        from seqwatch.sidecar.mitigation.enforcer import Enforcer
        from seqwatch.sidecar.mitigation.firewall import MitigationUnavailable

        try:
            Enforcer(mitigation).check()
        except MitigationUnavailable as exc:
            raise CommandError(f"mitigation: {exc}") from None
        print(f"mitigation: {mitigation.mode.value}: ok", file=out)
    print("configuration ok", file=out)
    return 0


def _run_tail(runtime: Runtime) -> int:
    from seqwatch.sidecar.tail import Tailer

    config = runtime.config
    fmt = None if config.tail.format == "auto" else config.tail.format
    tailer = Tailer(
        config.tail.path,
        runtime.pipeline,
        spool=runtime.spool,
        enforcer=runtime.enforcer,
        slack=config.tail.slack,
        fmt=fmt,
        start=config.tail.start,
        poll_interval=config.tail.poll_interval,
    )
    stop = threading.Event()

    def on_stop(signum, _frame) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()
        tailer.wake()

    def on_hup(_signum, _frame) -> None:
        tailer.request_reopen()
        if runtime.reloader is not None:
            threading.Thread(target=runtime.reloader.check_now, daemon=True).start()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    log.info("following %s with model %s", config.tail.path, runtime.model.info.model_id)
    tailer.run(stop)
    return 0


def _run_live(runtime: Runtime) -> int:
    import asyncio

    try:
        from seqwatch.sidecar.live import run_live
    except ModuleNotFoundError as exc:
        if exc.name != "seqwatch.sidecar.live":
            raise
        raise CommandError("the live WebSocket client is not installed; use --tail") from None
    return int(
        asyncio.run(
            run_live(
                runtime.config, runtime.pipeline, runtime.spool, runtime.metrics, runtime.enforcer
            )
        )
        or 0
    )


# -- replay ---------------------------------------------------------------------------------------
def _register_replay(subparsers) -> None:
    replay = subparsers.add_parser(
        "replay",
        help="push conn.log / eve.json archives through the live pipeline (backtesting)",
        description="Replay archives through the same pipeline and policy as `seqwatch run` "
        "and print (or write) the verdicts it would have raised.",
    )
    replay.add_argument("files", nargs="+", type=Path, metavar="FILE", help="files or directories")
    replay.add_argument("--config", type=Path, help="take model and policy settings from here")
    replay.add_argument("--model", type=Path, help="model file (default: [model] path)")
    replay.add_argument("--out", type=Path, help="also write the verdicts as a notice log")
    replay.add_argument("--format", choices=("tsv", "json"), default="tsv", help="--out format")
    replay.add_argument("--workers", type=int, help="scoring worker processes")
    replay.add_argument("--threshold", type=float, help="θ override")
    replay.add_argument(
        "--lateness",
        type=float,
        default=None,
        help="seconds past an interval's end before it is complete (default 60; 5 = like the tail)",
    )
    replay.add_argument("--quiet", action="store_true", help="print only the summary")
    replay.add_argument("--strict", action="store_true", help="stop at the first malformed line")
    replay.set_defaults(handler=_replay)


def _replay(args: argparse.Namespace) -> int:
    from seqwatch.sidecar.features import DEFAULT_LATENESS
    from seqwatch.sidecar.notices import NoticeWriter
    from seqwatch.sidecar.problems import InputError, ProblemReport
    from seqwatch.sidecar.replay import format_verdict, replay_files

    overrides = {
        "model.path": args.model,
        "model.workers": args.workers,
        "policy.threshold": args.threshold,
    }
    config = read_config(args.config, overrides)
    if config.sources.get("policy.warmup") == "default":
        # Backtesting scores from the first interval: a warm-up only makes sense for a
        # restarted live service (unless the config sets one explicitly).
        config = dataclasses.replace(config, policy=dataclasses.replace(config.policy, warmup=0))
    runtime = build_runtime(
        config, serve_metrics=False, watch_model=False, with_spool=False, with_enforcer=False
    )
    report = ProblemReport()
    writer = NoticeWriter(args.out, args.format, fsync="never") if args.out else None
    count = 0
    try:
        lateness = DEFAULT_LATENESS if args.lateness is None else args.lateness
        for verdict in replay_files(
            args.files, runtime.pipeline, lateness=lateness, report=report, strict=args.strict
        ):
            count += 1
            if not args.quiet:
                print(format_verdict(verdict))
            if writer is not None:
                writer.write([verdict])
    except InputError as exc:
        raise CommandError(str(exc)) from None
    finally:
        if writer is not None:
            writer.close()
        runtime.close()
    stats = runtime.pipeline.stats
    print(
        f"replay: {count} verdicts in {stats.intervals} intervals, {stats.host_intervals} host "
        f"windows scored (model {runtime.model.info.model_id}, θ={runtime.pipeline.threshold:.4g})",
        file=sys.stderr,
    )
    if report:
        print(f"replay: input problems:\n{report.summary()}", file=sys.stderr)
    return 0


# -- worker ---------------------------------------------------------------------------------------
def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by ``seqwatch worker`` and the local worker processes' entry point."""
    parser.add_argument(
        "--connect", required=True, help="the sidecar's worker endpoint, e.g. tcp://HOST:5557"
    )
    parser.add_argument(
        "--model", required=True, type=Path, help="model file (the same as the sidecar's)"
    )
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--capacity", type=int, default=2, help="batches accepted at once")
    parser.add_argument(
        "--heartbeat", type=float, default=1.0, help="seconds between hellos while idle"
    )


def _register_worker(subparsers) -> None:
    worker = subparsers.add_parser(
        "worker",
        help="score batches for a sidecar on another machine (ZeroMQ)",
        description="Join a sidecar's scoring pool: connect to its worker endpoint "
        "([model] worker_bind) and score the batches it sends with the same model file.",
    )
    add_worker_arguments(worker)
    worker.set_defaults(handler=_worker)


def _worker(args: argparse.Namespace) -> int:
    from seqwatch.sidecar.modelfile import ModelError
    from seqwatch.sidecar.workers import run_worker

    try:
        return run_worker(
            args.connect,
            args.model,
            threads=args.threads,
            capacity=args.capacity,
            heartbeat=args.heartbeat,
        )
    except ModelError as exc:
        raise CommandError(str(exc)) from None
