"""``seqwatch run --tail PATH``: follow a live conn.log or eve.json, for sites without the
WebSocket API.

A thin adapter around the same core as every other mode::

    file bytes -> LiveParser (zeeklog.ConnLogParser) -> FeatureAggregator -> Pipeline
               -> deliver(): notice log/spool (+ enforcer)

**Following** (:class:`FileFollower`): appended bytes are read as they come; a rotation
(the path now names another file: Zeek's rename-and-reopen, logrotate's ``create``) is
handled by reading the old file to its end first, then switching to the new one from its
start; a truncation (logrotate's ``copytruncate``) restarts at offset 0. watchdog's
notifications wake the loop at once; a poll every ``poll_interval`` seconds is the
fallback (and the only mechanism where inotify is unavailable).

**Start**: by default the current file is read from its beginning, so the windows are
warm (Zeek rotates hourly: up to an hour of history) and verdicts the sidecar missed
while down are produced; the spool drops verdicts it has already written. ``start="end"``
begins at the end, like ``tail -f``.

**Clock** (``slack``): the live clock is the conn stream's own -- the latest connection
start seen -- and interval b is complete once it passes (b+1)·Δ + slack, the same rule
the Zeek script applies to ``network_time()``. Zeek writes a connection when it removes
it, within about a second of the removal estimate that bins it (DESIGN.md), so the
default slack of 5 s (schema.DEFAULT_SLACK, as in the Zeek script) only rarely moves a
connection to a later interval (counted as late). A quiet network therefore delays the
last interval until traffic resumes; that is the price of a clock that cannot drift from
the data. At shutdown the open intervals are *not* flushed: they are incomplete, and a
restart reads them again.

The tail has no Zeek to send verdicts to: the notice log it writes is the output, and a
verdict counts as "sent" once the enforcer (if configured) has acted on it, so after a
crash unacted verdicts are acted on at the next start.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from seqwatch.sidecar.features import FeatureAggregator
from seqwatch.sidecar.messages import Verdict
from seqwatch.sidecar.pipeline import Pipeline, feature_config
from seqwatch.sidecar.problems import ProblemReport
from seqwatch.sidecar.records import ConnChunk
from seqwatch.sidecar.schema import DEFAULT_SLACK
from seqwatch.sidecar.zeeklog import ConnLogParser

log = logging.getLogger(__name__)

READ_BYTES = 8 << 20
"""Bytes read per step: bounds memory while catching up on a large file."""
_HEADER_LINE = re.compile(rb"^#[^\n]*\n", re.MULTILINE)


class FileFollower:
    """Reads what is appended to ``path``, across rotations and truncations (no parsing).

    :meth:`read` returns a list of events: ``("file", name)`` when a new file starts
    (the consumer must start a new parser) and ``("data", bytes)``.
    """

    def __init__(self, path: str | Path, *, start: str = "beginning"):
        if start not in ("beginning", "end"):
            raise ValueError(f"start must be 'beginning' or 'end', got {start!r}")
        self.path = Path(path)
        self.start = start
        self.rotations = 0
        self.truncations = 0
        self._handle: BinaryIO | None = None
        self._id: tuple[int, int] | None = None
        self._offset = 0
        self._first = True

    def read(self, limit: int = READ_BYTES) -> list[tuple[str, object]]:
        """New events since the last call (empty when nothing happened)."""
        events: list[tuple[str, object]] = []
        if self._handle is None and not self._open(events):
            return events
        assert self._handle is not None
        data = self._handle.read(limit)
        if data:
            self._offset += len(data)
            events.append(("data", data))
            return events
        # At the end of our file: has it been replaced or truncated?
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return events  # moved away, the new one not created yet: keep the old open
        if (st.st_dev, st.st_ino) != self._id:
            self.rotations += 1
            log.info("tail: %s was rotated; following the new file", self.path)
            self._close()
            self._open(events)
        elif st.st_size < self._offset:
            self.truncations += 1
            log.info("tail: %s was truncated; reading it from the start", self.path)
            self._handle.seek(0)
            self._offset = 0
            events.append(("file", str(self.path)))
        return events

    def close(self) -> None:
        self._close()

    def _open(self, events: list) -> bool:
        try:
            handle = open(self.path, "rb")  # noqa: SIM115 -- kept open across calls
        except FileNotFoundError:
            return False
        st = os.fstat(handle.fileno())
        self._handle, self._id, self._offset = handle, (st.st_dev, st.st_ino), 0
        events.append(("file", str(self.path)))
        if self._first and self.start == "end":
            # The parser still needs the TSV header from the top of the file.
            header = _leading_header(handle.read(_HEAD_BYTES))
            if header:
                events.append(("data", header))
            self._offset = _after_last_newline(handle, st.st_size)
            handle.seek(self._offset)
        self._first = False
        return True

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


_HEAD_BYTES = 1 << 16


def _leading_header(head: bytes) -> bytes:
    """The ``#`` lines at the very top of a file (a Zeek TSV header block)."""
    end = 0
    for match in _HEADER_LINE.finditer(head):
        if match.start() != end:
            break
        end = match.end()
    return head[:end]


def _after_last_newline(handle: BinaryIO, size: int) -> int:
    """Offset just after the last complete line (a writer may be mid-line at the end)."""
    start = max(0, size - _HEAD_BYTES)
    handle.seek(start)
    tail = handle.read(size - start)
    cut = tail.rfind(b"\n")
    return start + cut + 1 if cut >= 0 else start


class LiveParser:
    """Turns appended bytes of one file into ConnChunks *now*.

    A thin wrapper over one :class:`~seqwatch.sidecar.zeeklog.ConnLogParser` for the
    file's lifetime: ``feed`` + ``flush`` releases every complete line at once (a file
    reader would wait for ``chunk_rows`` of them), while the partial last line, the header
    in force and the line numbers carry over between feeds.
    """

    def __init__(self, source: str, fmt: str | None = None, report: ProblemReport | None = None):
        self.source = source
        self.report = report if report is not None else ProblemReport()
        self._parser = ConnLogParser(source, report=self.report, fmt=fmt)

    @property
    def format(self) -> str | None:
        return self._parser.format

    def feed(self, data: bytes) -> list[ConnChunk]:
        """Chunks of the complete lines in ``data`` (plus the held partial line)."""
        return self._parser.feed(data) + self._parser.flush()

    def close(self) -> list[ConnChunk]:
        """Parse the partial last line too (the file is finished)."""
        return self._parser.close()


def deliver(verdicts: list[Verdict], spool, enforcer=None) -> list[Verdict]:
    """Spool verdicts, let the enforcer act on the new ones, mark them done.

    Returns the verdicts that were new to the spool.
    """
    fresh = spool.append(verdicts) if spool is not None else list(verdicts)
    if enforcer is not None:
        for v in fresh:
            enforcer.block(v.host, block_reason(v))
    if spool is not None and fresh:
        spool.mark_sent(fresh)
    return fresh


def block_reason(v: Verdict) -> str:
    """The reason recorded with a block (audit log, set entry comment)."""
    return f"seqwatch {v.model_id}: error {v.error:.3g} > {v.threshold:.3g}; {v.explanation()}"


class Tailer:
    """Drives one followed file through the pipeline (see the module docstring).

    :meth:`step` does one round of reading and processing and returns the verdicts it
    delivered (tests call it directly); :meth:`run` loops until ``stop`` is set.
    """

    def __init__(
        self,
        path: str | Path,
        pipeline: Pipeline,
        *,
        spool=None,
        enforcer=None,
        slack: float = DEFAULT_SLACK,
        fmt: str | None = None,
        start: str = "beginning",
        poll_interval: float = 1.0,
        on_verdicts: Callable[[list[Verdict]], None] | None = None,
    ):
        self.pipeline = pipeline
        self.spool = spool
        self.enforcer = enforcer
        self.poll_interval = poll_interval
        self.on_verdicts = on_verdicts
        self.follower = FileFollower(path, start=start)
        self.report = ProblemReport()
        # The model fixes the features' settings: Δ, the distinct cap, the removal delays.
        self.aggregator = FeatureAggregator(feature_config(pipeline.info), lateness=slack)
        self._fmt = fmt
        self._parser: LiveParser | None = None
        self._wake = threading.Event()
        self._reopen = False
        self.delivered = 0

    def step(self) -> list[Verdict]:
        """Read what is available (up to READ_BYTES per file event) and process it."""
        out: list[Verdict] = []
        for kind, value in self.follower.read():
            if kind == "file":
                if self._parser is not None:
                    out += self._chunks(self._parser.close())
                self._parser = LiveParser(str(value), self._fmt, self.report)
            else:
                assert self._parser is not None
                out += self._chunks(self._parser.feed(value))  # type: ignore[arg-type]
        return out

    def run(self, stop: threading.Event) -> None:
        """Follow the file until ``stop`` is set."""
        observer = self._watch()
        try:
            while not stop.is_set():
                if self._reopen:
                    # Here, not in the signal handler: never in the middle of an append.
                    self._reopen = False
                    if self.spool is not None:
                        self.spool.reopen()
                if self.step():
                    continue
                # Nothing new: sleep until watchdog reports a change or the poll fallback.
                self._wake.wait(self.poll_interval)
                self._wake.clear()
        finally:
            if observer is not None:
                observer.stop()
                observer.join(timeout=5)
            self.follower.close()

    def finish(self) -> list[Verdict]:
        """End of a *finite* input: parse the last partial line, emit and score every open
        interval. Never called at shutdown of a live tail (see the module docstring)."""
        out: list[Verdict] = []
        if self._parser is not None:
            out += self._chunks(self._parser.close())
            self._parser = None
        verdicts = [v for iv in self.aggregator.flush() for v in self.pipeline.on_features(iv)]
        return out + self._deliver(verdicts + self.pipeline.flush())

    def wake(self) -> None:
        """Interrupt the wait (signal handlers, tests)."""
        self._wake.set()

    def request_reopen(self) -> None:
        """Reopen the notice log at the next loop turn (SIGHUP after log rotation)."""
        self._reopen = True
        self._wake.set()

    def _chunks(self, chunks: list[ConnChunk]) -> list[Verdict]:
        verdicts: list[Verdict] = []
        for chunk in chunks:
            for interval in self.aggregator.add(chunk):
                verdicts += self.pipeline.on_features(interval)
        return self._deliver(verdicts)

    def _deliver(self, verdicts: list[Verdict]) -> list[Verdict]:
        if not verdicts:
            return []
        fresh = deliver(verdicts, self.spool, self.enforcer)
        self.delivered += len(fresh)
        if fresh and self.on_verdicts is not None:
            self.on_verdicts(fresh)
        return fresh

    def _watch(self):
        """A watchdog observer on the file's directory, or None (polling only)."""
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:  # pragma: no cover -- watchdog is a dependency
            return None
        target = self.follower.path.resolve()
        wake = self._wake

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                paths = {getattr(event, "src_path", ""), getattr(event, "dest_path", "")}
                if any(p and Path(os.fsdecode(p)).resolve() == target for p in paths):
                    wake.set()

        observer = Observer()
        try:
            observer.schedule(Handler(), str(target.parent), recursive=False)
            observer.start()
        except OSError as exc:  # e.g. inotify watch limit reached
            log.warning(
                "tail: no file notifications (%s); polling every %gs", exc, self.poll_interval
            )
            return None
        return observer
