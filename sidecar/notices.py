"""Verdicts as Zeek ``notice.log`` lines: Zeek's TSV (with its header) or JSON lines.

The fields, their order and types are those of a real Zeek 8.2 ``notice.log`` (see
``/work/shared/data/lab2/notice.log``), so ``zeek-cut``, log shippers and SIEM parsers
that know Zeek's notice log read seqwatch's without configuration. A verdict fills:

- ``ts``: the end of the verdict's interval (start + Δ). It is a time from the data, not
  the wall clock, so replaying the same traffic writes the same log.
- ``note``: ``SeqWatch::Traffic_Anomaly``; ``src``: the host;
- ``msg``: the error, θ, interval, model id and the top features with their exact
  standardized residuals, e.g. ``error 7.12 > threshold 3.2 over 1700000040.0+60.0s
  (model 4b322f8939f1ddd5): out_ports=+8.1 out_failed=+6.0 in_conns=-1.5``;
- ``sub``: :meth:`Verdict.explanation` (``out_ports +8.1σ, ...``), the text
  ``zeek_scripts/main.zeek`` puts in its own notice's ``$sub``;
- ``actions`` ``Notice::ACTION_LOG``, ``email_dest`` empty, ``suppress_for`` (default
  Zeek's one hour), ``peer_descr`` ``seqwatch``; every other field unset.

The numbers in ``msg`` are Python's shortest round-trip form, so a line parses back into
the identical :class:`Verdict` (:func:`read_notices`): the notice log doubles as the
spool (:mod:`seqwatch.sidecar.spool`).

TSV escaping follows Zeek's ASCII writer: tab, backslash and other control characters
become ``\\xNN``, a ``,`` inside a set element becomes ``\\x2c``, an empty string is
``(empty)``, and a value that would read as ``-`` or ``(empty)`` gets its first character
escaped. Rotation: before every write the writer checks that its path still names the
file it has open; when the file was moved away (logrotate, Zeek-style archiving) it
writes ``#close`` to the old file and starts a new one with a fresh header. ``reopen()``
(SIGHUP) does the same unconditionally.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from seqwatch.sidecar.messages import Verdict

NOTE = "SeqWatch::Traffic_Anomaly"
ACTION_LOG = "Notice::ACTION_LOG"
DEFAULT_SUPPRESS_FOR = 3600.0
"""Zeek's ``Notice::default_suppression_interval``."""
PEER_DESCR = "seqwatch"

# Exactly the #fields / #types of a real Zeek 8.2 notice.log.
FIELDS: tuple[str, ...] = (
    "ts",
    "uid",
    "id.orig_h",
    "id.orig_p",
    "id.resp_h",
    "id.resp_p",
    "fuid",
    "file_mime_type",
    "file_desc",
    "proto",
    "note",
    "msg",
    "sub",
    "src",
    "dst",
    "p",
    "n",
    "peer_descr",
    "actions",
    "email_dest",
    "suppress_for",
    "remote_location.country_code",
    "remote_location.region",
    "remote_location.city",
    "remote_location.latitude",
    "remote_location.longitude",
)
TYPES: tuple[str, ...] = (
    "time",
    "string",
    "addr",
    "port",
    "addr",
    "port",
    "string",
    "string",
    "string",
    "enum",
    "enum",
    "string",
    "string",
    "addr",
    "addr",
    "port",
    "count",
    "string",
    "set[enum]",
    "set[string]",
    "interval",
    "string",
    "string",
    "string",
    "double",
    "double",
)
SEPARATOR = "\t"
SET_SEPARATOR = ","
EMPTY = "(empty)"
UNSET = "-"
FORMATS = ("tsv", "json")
FSYNC_POLICIES = ("always", "never")

_MSG = re.compile(
    r"^error (?P<error>\S+) > threshold (?P<threshold>\S+) over (?P<start>[^+\s]+)\+"
    r"(?P<width>[^s\s]+)s \(model (?P<model>[^)\s]+)\)(?:: (?P<top>.*))?$"
)


# -- formatting ---------------------------------------------------------------------------
def notice_msg(v: Verdict) -> str:
    """The ``msg`` text: every number of the verdict, exactly (see the module docstring)."""
    text = (
        f"error {v.error!r} > threshold {v.threshold!r} over {v.start!r}+{v.width!r}s "
        f"(model {v.model_id})"
    )
    if v.top_features:
        top = " ".join(
            f"{name}={value:+}" for name, value in zip(v.top_features, v.top_residuals, strict=True)
        )
        text += f": {top}"
    return text


def notice_record(v: Verdict, suppress_for: float = DEFAULT_SUPPRESS_FOR) -> dict[str, object]:
    """The set fields of a verdict's notice (unset fields are absent, as in Zeek's JSON)."""
    return {
        "ts": v.start + v.width,
        "note": NOTE,
        "msg": notice_msg(v),
        "sub": v.explanation(),
        "src": v.host,
        "peer_descr": PEER_DESCR,
        "actions": [ACTION_LOG],
        "email_dest": [],
        "suppress_for": float(suppress_for),
    }


def escape(text: str, in_set: bool = False) -> str:
    """Zeek ASCII-writer escaping of one string value (see the module docstring)."""
    if text == "":
        return EMPTY
    out = []
    for ch in text:
        code = ord(ch)
        if code < 0x20 or code == 0x7F or ch == "\\" or (in_set and ch == SET_SEPARATOR):
            out.append(f"\\x{code:02x}")
        else:
            out.append(ch)
    escaped = "".join(out)
    if escaped in (UNSET, EMPTY):
        escaped = f"\\x{ord(escaped[0]):02x}" + escaped[1:]
    return escaped


_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


def unescape(text: str) -> str:
    """Undo :func:`escape` for one value (``\\xNN`` sequences).

    Zeek escapes *bytes*: ``\\xc3\\xa9`` is "é". So the escapes become bytes, the text
    around them its UTF-8 encoding, and the whole is decoded once.
    """
    if "\\x" not in text:
        return text
    out = bytearray()
    pos = 0
    for match in _ESCAPE.finditer(text):
        out += text[pos : match.start()].encode()
        out.append(int(match.group(1), 16))
        pos = match.end()
    out += text[pos:].encode()
    return out.decode("utf-8", errors="backslashreplace")


def _tsv_value(value: object, kind: str) -> str:
    if value is None:
        return UNSET
    if kind.startswith("set["):
        items = list(value)  # type: ignore[call-overload]
        if not items:
            return EMPTY
        return SET_SEPARATOR.join(escape(str(i), in_set=True) for i in items)
    if kind in ("time", "interval"):
        return f"{float(value):.6f}"  # type: ignore[arg-type]
    return escape(str(value))


def tsv_line(record: dict[str, object]) -> str:
    """One TSV data line (no newline) from a notice record."""
    return SEPARATOR.join(
        _tsv_value(record.get(name), kind) for name, kind in zip(FIELDS, TYPES, strict=True)
    )


def tsv_header(opened: float | None = None) -> str:
    """Zeek's header block for notice.log (with a trailing newline)."""
    stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime(opened or time.time()))
    return (
        "#separator \\x09\n"
        f"#set_separator\t{SET_SEPARATOR}\n"
        f"#empty_field\t{EMPTY}\n"
        f"#unset_field\t{UNSET}\n"
        "#path\tnotice\n"
        f"#open\t{stamp}\n"
        "#fields\t" + "\t".join(FIELDS) + "\n"
        "#types\t" + "\t".join(TYPES) + "\n"
    )


def tsv_close(closed: float | None = None) -> str:
    stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime(closed or time.time()))
    return f"#close\t{stamp}\n"


def json_line(record: dict[str, object]) -> str:
    """One JSON line (no newline), fields in notice.log order, as Zeek's JSON writer does."""
    ordered = {name: record[name] for name in FIELDS if name in record}
    return json.dumps(ordered, ensure_ascii=False, separators=(",", ":"))


# -- parsing --------------------------------------------------------------------------------
def parse_tsv_line(line: str, fields: Sequence[str] = FIELDS) -> dict[str, object]:
    """Fields of one TSV data line: unset fields absent, sets as lists, the rest as text."""
    values = line.rstrip("\n").split(SEPARATOR)
    if len(values) != len(fields):
        raise ValueError(f"expected {len(fields)} fields, got {len(values)}")
    kinds = dict(zip(FIELDS, TYPES, strict=True))
    record: dict[str, object] = {}
    for name, raw in zip(fields, values, strict=True):
        if raw == UNSET:
            continue
        if kinds.get(name, "string").startswith("set["):
            record[name] = [] if raw == EMPTY else [unescape(x) for x in raw.split(SET_SEPARATOR)]
        else:
            record[name] = "" if raw == EMPTY else unescape(raw)
    return record


def verdict_from_record(record: dict[str, object]) -> Verdict | None:
    """The verdict a seqwatch notice record stands for; None for other notes.

    Raises ValueError when a seqwatch notice's ``msg`` is not in seqwatch's form.
    """
    if record.get("note") != NOTE:
        return None
    match = _MSG.match(str(record.get("msg", "")))
    if match is None:
        raise ValueError(f"not a seqwatch notice message: {record.get('msg')!r}")
    names: list[str] = []
    residuals: list[float] = []
    for item in (match.group("top") or "").split():
        name, _, value = item.partition("=")
        names.append(name)
        residuals.append(float(value))
    return Verdict(
        host=str(record["src"]),
        start=float(match.group("start")),
        width=float(match.group("width")),
        error=float(match.group("error")),
        threshold=float(match.group("threshold")),
        model_id=match.group("model"),
        top_features=tuple(names),
        top_residuals=tuple(residuals),
    )


class NoticeReader:
    """Parses a notice log line by line, in either format, following TSV headers."""

    def __init__(self) -> None:
        self.fields: tuple[str, ...] = FIELDS

    def record(self, line: bytes) -> dict[str, object] | None:
        """The record of one line, or None for header/comment/blank lines."""
        text = line.decode("utf-8", errors="replace").rstrip("\r\n")
        if not text:
            return None
        if text.startswith("#"):
            if text.startswith("#fields\t"):
                self.fields = tuple(text.split("\t")[1:])
            return None
        if text.startswith("{"):
            return json.loads(text)
        return parse_tsv_line(text, self.fields)


def read_notices(path: str | Path) -> Iterator[Verdict]:
    """Every seqwatch verdict in a notice log (TSV or JSON lines; other notes skipped)."""
    reader = NoticeReader()
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            try:
                record = reader.record(line)
                verdict = None if record is None else verdict_from_record(record)
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: {exc}") from None
            if verdict is not None:
                yield verdict


# -- writing --------------------------------------------------------------------------------
class NoticeWriter:
    """Appends verdicts to a notice log, rotation-safe; see the module docstring.

    ``fsync="always"`` makes every :meth:`write` durable before it returns (one fsync per
    call, i.e. per interval's verdicts); ``"never"`` leaves flushing to the kernel.
    """

    def __init__(
        self,
        path: str | Path,
        fmt: str = "tsv",
        *,
        fsync: str = "always",
        suppress_for: float = DEFAULT_SUPPRESS_FOR,
    ):
        if fmt not in FORMATS:
            raise ValueError(f"notice format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, got {fsync!r}")
        self.path = Path(path)
        self.format = fmt
        self.fsync = fsync
        self.suppress_for = suppress_for
        self._file: BinaryIO | None = None
        self._id: tuple[int, int] | None = None
        self.files_started = 0

    @property
    def file_id(self) -> tuple[int, int] | None:
        """(device, inode) of the file being written, None before the first open."""
        return self._id

    def ensure_open(self) -> bool:
        """Open the path if needed; True when a new file (or a fresh open) began."""
        if self._file is not None and self._still_ours():
            return False
        self._close_file()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_APPEND: every write lands at the end even if someone else appends too.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self._file = os.fdopen(fd, "ab")
        st = os.fstat(fd)
        self._id = (st.st_dev, st.st_ino)
        self.files_started += 1
        if self.format == "tsv":
            # Every open starts a header block; readers (zeek-cut, ours) accept several.
            self._file.write(tsv_header().encode())
            self._sync()
        return True

    def write(self, verdicts: Iterable[Verdict]) -> list[int]:
        """Append verdicts (one line each); return each line's end offset in the file."""
        self.ensure_open()
        assert self._file is not None
        ends = []
        offset = self._file.tell()
        for v in verdicts:
            record = notice_record(v, self.suppress_for)
            line = (tsv_line(record) if self.format == "tsv" else json_line(record)) + "\n"
            data = line.encode()
            self._file.write(data)
            offset += len(data)
            ends.append(offset)
        if ends:
            self._sync()
        return ends

    def reopen(self) -> None:
        """Close and reopen the path (SIGHUP after an external rotation)."""
        self._close_file()
        self.ensure_open()

    def close(self) -> None:
        """Write ``#close`` (TSV) and close the file."""
        self._close_file()

    def _still_ours(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self._id

    def _close_file(self) -> None:
        if self._file is None:
            return
        try:
            if self.format == "tsv":
                self._file.write(tsv_close().encode())
            self._sync()
        finally:
            self._file.close()
            self._file = None

    def _sync(self) -> None:
        assert self._file is not None
        self._file.flush()
        if self.fsync == "always":
            os.fsync(self._file.fileno())
