"""Scoring in N worker processes over ZeroMQ (``--workers N``, ``seqwatch worker``).

The sidecar keeps every host's windows (cheap) and ships ready batches to stateless
workers that run the ONNX model (the expensive part). Pattern: the sidecar's
:class:`WorkerPool` binds one ROUTER socket; each worker connects a DEALER. ROUTER (and
not PUSH/PULL) because the pool must know which worker holds which batch: a worker that
dies takes its batches with it, and the pool re-sends exactly those.

Local workers are child processes on an ``ipc://`` socket in a private temporary
directory. With ``worker_bind = "tcp://0.0.0.0:5557"`` the same ROUTER also listens on TCP
and ``seqwatch worker --connect tcp://SIDECAR:5557 --model PATH`` on other machines joins
(the socket is unauthenticated: bind it to a private network only). A remote worker
must have the same model file; it reloads its file when a batch names another model id
(after a hot reload) and refuses the batch if the ids still differ.

Wire format (multipart frames; the ROUTER prepends the worker's identity):

- worker -> pool ``[b"hello", header]``: at start and every ``heartbeat`` seconds while
  idle; header JSON ``{"model", "pid", "host", "capacity"}``. Registers the worker.
- pool -> worker ``[b"score", header, data]``: header ``{"id", "model", "dtype",
  "shape"}``, ``data`` the batch's raw C-order buffer (sent without a copy).
- worker -> pool ``[b"result", header, error, residual]`` (raw float32 buffers) or
  ``[b"error", header]`` with ``{"id", "reason"}``.
- pool -> local worker ``[b"stop"]`` at shutdown.

No lost verdicts: a batch whose worker exits (local: the process is gone), falls silent
for ``dead_after`` seconds, holds it longer than ``batch_timeout``, or answers with an
error, is re-sent to another worker, and scored in this process after ``max_attempts``
tries or when no worker is available. Results are released in submission order, so the
pipeline's verdicts are identical to in-process scoring (the same rows meet the same
model with one intra-op thread).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zmq

from seqwatch.sidecar.scoring import LocalScorer, Scores

log = logging.getLogger(__name__)

HELLO, SCORE, RESULT, ERROR, STOP = b"hello", b"score", b"result", b"error", b"stop"


@dataclass
class _Worker:
    identity: bytes
    capacity: int
    model: str
    name: str
    pid: int
    last_seen: float
    inflight: set[int] = field(default_factory=set)


@dataclass
class _Task:
    id: int
    windows: np.ndarray
    worker: bytes | None = None
    sent_at: float = 0.0
    attempts: int = 0


class WorkerPool:
    """A :class:`~seqwatch.sidecar.scoring.Scorer` that fans batches out to worker processes.

    ``model`` is the loaded model (used for local fallback and for its id); ``model_path``
    is the file local workers load. ``workers`` local processes are started (0 is valid
    with ``bind``: remote workers only). ``bind`` adds a TCP endpoint for remote workers.
    """

    def __init__(
        self,
        model,
        model_path: str | Path,
        workers: int,
        *,
        bind: str | None = None,
        threads: int = 1,
        capacity: int = 2,
        heartbeat: float = 1.0,
        dead_after: float = 10.0,
        batch_timeout: float = 60.0,
        start_timeout: float = 60.0,
        max_attempts: int = 3,
    ):
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        if workers == 0 and bind is None:
            raise ValueError("a worker pool needs local workers or a bind endpoint")
        self.model = model
        self.model_path = Path(model_path)
        self.threads = threads
        self.capacity = capacity
        self.heartbeat = heartbeat
        self.dead_after = dead_after
        self.batch_timeout = batch_timeout
        self.start_timeout = start_timeout
        self.max_attempts = max_attempts
        self.local_fallbacks = 0
        """Batches scored in this process because no worker could take them."""
        self.resent = 0
        """Batches sent again after their worker died, timed out or failed."""
        self._local = LocalScorer(model)
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        # Unroutable sends (a vanished worker) must fail loudly, not vanish silently.
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._tmp = tempfile.TemporaryDirectory(prefix="seqwatch-workers-")
        self.ipc_endpoint = f"ipc://{self._tmp.name}/scoring.sock"
        self._sock.bind(self.ipc_endpoint)
        self.tcp_endpoint = None
        if bind:
            self._sock.bind(bind)
            self.tcp_endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
            log.info("scoring workers may connect to %s", self.tcp_endpoint)
        self._workers: dict[bytes, _Worker] = {}
        self._tasks: dict[int, _Task] = {}
        self._queue: deque[int] = deque()
        self._results: dict[int, Scores] = {}
        self._next_id = 0
        self._procs: list[subprocess.Popen] = []
        self._hello_pids: set[int] = set()
        self._failed_starts = 0
        # When the pool last had a worker (start counts: workers are about to join).
        self._no_worker_since = time.monotonic()
        self._closed = False
        for _ in range(workers):
            self._spawn()

    # -- Scorer protocol ---------------------------------------------------------------------
    def score(self, windows: np.ndarray) -> Scores:
        """Score one batch (through a worker when one is available)."""
        return next(self.score_batches([windows]))

    def score_batches(self, batches: Iterable[np.ndarray]) -> Iterator[Scores]:
        """Score batches in parallel, yielding results in the order of ``batches``.

        At most ``capacity`` batches per worker are in flight, so memory stays bounded.
        """
        it = iter(batches)
        order: deque[int] = deque()
        exhausted = False
        while True:
            limit = max(1, self.capacity * max(1, self._expected_workers()))
            while not exhausted and len(order) < limit:
                try:
                    batch = next(it)
                except StopIteration:
                    exhausted = True
                    break
                order.append(self._submit(batch))
            if not order:
                return
            head = order[0]
            while head not in self._results:
                self._pump(0.05)
            order.popleft()
            yield self._results.pop(head)

    def set_model(self, model) -> None:
        """Use ``model`` from now on; workers reload their file when batches name its id."""
        self.model = model
        self._local.set_model(model)

    def close(self) -> None:
        """Stop local workers and close the socket."""
        if self._closed:
            return
        self._closed = True
        for identity in list(self._workers):
            with contextlib.suppress(zmq.ZMQError):
                self._sock.send_multipart([identity, STOP], flags=zmq.NOBLOCK)
        deadline = time.monotonic() + 3.0
        for proc in self._procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._sock.close(linger=0)
        self._tmp.cleanup()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- status ----------------------------------------------------------------------------------
    @property
    def workers(self) -> int:
        """Workers registered and alive now."""
        return len(self._workers)

    def wait_ready(self, count: int, timeout: float = 60.0) -> bool:
        """Wait until ``count`` workers have registered (start-up, tests)."""
        deadline = time.monotonic() + timeout
        while len(self._workers) < count and time.monotonic() < deadline:
            self._pump(0.05)
        return len(self._workers) >= count

    @property
    def processes(self) -> list[subprocess.Popen]:
        """The local worker processes (live or not)."""
        return list(self._procs)

    # -- internals -------------------------------------------------------------------------------
    def _expected_workers(self) -> int:
        return len(self._workers) or sum(1 for p in self._procs if p.poll() is None)

    def _spawn(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "seqwatch.sidecar.workers",
            "--connect",
            self.ipc_endpoint,
            "--model",
            str(self.model_path),
            "--threads",
            str(self.threads),
            "--capacity",
            str(self.capacity),
            "--heartbeat",
            str(self.heartbeat),
            "--parent",
            str(os.getpid()),
        ]
        self._procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL))
        # A fresh process needs time to load: restart the wait before scoring locally.
        self._no_worker_since = time.monotonic()

    def _submit(self, windows: np.ndarray) -> int:
        task = _Task(self._next_id, np.ascontiguousarray(windows, dtype=np.float32))
        self._next_id += 1
        self._tasks[task.id] = task
        self._queue.append(task.id)
        return task.id

    def _pump(self, timeout: float) -> None:
        self._check_health()
        self._dispatch()
        if self._sock.poll(int(timeout * 1000)):
            while True:
                try:
                    frames = self._sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._handle(frames)
            self._dispatch()

    def _dispatch(self) -> None:
        while self._queue:
            task = self._tasks[self._queue[0]]
            worker = None if task.attempts >= self.max_attempts else self._free_worker()
            if worker is None:
                if self._should_score_locally(task):
                    self._queue.popleft()
                    self._score_locally(task)
                    continue
                return
            self._queue.popleft()
            header = {
                "id": task.id,
                "model": self.model.info.model_id,
                "dtype": "float32",
                "shape": list(task.windows.shape),
            }
            try:
                self._sock.send_multipart(
                    [worker.identity, SCORE, json.dumps(header).encode(), task.windows],
                    copy=False,
                )
            except zmq.ZMQError as exc:  # the peer vanished between hello and now
                log.warning("scoring worker %s unreachable (%s)", worker.name, exc)
                self._queue.appendleft(task.id)
                self._drop_worker(worker, "unreachable")
                continue
            task.worker = worker.identity
            task.sent_at = time.monotonic()
            task.attempts += 1
            worker.inflight.add(task.id)

    def _free_worker(self) -> _Worker | None:
        best = None
        for worker in self._workers.values():
            free = worker.capacity - len(worker.inflight)
            if free > 0 and (best is None or free > best.capacity - len(best.inflight)):
                best = worker
        return best

    def _should_score_locally(self, task: _Task) -> bool:
        if task.attempts >= self.max_attempts:
            return True
        if self._workers:
            return False  # busy workers will free up
        # No worker right now: wait for local ones loading onnxruntime and the model, or
        # remote ones joining, for start_timeout; then score here rather than stall.
        return time.monotonic() - self._no_worker_since >= self.start_timeout

    def _score_locally(self, task: _Task) -> None:
        self.local_fallbacks += 1
        self._results[task.id] = self._local.score(task.windows)
        del self._tasks[task.id]

    def _handle(self, frames) -> None:
        identity = frames[0].bytes
        try:
            kind = frames[1].bytes
            header = json.loads(frames[2].bytes)
            if not isinstance(header, dict):
                raise ValueError("header is not an object")
            if kind == HELLO:
                self._hello(identity, header)
                return
            task_id = int(header["id"])
        except (IndexError, KeyError, TypeError, ValueError) as exc:
            # Remote peers are not trusted to be well-formed: skip, never crash the pool.
            log.warning("malformed message from scoring worker %r: %s", identity, exc)
            return
        worker = self._workers.get(identity)
        if worker is not None:
            worker.last_seen = time.monotonic()
            worker.inflight.discard(task_id)
        task = self._tasks.get(task_id)
        if task is None or task.worker != identity:
            return  # a late answer for a batch already re-sent and done elsewhere
        if kind != RESULT:
            self._retry(task, str(header.get("reason", "worker error")))
            return
        n, d = task.windows.shape[0], task.windows.shape[2]
        try:
            error = np.frombuffer(frames[3].buffer, dtype=np.float32).reshape(n).copy()
            residual = np.frombuffer(frames[4].buffer, dtype=np.float32).reshape(n, d).copy()
        except (IndexError, ValueError) as exc:
            self._retry(task, f"malformed result ({exc})")
            return
        self._results[task.id] = (error, residual)
        del self._tasks[task.id]

    def _hello(self, identity: bytes, info: dict) -> None:
        now = time.monotonic()
        worker = self._workers.get(identity)
        if worker is None:
            worker = _Worker(
                identity,
                max(1, int(info.get("capacity", 1))),
                str(info.get("model", "")),
                f"{info.get('host', '?')}/{info.get('pid', '?')}",
                int(info.get("pid", -1)),
                now,
            )
            self._workers[identity] = worker
            self._hello_pids.add(worker.pid)
            log.info("scoring worker %s joined (model %s)", worker.name, worker.model)
        worker.last_seen = now

    def _retry(self, task: _Task, why: str) -> None:
        log.warning("batch %d failed on a worker (%s); sending it again", task.id, why)
        task.worker = None
        self.resent += 1
        self._queue.appendleft(task.id)

    def _check_health(self) -> None:
        now = time.monotonic()
        for proc in list(self._procs):
            if proc.poll() is None or self._closed:
                continue
            self._procs.remove(proc)
            for worker in list(self._workers.values()):
                if worker.pid == proc.pid:
                    self._drop_worker(worker, f"process exited with {proc.returncode}")
            if proc.pid in self._hello_pids:
                self._failed_starts = 0
            else:
                self._failed_starts += 1
            if self._failed_starts >= 3:
                log.error("local scoring workers exit before they start; scoring in this process")
            else:
                log.warning("local scoring worker %d exited; starting another", proc.pid)
                self._spawn()
        for worker in list(self._workers.values()):
            if now - worker.last_seen > self.dead_after:
                self._drop_worker(worker, f"silent for {now - worker.last_seen:.1f} s")
                continue
            stuck = [
                t
                for t in worker.inflight
                if t in self._tasks and now - self._tasks[t].sent_at > self.batch_timeout
            ]
            if stuck:
                self._drop_worker(worker, f"batch held for over {self.batch_timeout:g} s")
        if self._workers:
            self._no_worker_since = now

    def _drop_worker(self, worker: _Worker, why: str) -> None:
        log.warning("scoring worker %s lost (%s)", worker.name, why)
        del self._workers[worker.identity]
        # Re-send its batches first, in their original order.
        for task_id in sorted(worker.inflight, reverse=True):
            task = self._tasks.get(task_id)
            if task is not None:
                task.worker = None
                self.resent += 1
                self._queue.appendleft(task_id)


# -- the worker process ---------------------------------------------------------------------------
def run_worker(
    connect: str,
    model_path: str | Path,
    *,
    threads: int = 1,
    capacity: int = 2,
    heartbeat: float = 1.0,
    parent: int | None = None,
) -> int:
    """Serve scoring requests from the pool at ``connect`` until told to stop."""
    from seqwatch.sidecar.modelfile import ModelError, OnnxModel

    model = OnnxModel.load(model_path, threads=threads)
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    name = f"{socket.gethostname()}/{os.getpid()}"
    sock.setsockopt(zmq.IDENTITY, f"{name}/{uuid.uuid4().hex[:8]}".encode())
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(connect)
    log.info("worker %s serving model %s for %s", name, model.info.model_id, connect)

    def hello() -> None:
        info = {
            "model": model.info.model_id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "capacity": capacity,
        }
        sock.send_multipart([HELLO, json.dumps(info).encode()])

    hello()
    try:
        while True:
            if not sock.poll(int(heartbeat * 1000)):
                if parent is not None and os.getppid() != parent:
                    log.info("worker %s: the sidecar is gone; exiting", name)
                    return 0
                hello()
                continue
            frames = sock.recv_multipart(copy=False)
            kind = frames[0].bytes
            if kind == STOP:
                return 0
            if kind != SCORE:
                continue
            header = json.loads(frames[1].bytes)
            reply = {"id": header["id"]}
            if header["model"] != model.info.model_id:
                try:
                    model = OnnxModel.load(model_path, threads=threads)
                except ModelError as exc:
                    log.error("worker %s: cannot reload %s: %s", name, model_path, exc)
            if header["model"] != model.info.model_id:
                reply["reason"] = (
                    f"worker has model {model.info.model_id}, batch wants {header['model']}"
                )
                sock.send_multipart([ERROR, json.dumps(reply).encode()])
                continue
            windows = np.frombuffer(frames[2].buffer, dtype=np.dtype(header["dtype"])).reshape(
                header["shape"]
            )
            try:
                error, residual = model.score(windows)
            except Exception as exc:  # report, do not die: the pool re-sends elsewhere
                reply["reason"] = f"{type(exc).__name__}: {exc}"
                sock.send_multipart([ERROR, json.dumps(reply).encode()])
                continue
            sock.send_multipart(
                [
                    RESULT,
                    json.dumps(reply).encode(),
                    np.ascontiguousarray(error, np.float32),
                    np.ascontiguousarray(residual, np.float32),
                ],
                copy=False,
            )
    finally:
        sock.close(linger=0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of local worker processes (``python -m seqwatch.sidecar.workers``)."""
    from seqwatch.sidecar.commands import add_worker_arguments

    parser = argparse.ArgumentParser(prog="seqwatch-worker")
    add_worker_arguments(parser)
    parser.add_argument("--parent", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from seqwatch.sidecar.logs import setup_logging

    setup_logging(0)
    return run_worker(
        args.connect,
        args.model,
        threads=args.threads,
        capacity=args.capacity,
        heartbeat=args.heartbeat,
        parent=args.parent,
    )


if __name__ == "__main__":
    sys.exit(main())
