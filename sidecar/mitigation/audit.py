"""The audit log: one JSON object per line for every decision the enforcer makes.

Refusals are written as faithfully as blocks, because "why was this attacker *not*
blocked?" is the question an operator asks after an incident. Lines are flushed one by
one so that a crash loses nothing already decided.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import IO, Any

from seqwatch.sidecar.mitigation.firewall import MitigationUnavailable

log = logging.getLogger("seqwatch.mitigation.audit")


class AuditLog:
    """Appends JSON lines to ``path`` (when given) and mirrors each line to the logger."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._handle: IO[str] | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        """Open the file for appending; raise MitigationUnavailable when that is impossible.

        Called at enforcer start, so a wrong path is reported before the first verdict.
        """
        if self.path is None or self._handle is not None:
            return
        try:
            # 0o640: the log names hosts and reasons; it is not for every local user.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._handle = os.fdopen(fd, "a", encoding="utf-8")
        except OSError as exc:
            raise MitigationUnavailable(
                f"cannot open audit log {self.path}: {exc.strerror}"
            ) from None

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True, ensure_ascii=False, default=str)
        log.info("%s", line, extra={"fields": {"audit": record}})
        if self.path is None:
            return
        with self._lock:
            if self._handle is None:
                self.open()
            if self._handle is not None:
                self._handle.write(line + "\n")
                self._handle.flush()

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None
