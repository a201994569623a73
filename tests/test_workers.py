"""Scoring in worker processes over ZeroMQ: same verdicts as in-process, no lost batches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
import zmq
from onnx_fixture import write_model

from seqwatch.sidecar.features import IntervalFeatures
from seqwatch.sidecar.modelfile import OnnxModel
from seqwatch.sidecar.pipeline import Pipeline
from seqwatch.sidecar.scoring import LocalScorer
from seqwatch.sidecar.workers import HELLO, SCORE, WorkerPool

T = 4


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("w") / "model.onnx", window=T, threshold=2.0)


@pytest.fixture(scope="module")
def model(model_path):
    return OnnxModel.load(model_path)


def traffic(n_bins: int = 10, n_hosts: int = 300, seed: int = 1) -> list[IntervalFeatures]:
    rng = np.random.default_rng(seed)
    hosts = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(1, n_hosts + 1)]
    out = []
    for b in range(n_bins):
        burst = 1 + 20 * (rng.random((n_hosts, 1)) < 0.02)  # a few hosts jump
        values = rng.gamma(2.0, 30.0, size=(n_hosts, 16)) * burst
        out.append(IntervalFeatures(bin=b, interval=60.0, hosts=hosts, values=values))
    return out


def verdicts_with(model, scorer, intervals, batch_size=64):
    pipeline = Pipeline(model, batch_size=batch_size, scorer=scorer)
    out = []
    for iv in intervals:
        out += pipeline.on_features(iv)
    return out + pipeline.flush()


def batches(n: int = 12, size: int = 50, seed: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.gamma(2.0, 30.0, size=(size, T + 1, 16)).astype(np.float32) for _ in range(n)]


def assert_same_scores(results, expected):
    assert len(results) == len(expected)
    for (e1, r1), (e2, r2) in zip(results, expected, strict=True):
        np.testing.assert_array_equal(e1, e2)
        np.testing.assert_array_equal(r1, r2)


def test_two_workers_give_the_verdicts_of_one_process(model, model_path):
    intervals = traffic()
    expected = verdicts_with(model, LocalScorer(model), intervals)
    with WorkerPool(model, model_path, 2) as pool:
        assert pool.wait_ready(2, timeout=60)
        got = verdicts_with(model, pool, intervals)
        assert pool.local_fallbacks == 0
    assert expected and got == expected


def test_a_killed_worker_process_loses_no_batch(model, model_path):
    data = batches(30)
    expected = [LocalScorer(model).score(b) for b in data]
    with WorkerPool(model, model_path, 2) as pool:
        assert pool.wait_ready(2, timeout=60)
        victim = pool.processes[0]
        results = []
        for i, result in enumerate(pool.score_batches(data)):
            results.append(result)
            if i == 1:
                os.kill(victim.pid, signal.SIGKILL)
                victim.wait()
        assert_same_scores(results, expected)
        # The dead process was noticed and replaced.
        assert victim.pid not in [p.pid for p in pool.processes]
        assert pool.wait_ready(2, timeout=60)


def test_a_worker_that_takes_a_batch_and_vanishes_is_replaced(model, model_path):
    """A remote worker that dies holding a batch: its batch goes to another worker."""
    data = batches(8)
    expected = [LocalScorer(model).score(b) for b in data]
    with WorkerPool(
        model, model_path, 1, bind="tcp://127.0.0.1:0", dead_after=1.0, heartbeat=0.2
    ) as pool:
        assert pool.wait_ready(1, timeout=60)
        ctx = zmq.Context.instance()
        rogue = ctx.socket(zmq.DEALER)
        rogue.setsockopt(zmq.LINGER, 0)
        rogue.setsockopt(zmq.IDENTITY, b"rogue")
        rogue.connect(pool.tcp_endpoint)
        hello = {"model": model.info.model_id, "pid": -1, "host": "elsewhere", "capacity": 8}
        rogue.send_multipart([HELLO, json.dumps(hello).encode()])
        assert pool.wait_ready(2, timeout=10)
        taken = threading.Event()

        def swallow() -> None:
            # Take batches, never answer, then disappear (a crashed remote machine).
            if rogue.poll(10_000) and rogue.recv_multipart()[0] == SCORE:
                taken.set()
            rogue.close(linger=0)

        thief = threading.Thread(target=swallow)
        thief.start()
        results = list(pool.score_batches(data))
        thief.join()
        assert taken.is_set()
        assert pool.resent >= 1
        assert_same_scores(results, expected)


def test_a_remote_worker_joins_over_tcp(model, model_path):
    data = batches(6)
    expected = [LocalScorer(model).score(b) for b in data]
    with WorkerPool(model, model_path, 0, bind="tcp://127.0.0.1:0") as pool:
        worker = subprocess.Popen(
            [sys.executable, "-m", "seqwatch.sidecar.cli", "worker",
             "--connect", pool.tcp_endpoint, "--model", str(model_path)],
        )  # fmt: skip
        try:
            assert pool.wait_ready(1, timeout=60)
            assert_same_scores(list(pool.score_batches(data)), expected)
            assert pool.local_fallbacks == 0
        finally:
            worker.terminate()
            worker.wait(timeout=10)


def test_a_worker_with_another_model_is_not_used(model, model_path, tmp_path):
    other = write_model(tmp_path / "other.onnx", window=T, threshold=9.0)
    data = batches(4)
    expected = [LocalScorer(model).score(b) for b in data]
    with WorkerPool(model, other, 1, max_attempts=2) as pool:  # workers load the wrong file
        assert pool.wait_ready(1, timeout=60)
        assert_same_scores(list(pool.score_batches(data)), expected)
        assert pool.local_fallbacks == len(data)


def test_without_any_worker_batches_are_scored_locally(model, model_path):
    data = batches(3)
    expected = [LocalScorer(model).score(b) for b in data]
    with WorkerPool(model, model_path, 0, bind="tcp://127.0.0.1:0", start_timeout=0.2) as pool:
        assert_same_scores(list(pool.score_batches(data)), expected)
        assert pool.local_fallbacks == 3


def test_malformed_messages_from_a_peer_do_not_break_the_pool(model, model_path, caplog):
    data = batches(3)
    expected = [LocalScorer(model).score(b) for b in data]
    with WorkerPool(model, model_path, 1, bind="tcp://127.0.0.1:0") as pool:
        assert pool.wait_ready(1, timeout=60)
        peer = zmq.Context.instance().socket(zmq.DEALER)
        peer.setsockopt(zmq.LINGER, 0)
        peer.connect(pool.tcp_endpoint)
        peer.send_multipart([HELLO, b"{not json"])
        peer.send_multipart([b"result", b'{"id": 999}', b"\x00"])
        peer.send_multipart([b"result"])
        assert not pool.wait_ready(2, timeout=1.0)  # reads them; the peer never registers
        assert_same_scores(list(pool.score_batches(data)), expected)
        assert pool.workers == 1
        peer.close(linger=0)
    assert "malformed message from scoring worker" in caplog.text
