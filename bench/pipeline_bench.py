"""Live-pipeline figures: throughput, latency, memory per host, scoring workers.

What it measures, in one run on this machine (it prints a Markdown table at the end):

* **throughput**: Zeek's ``SeqWatch::interval_features`` frames (JSON text, 256 hosts per
  chunk, encoded beforehand) -> codec decode -> FeatureMessage -> :class:`Pipeline`
  (windows, batched ONNX, verdict policy) -> verdicts, in host-intervals per second.
  Once sequentially in one thread, and once as ``seqwatch run`` arranges it (decoding on
  one thread, scoring on another). Against raw onnxruntime running the same model file
  with the same session options and batch size on ready-made windows: the ceiling;
  the ratio is the share of it the pipeline keeps (target >= 60 %);
* **latency** from the moment an interval's last chunk arrives (its frame still to
  decode) to its verdicts, p50/p99, at 10k and 100k hosts per interval (target p99 <=
  50 ms at 10k);
* **memory per tracked host**: resident-set growth (``/proc/self/statm``) while 100k
  hosts are decoded and entered into the windows, divided by 100k (target <= 2 KiB);
* **scoring workers** (``seqwatch.sidecar.workers``): pipeline throughput with the
  in-process scorer and with 1 and 2 worker processes.

The model is shaped like the default one (T=16, d=16): a one-layer LSTM (hidden 64)
trained briefly with ``seqwatch.training`` when torch is importable (the weights do not
matter for speed, the graph does), else the test fixture's mean-baseline graph (much
cheaper than an LSTM; the output says which). ``--model PATH`` uses an existing file.
Host vectors are synthetic (gamma-distributed counts, one fixed host set per size).
The machine's load average is printed: on a shared machine, figures vary with it.

Usage::

    python bench/pipeline_bench.py [--model PATH] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import os
import queue
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # onnx_fixture, the torch-free fallback model

from seqwatch.sidecar.codec import decode_frame, encode_event  # noqa: E402
from seqwatch.sidecar.features import IntervalFeatures  # noqa: E402
from seqwatch.sidecar.messages import (  # noqa: E402
    FEATURES_TOPIC,
    FeatureMessage,
    fast_feature_message,
)
from seqwatch.sidecar.modelfile import INPUT_NAME, OnnxModel  # noqa: E402
from seqwatch.sidecar.pipeline import Pipeline  # noqa: E402
from seqwatch.sidecar.replay import as_feature_messages  # noqa: E402
from seqwatch.sidecar.schema import N_FEATURES  # noqa: E402

WINDOW = 16
DELTA = 60.0
BATCH = 4096  # the sidecar's default [model] batch_size
HOSTS_PER_MESSAGE = 256  # main.zeek's default SeqWatch::hosts_per_message
BASE_BIN = 29_000_000


# -- model ----------------------------------------------------------------------------------------
def build_model(directory: Path, given: Path | None) -> tuple[Path, str]:
    """The model file to benchmark and a description of it."""
    if given is not None:
        info = OnnxModel.load(given).info
        return given, f"{given} ({info.architecture}, T={info.window})"
    try:
        from seqwatch.training.detector import SequenceDetector
    except ImportError:
        from onnx_fixture import write_model

        path = write_model(directory / "fixture.onnx", window=WINDOW, interval=DELTA)
        return path, (
            "test fixture graph (log1p, standardize, mean of T steps; torch not installed, "
            "so NOT an LSTM: far cheaper per window than the real default)"
        )
    rng = np.random.default_rng(1)
    train = rng.gamma(2.0, 20.0, size=(2048, WINDOW + 1, N_FEATURES)).astype(np.float32)
    detector = SequenceDetector(
        "lstm", window=WINDOW, hidden_size=64, epochs=1, patience=None, progress=False
    )
    detector.fit(train)
    path = directory / "lstm.onnx"
    detector.export_onnx(path, {"interval": DELTA})
    return path, "LSTM, 1 layer, hidden 64, T=16, d=16 (seqwatch.training, 1 epoch on synthetic)"


# -- traffic --------------------------------------------------------------------------------------
def hosts_of(n: int) -> list[str]:
    return [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(n)]


def interval(hosts: list[str], b: int, rng: np.random.Generator) -> IntervalFeatures:
    values = np.round(rng.gamma(1.5, 40.0, size=(len(hosts), N_FEATURES)))
    return IntervalFeatures(BASE_BIN + b, DELTA, hosts, values)


def frames_of(iv: IntervalFeatures) -> list[str]:
    """The interval as Zeek publishes it: text frames of 256 hosts each."""
    return [
        encode_event(FEATURES_TOPIC, m.to_event())
        for m in as_feature_messages(iv, HOSTS_PER_MESSAGE, node="zeek")
    ]


def decode(frame: str) -> FeatureMessage:
    """What the live reader does with a frame: its fast path, else the generic codec."""
    msg = fast_feature_message(frame)
    return msg if msg is not None else FeatureMessage.from_event(decode_frame(frame).event)


def make_pipeline(model: OnnxModel, **kwargs) -> Pipeline:
    return Pipeline(model, max_hosts=200_000, batch_size=kwargs.pop("batch_size", BATCH), **kwargs)


# -- measurements ---------------------------------------------------------------------------------
@dataclass(order=True, frozen=True)
class Rate:
    """Items per wall-clock second, and per CPU second of this process.

    On a busy machine the wall figure drops with the load; the CPU figure (this process's
    own time, all its threads) says what the code costs.
    """

    wall: float
    cpu: float

    def __str__(self) -> str:
        return f"{self.wall:,.0f}/s ({self.cpu:,.0f} per CPU-s)"


class Clock:
    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def rate(self, items: float) -> Rate:
        wall = time.perf_counter() - self.wall
        cpu = time.process_time() - self.cpu
        return Rate(items / wall, items / cpu if cpu > 0 else float("inf"))


def raw_onnxruntime(path: Path, windows: int, rng: np.random.Generator) -> Rate:
    """Windows per second of a bare session (same options as OnnxModel) on ready batches."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    batch = rng.gamma(1.5, 40.0, size=(BATCH, WINDOW + 1, N_FEATURES)).astype(np.float32)
    session.run(None, {INPUT_NAME: batch})  # warm-up
    done = 0
    clock = Clock()
    while done < windows:
        session.run(None, {INPUT_NAME: batch})
        done += BATCH
    return clock.rate(done)


def throughput(model: OnnxModel, frames: list[list[str]], hosts: int) -> tuple[Rate, int]:
    """(host-intervals/s, verdicts): decode and score every frame in this thread."""
    pipeline = make_pipeline(model)
    verdicts = 0
    clock = Clock()
    for interval_frames in frames:
        for frame in interval_frames:
            verdicts += len(pipeline.on_features(decode(frame)))
    return clock.rate(hosts * len(frames)), verdicts


def throughput_overlapped(model: OnnxModel, frames: list[list[str]], hosts: int) -> float:
    """Host-intervals/s with decoding and scoring on two threads, as the live client runs."""
    pipeline = make_pipeline(model)
    work: queue.Queue = queue.Queue(maxsize=4096)

    def score() -> None:
        while (msg := work.get()) is not None:
            pipeline.on_features(msg)

    scorer = threading.Thread(target=score)
    start = time.perf_counter()
    scorer.start()
    for interval_frames in frames:
        for frame in interval_frames:
            work.put(decode(frame))
    work.put(None)
    scorer.join()
    return hosts * len(frames) / (time.perf_counter() - start)


def latency(model: OnnxModel, n_hosts: int, intervals: int, rng) -> tuple[float, float]:
    """p50, p99 seconds from an interval's last frame arriving to its verdicts."""
    hosts = hosts_of(n_hosts)
    pipeline = make_pipeline(model)
    samples = []
    for b in range(intervals):
        frames = frames_of(interval(hosts, b, rng))
        for frame in frames[:-1]:
            pipeline.on_features(decode(frame))
        start = time.perf_counter()
        pipeline.on_features(decode(frames[-1]))  # completes the interval: it is scored
        samples.append(time.perf_counter() - start)
    # The first intervals include one-off costs (buffer growth, ONNX arena): steady state.
    steady = np.array(samples[2:] if len(samples) > 4 else samples)
    return float(np.percentile(steady, 50)), float(np.percentile(steady, 99))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_per_host(model: OnnxModel, n_hosts: int, rng) -> float:
    """Resident bytes per tracked host: decode and record one interval of n_hosts.

    The warm-up setting keeps the pipeline from scoring, so the ONNX arena (a fixed
    cost) stays out of the figure; frames are encoded before the baseline, and the
    decoded messages are released before the final reading, so what remains is what the
    sidecar keeps per host (ring buffer, bookkeeping, the address string and its key).
    """
    frames = frames_of(interval(hosts_of(n_hosts), 0, rng))
    pipeline = make_pipeline(model, warmup=10)
    gc.collect()
    before = rss_bytes()
    for frame in frames:
        pipeline.on_features(decode(frame))
    del frame
    gc.collect()
    after = rss_bytes()
    assert pipeline.hosts_tracked == n_hosts
    return (after - before) / n_hosts


def workers_throughput(
    model: OnnxModel, path: Path, messages: list[list[FeatureMessage]], hosts: int, n: int
) -> float:
    """Host-intervals/s of decoded messages through the pipeline with n scoring workers."""
    from seqwatch.sidecar.scoring import LocalScorer
    from seqwatch.sidecar.workers import WorkerPool

    batch = 1024  # several batches per interval, so that two workers share each one
    scorer = LocalScorer(model, batch) if n == 0 else WorkerPool(model, path, n)
    try:
        pipeline = make_pipeline(model, batch_size=batch, scorer=scorer)
        pipeline.on_features(messages[0][0])  # workers up and warm
        start = time.perf_counter()
        for interval_messages in messages[1:]:
            for msg in interval_messages:
                pipeline.on_features(msg)
        return hosts * (len(messages) - 1) / (time.perf_counter() - start)
    finally:
        scorer.close()


# -- report ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="an existing model file (default: build one)")
    parser.add_argument("--quick", action="store_true", help="fewer intervals (a smoke run)")
    args = parser.parse_args(argv)
    reps = 1 if args.quick else 3
    rng = np.random.default_rng(7)
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as tmp:
        path, described = build_model(Path(tmp), args.model)
        model = OnnxModel.load(path, max_batch=BATCH)
        print(f"model: {described}; onnxruntime 1 intra-op thread; batch {BATCH}", flush=True)

        hosts = 10_000
        host_list = hosts_of(hosts)
        n_intervals = 6 if args.quick else 12
        frames = [frames_of(interval(host_list, b, rng)) for b in range(n_intervals)]
        n_frames = sum(len(f) for f in frames)
        print(f"traffic: {n_intervals} intervals x {hosts} hosts, {n_frames} frames", flush=True)

        raw = max(raw_onnxruntime(path, hosts * n_intervals, rng) for _ in range(reps))
        best_seq, verdicts = max(throughput(model, frames, hosts) for _ in range(reps))
        overlapped = max(throughput_overlapped(model, frames, hosts) for _ in range(reps))
        clock = Clock()
        for interval_frames in frames:
            for frame in interval_frames:
                decode(frame)
        decode_only = clock.rate(hosts * n_intervals)
        print(f"raw onnxruntime {raw}; pipeline {best_seq} in one thread, {overlapped:,.0f}/s "
              f"on two; decode alone {decode_only}; {verdicts} verdicts", flush=True)  # fmt: skip

        lat10 = latency(model, 10_000, 8 if args.quick else 40, rng)
        print(f"latency 10k hosts: p50 {lat10[0] * 1e3:.1f} ms, p99 {lat10[1] * 1e3:.1f} ms")
        lat100 = latency(model, 100_000, 4 if args.quick else 8, rng)
        print(f"latency 100k hosts: p50 {lat100[0] * 1e3:.0f} ms, p99 {lat100[1] * 1e3:.0f} ms")
        per_host = memory_per_host(model, 100_000, rng)
        print(f"memory: {per_host:,.0f} bytes per tracked host", flush=True)

        messages = [[decode(f) for f in interval_frames] for interval_frames in frames]
        workers = {n: workers_throughput(model, path, messages, hosts, n) for n in (0, 1, 2)}
        print("workers: " + ", ".join(f"{n}: {v:,.0f}/s" for n, v in workers.items()), flush=True)
    load_after = os.getloadavg()[0]

    wall_ratio, cpu_ratio = best_seq.wall / raw.wall, best_seq.cpu / raw.cpu
    rows = [
        ("model", described, ""),
        ("raw onnxruntime on ready windows (the ceiling)", f"{raw} windows", ""),
        (
            "pipeline: frames -> decode -> windows -> ONNX -> verdicts",
            f"{best_seq} host-intervals",
            "",
        ),
        (
            "pipeline share of raw onnxruntime",
            f"{cpu_ratio:.0%} per CPU-s ({wall_ratio:.0%} wall)",
            _verdict(cpu_ratio >= 0.60, ">= 60 %"),
        ),
        (
            "pipeline, decoding and scoring on two threads (as `seqwatch run`)",
            f"{overlapped:,.0f} host-intervals/s",
            "",
        ),
        ("decode alone (fast path, else codec; FeatureMessage)", f"{decode_only} hosts", ""),
        (
            "latency, last chunk in -> verdicts out, 10k hosts/interval",
            f"p50 {lat10[0] * 1e3:.1f} ms, p99 {lat10[1] * 1e3:.1f} ms",
            _verdict(lat10[1] <= 0.050, "p99 <= 50 ms"),
        ),
        (
            "latency, last chunk in -> verdicts out, 100k hosts/interval",
            f"p50 {lat100[0] * 1e3:.0f} ms, p99 {lat100[1] * 1e3:.0f} ms",
            "",
        ),
        (
            "memory per tracked host (RSS growth over 100k hosts)",
            f"{per_host:,.0f} B",
            _verdict(per_host <= 2048, "<= 2 KiB"),
        ),
        ("scoring in-process, batch 1024", f"{workers[0]:,.0f} host-intervals/s", ""),
        ("1 scoring worker process, batch 1024", f"{workers[1]:,.0f} host-intervals/s", ""),
        ("2 scoring worker processes, batch 1024", f"{workers[2]:,.0f} host-intervals/s", ""),
    ]
    print()
    print(
        f"Machine: {os.cpu_count()} CPUs, load average {load_before:.1f} at start, "
        f"{load_after:.1f} at the end (figures per wall-second fall with the load)."
    )
    print()
    print("| measure | result | target |")
    print("|---|---|---|")
    for name, value, target in rows:
        print(f"| {name} | {value} | {target} |")
    return 0


def _verdict(ok: bool, target: str) -> str:
    return f"{target}: {'met' if ok else 'NOT met'}"


if __name__ == "__main__":
    sys.exit(main())
