"""Model hot reload: watch the model file and swap a new, valid model into the pipeline.

The watcher follows the model file's *directory* with watchdog, because the safe way to
publish a model is an atomic rename (``cp new.onnx model.onnx.tmp && mv model.onnx.tmp
model.onnx``), which replaces the file's inode: a watch on the file itself would keep
watching the old one. Events for the path (created, moved onto it, written and closed,
modified) start a debounce timer; when the file has been quiet for ``debounce`` seconds
it is loaded and validated:

1. :meth:`OnnxModel.load` (graph, signature, metadata -- a :class:`ModelError` says what
   is wrong);
2. a test score on an all-zero window: finite error and residual of the right shapes;
3. :meth:`Pipeline.request_swap`: same schema, features and Δ as the running model
   (:class:`~seqwatch.sidecar.pipeline.ModelMismatch` otherwise).

Only then is the model handed to the pipeline, which swaps it in between two messages.
A file that fails any step is refused with one ERROR log line naming the file and the
reason, and the running model stays. A file with the running model's id (a touch, a
re-copy) is ignored. ``check_now`` does the same on demand (SIGHUP, tests).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from seqwatch.sidecar.modelfile import ModelError, OnnxModel
from seqwatch.sidecar.pipeline import ModelMismatch

log = logging.getLogger(__name__)


class ModelReloader:
    """Watches ``path`` and swaps valid new models into ``pipeline`` (see module docs).

    ``on_result(ok: bool, message: str)`` is called after each attempt (metrics, tests).
    """

    def __init__(
        self,
        path: str | Path,
        pipeline,
        *,
        debounce: float = 1.0,
        threads: int | None = None,
        max_batch: int = 4096,
        on_result: Callable[[bool, str], None] | None = None,
    ):
        self.path = Path(path).resolve()
        self.pipeline = pipeline
        self.debounce = debounce
        self.threads = threads
        self.max_batch = max_batch
        self.on_result = on_result
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._observer = None
        self._last_id = pipeline.info.model_id

    def start(self) -> bool:
        """Start watching; False (and a warning) when notifications are unavailable."""
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        target = self.path
        schedule = self._schedule

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                if event.event_type in ("opened", "closed_no_write", "deleted"):
                    return  # reading the file is no change; deletion leaves the model as is
                paths = (getattr(event, "src_path", ""), getattr(event, "dest_path", ""))
                if any(p and Path(os.fsdecode(p)).resolve() == target for p in paths):
                    schedule()

        observer = Observer()
        try:
            observer.schedule(Handler(), str(target.parent), recursive=False)
            observer.start()
        except OSError as exc:
            log.warning("model reload: cannot watch %s (%s); reload on SIGHUP only", target, exc)
            return False
        self._observer = observer
        log.info("model reload: watching %s", target)
        return True

    def stop(self) -> None:
        """Stop watching and cancel a pending reload."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    def check_now(self) -> bool:
        """Load, validate and hand over the file now; True when a new model was accepted."""
        with self._lock:
            self._timer = None
        try:
            model = OnnxModel.load(self.path, threads=self.threads, max_batch=self.max_batch)
            if model.info.model_id == self._last_id:
                log.debug("model reload: %s is unchanged (%s)", self.path, self._last_id)
                return False
            _test_score(model)
            self.pipeline.request_swap(model)
        except (ModelError, ModelMismatch, ValueError) as exc:
            message = f"model reload refused, keeping model {self._last_id}: {exc}"
            log.error("%s", message)
            self._report(False, message)
            return False
        message = f"model reload: {model.info.model_id} accepted from {self.path}"
        log.info("%s (was %s)", message, self._last_id)
        self._last_id = model.info.model_id
        self._report(True, message)
        return True

    def _schedule(self) -> None:
        # Debounce: a copy in progress fires many events; load once it has been quiet.
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self.debounce, self.check_now)
            self._timer.daemon = True
            self._timer.start()

    def _report(self, ok: bool, message: str) -> None:
        if self.on_result is not None:
            self.on_result(ok, message)


def _test_score(model: OnnxModel) -> None:
    """Score one all-zero window; raise ValueError unless the outputs are sane."""
    steps, d = model.info.window + 1, model.info.n_features
    error, residual = model.score(np.zeros((1, steps, d), dtype=np.float32))
    if np.shape(error) != (1,) or np.shape(residual) != (1, d):
        raise ValueError(
            f"{model.path}: test score gave shapes {np.shape(error)} and {np.shape(residual)}"
        )
    if not (np.isfinite(error).all() and np.isfinite(residual).all()):
        raise ValueError(f"{model.path}: test score on a zero window is not finite")
