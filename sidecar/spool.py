"""The notice log as a durable spool of verdicts for Zeek.

Every verdict is appended to the notice log (:mod:`seqwatch.sidecar.notices`) *before*
it is sent; a small marker file records how far Zeek has received them. After a restart
of the sidecar or a reconnect to Zeek, :meth:`Spool.pending` returns the verdicts not
yet acknowledged, oldest first, and the adapter sends them again. Use::

    spool = Spool("/var/log/seqwatch/notice.log", "tsv")
    spool.append(verdicts)                 # durable (fsync="always") before sending
    for batch in iter(spool.pending, []):  # after a (re)connect: oldest unsent first
        send(batch)                        # the WebSocket write succeeded ...
        spool.mark_sent(batch)             # ... so record it

In steady state the adapter appends an interval's verdicts, sends them and marks them
sent; :meth:`pending` is then empty. Semantics:

- **none lost**: a verdict leaves :meth:`pending` only through :meth:`mark_sent`;
  pending verdicts survive restarts and rotations of the notice log (a rotated file
  that still holds unsent verdicts is kept open, and found again after a restart by its
  inode among the files next to the log, as long as it is not compressed yet).
- **none duplicated**: :meth:`append` drops verdicts whose :attr:`Verdict.key` (host,
  interval, model) it has already spooled (a re-read conn.log, a re-sent interval);
  :meth:`pending` never returns a verdict already marked. Between the WebSocket write
  and :meth:`mark_sent` a crash can still re-send a verdict once; Zeek's notice
  suppression (``$identifier``) absorbs that.
- **bounded memory**: pending verdicts stay on disk; :meth:`pending` returns at most
  ``max_pending`` of them per call (call again after :meth:`mark_sent`).

The marker (``.<log name>.sent`` beside the log: outside logrotate's ``*.log`` globs)
is JSON: the (device, inode) and byte offset of the first unsent line, and the keys of
verdicts sent out of order (normally none). It is replaced atomically (write + rename).
With no marker at all, every verdict in the log counts as unsent.
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from seqwatch.sidecar.messages import Verdict
from seqwatch.sidecar.notices import (
    DEFAULT_SUPPRESS_FOR,
    NoticeReader,
    NoticeWriter,
    verdict_from_record,
)

log = logging.getLogger(__name__)

Key = tuple[str, float, str]
RECENT_KEYS = 100_000
"""Keys of recently spooled verdicts kept for :meth:`Spool.append`'s de-duplication."""


@dataclass
class _Segment:
    """A file of the spool that may still hold unsent verdicts, open for reading."""

    file_id: tuple[int, int]
    name: str
    handle: BinaryIO

    def size(self) -> int:
        return os.fstat(self.handle.fileno()).st_size


class Spool:
    """A notice log that remembers which verdicts Zeek has received (see module docs)."""

    def __init__(
        self,
        path: str | Path,
        fmt: str = "tsv",
        *,
        fsync: str = "always",
        max_pending: int = 10_000,
        suppress_for: float = DEFAULT_SUPPRESS_FOR,
        marker: str | Path | None = None,
    ):
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.path = Path(path)
        self.max_pending = max_pending
        self.marker = Path(marker) if marker else self.path.with_name(f".{self.path.name}.sent")
        self._writer = NoticeWriter(self.path, fmt, fsync=fsync, suppress_for=suppress_for)
        self._fsync = fsync == "always"
        self._segments: list[_Segment] = []
        self._cursor = 0  # offset of the first unsent line in _segments[0]
        self._ahead: OrderedDict[Key, None] = OrderedDict()  # sent before older ones
        self._recent: OrderedDict[Key, None] = OrderedDict()
        self._after_cursor = 0  # verdict lines after the cursor (sent-ahead ones included)
        self._recover()

    # -- public API ---------------------------------------------------------------------------
    @property
    def pending_count(self) -> int:
        """Verdicts spooled and not yet marked sent (they are on disk, not in memory)."""
        return max(0, self._after_cursor - len(self._ahead))

    def append(self, verdicts: Iterable[Verdict]) -> list[Verdict]:
        """Append verdicts durably; return those written (already-spooled keys are skipped)."""
        fresh = []
        for v in verdicts:
            if v.key in self._recent:
                continue
            self._remember(v.key)
            fresh.append(v)
        if not fresh:
            return []
        if self._writer.ensure_open():
            self._start_segment()
        self._writer.write(fresh)
        self._after_cursor += len(fresh)
        return fresh

    def pending(self, limit: int | None = None) -> list[Verdict]:
        """Up to ``limit`` (default ``max_pending``) unsent verdicts, oldest first."""
        limit = self.max_pending if limit is None else limit
        out: list[Verdict] = []
        seen: set[Key] = set()
        for _, verdict in self._scan():
            if len(out) >= limit:
                break
            if verdict.key in self._ahead or verdict.key in seen:
                continue
            seen.add(verdict.key)
            out.append(verdict)
        return out

    def mark_sent(self, verdicts: Iterable[Verdict]) -> None:
        """Record that Zeek received ``verdicts`` (call after the WebSocket write succeeded)."""
        for v in verdicts:
            self._ahead[v.key] = None
        # Keys sent but never spooled would otherwise stay in _ahead for ever.
        while len(self._ahead) > self.max_pending:
            key, _ = self._ahead.popitem(last=False)
            log.warning("spool: forgetting sent-mark of %s, which is not in the spool", key)
        self._advance()
        self._save_marker()

    def reopen(self) -> None:
        """Reopen the notice log (SIGHUP after an external rotation)."""
        self._writer.reopen()
        self._start_segment()

    def close(self) -> None:
        """Close the log (writing ``#close``) and every segment."""
        self._writer.close()
        for segment in self._segments:
            segment.handle.close()
        self._segments.clear()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading ----------------------------------------------------------------------------------
    def _scan(self):
        """(segment index, end offset, verdict) of spooled verdicts from the cursor on."""
        for index, segment in enumerate(self._segments):
            offset = self._cursor if index == 0 else 0
            for end, verdict in _verdicts_from(segment, offset):
                yield (index, end), verdict

    def _advance(self) -> None:
        """Move the cursor over every leading verdict that was marked sent."""
        while self._segments:
            segment = self._segments[0]
            stopped = False
            for end, verdict in _verdicts_from(segment, self._cursor, include_other=True):
                if verdict is not None:
                    if verdict.key not in self._ahead:
                        stopped = True
                        break
                    del self._ahead[verdict.key]
                    self._after_cursor -= 1
                self._cursor = end
            if stopped or len(self._segments) == 1:
                return
            # A rotated file fully sent: nothing more will be read from it.
            segment.handle.close()
            self._segments.pop(0)
            self._cursor = 0

    # -- files ------------------------------------------------------------------------------------
    def _start_segment(self) -> None:
        file_id = self._writer.file_id
        assert file_id is not None
        if self._segments and self._segments[-1].file_id == file_id:
            return
        handle = open(self.path, "rb")  # noqa: SIM115 -- lives as long as the segment
        if (os.fstat(handle.fileno()).st_dev, os.fstat(handle.fileno()).st_ino) != file_id:
            handle.close()  # rotated again in between: the writer will notice on next write
            return
        self._segments.append(_Segment(file_id, str(self.path), handle))
        if len(self._segments) == 1:
            self._cursor = 0
        self._advance()  # drop rotated files with nothing unsent

    def _recover(self) -> None:
        """Rebuild segments, cursor, pending count and recent keys after a (re)start."""
        state = self._load_marker()
        self._writer.ensure_open()
        current_id = self._writer.file_id
        assert current_id is not None
        if state is not None and tuple(state["file"]) != current_id:
            old = _find_rotated(self.path, tuple(state["file"]))
            if old is not None:
                self._segments.append(_Segment(tuple(state["file"]), str(old), open(old, "rb")))  # noqa: SIM115
                log.info("spool: unsent verdicts continue in rotated file %s", old)
            else:
                log.warning(
                    "spool: the file that held the last sent verdict is gone (compressed or "
                    "deleted); unsent verdicts it may have held cannot be re-sent"
                )
        self._start_segment()
        if state is not None and self._segments[0].file_id == tuple(state["file"]):
            self._cursor = int(state["offset"])
            if self._cursor > self._segments[0].size():
                log.warning("spool: %s was truncated; treating all of it as unsent", self.path)
                self._cursor = 0
        self._ahead = OrderedDict.fromkeys(tuple(k) for k in (state or {}).get("ahead", []))
        # Recent keys: everything readable in the current file (and older unsent segments).
        for segment in self._segments:
            for _, verdict in _verdicts_from(segment, 0):
                self._remember(verdict.key)
        self._after_cursor = sum(1 for _ in self._scan())
        self._advance()
        if self.pending_count:
            log.info("spool: %d verdicts not yet sent to Zeek", self.pending_count)

    def _remember(self, key: Key) -> None:
        self._recent[key] = None
        self._recent.move_to_end(key)
        if len(self._recent) > RECENT_KEYS:
            self._recent.popitem(last=False)

    def _load_marker(self) -> dict | None:
        try:
            state = json.loads(self.marker.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("spool: ignoring unreadable marker %s (%s)", self.marker, exc)
            return None
        if not isinstance(state, dict) or not {"file", "offset"} <= state.keys():
            log.warning("spool: ignoring malformed marker %s", self.marker)
            return None
        return state

    def _save_marker(self) -> None:
        if not self._segments:
            return
        state = {
            "file": list(self._segments[0].file_id),
            "offset": self._cursor,
            "ahead": [list(k) for k in self._ahead],
        }
        tmp = self.marker.with_name(self.marker.name + ".tmp")
        with open(tmp, "w") as handle:
            json.dump(state, handle)
            handle.flush()
            if self._fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, self.marker)
        if self._fsync:
            # The rename itself must be durable too: sync the directory.
            fd = os.open(self.marker.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _verdicts_from(segment: _Segment, offset: int, include_other: bool = False):
    """(end offset, verdict) of each complete line from ``offset`` on.

    With ``include_other`` header and foreign lines come too, as (end offset, None), so
    the cursor can move over them. An incomplete last line (being written) is left out.
    """
    # Starting mid-file, the TSV field list is our writer's (NoticeReader's default) until
    # a #fields line says otherwise.
    reader = NoticeReader()
    handle = segment.handle
    handle.seek(offset)
    position = offset
    for line in handle:
        if not line.endswith(b"\n"):
            break
        position += len(line)
        try:
            record = reader.record(line)
            verdict = None if record is None else verdict_from_record(record)
        except ValueError as exc:
            log.warning("spool: skipping unreadable line in %s (%s)", segment.name, exc)
            verdict = None
        if verdict is not None or include_other:
            yield position, verdict


def _find_rotated(path: Path, file_id: tuple[int, int]) -> Path | None:
    """A file beside ``path`` with this (device, inode): the log, renamed by rotation."""
    try:
        candidates = list(path.parent.iterdir())
    except OSError:
        return None
    stem = path.name.split(".")[0]
    for candidate in candidates:
        if not candidate.name.startswith(stem) or candidate == path:
            continue
        try:
            st = candidate.stat()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == file_id:
            return candidate
    return None
