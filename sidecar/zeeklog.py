"""Zeek conn.log (TSV and JSON lines) into ConnChunks, incrementally and without per-row Python.

:class:`ConnLogParser` is sans-I/O: feed it bytes as they come (a file read loop, a live
tail's appended bytes, a decompressor) and it returns ConnChunks of at most ``chunk_rows``
rows. It detects the format from the first line (Zeek TSV, Zeek JSON, Suricata EVE),
follows Zeek's TSV header (``#separator`` ... ``#fields``) wherever a new header block
starts, and hands whole blocks of lines to compiled readers: TSV to seqwatch's own field
scanner (``_tsvscan.c``: it converts only the dozen fields the features read, and codes
addresses against the reader's :class:`AddressBook`), JSON to Arrow's.

TSV specifics handled here:

- any field order, extra fields ignored; ``#close`` and other comments skipped;
- ``-`` (``#unset_field``) and ``(empty)`` (``#empty_field``) are missing values;
- Zeek's ``\\xNN`` escapes in string fields are undone;
- Stratosphere labelled logs (``label``, ``detailedlabel`` columns) and the IoT-23 layout,
  whose last ``#fields`` entry is ``tunnel_parents   label   detailed-label`` and whose
  last data field holds those three values separated by three spaces.

Required fields: ts, id.orig_h, id.resp_h, id.resp_p, proto, conn_state. The others read
as 0/empty when the header lacks them, with one warning in the ProblemReport.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqwatch.sidecar import _tsvscan
from seqwatch.sidecar.arrowcols import (
    DICT_TYPE,
    AddressBook,
    RecordColumns,
    as_dictionary,
    build_chunk,
    iso_seconds,
    map_distinct,
    numbers,
    unescape_zeek,
)
from seqwatch.sidecar.jsonlines import explain_json_line, read_json_block
from seqwatch.sidecar.linebuffer import (
    BlockLines,
    LineBuffer,
    count_newlines,
)
from seqwatch.sidecar.problems import (
    IGNORED,
    WARNING,
    Finding,
    InputError,
    ProblemReport,
    excerpt,
    settle,
)
from seqwatch.sidecar.records import LABEL_NONE, ConnChunk, label_code, service_flags
from seqwatch.sidecar.schema import PROTO_CODE, STATE_CODE

FORMAT_TSV = "zeek-tsv"
FORMAT_JSON = "zeek-json"
FORMAT_EVE = "eve"

DEFAULT_CHUNK_ROWS = 32768
"""Rows per chunk: a chunk's columns (about 100 bytes a row) stay within a core's L2 cache
while the featurizer makes its passes over them; 32k rows measured faster than 16k or 64k."""

REQUIRED_FIELDS = ("ts", "id.orig_h", "id.resp_h", "id.resp_p", "proto", "conn_state")
FEATURE_FIELDS = ("service", "duration", "orig_pkts", "resp_pkts", "orig_ip_bytes", "resp_ip_bytes")
"""Optional for reading, but the features use them: their absence earns a warning."""
NUMERIC_FIELDS = (
    "ts",
    "duration",
    "id.resp_p",
    "orig_pkts",
    "resp_pkts",
    "orig_ip_bytes",
    "resp_ip_bytes",
)
LABEL_FIELDS = ("label",)
DETAILED_LABEL_FIELDS = ("detailedlabel", "detailed-label", "detailed_label")
_COMPOUND_SEPARATOR = "   "
"""IoT-23 packs ``tunnel_parents``, ``label`` and ``detailed-label`` into one TSV field."""


def detect_format(head: bytes) -> str | None:
    """Name the format of an input from its first line(s), or None if unknown."""
    text = head.lstrip(b"\xef\xbb\xbf").lstrip()
    if text.startswith(b"#separator"):
        return FORMAT_TSV
    if not text.startswith(b"{"):
        return None
    try:
        record = json.loads(text.split(b"\n", 1)[0])
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    if "event_type" in record:
        return FORMAT_EVE
    if "ts" in record or "id.orig_h" in record or "id" in record:
        return FORMAT_JSON
    return None


@dataclass
class ZeekHeader:
    """The state of a Zeek ASCII log header block."""

    separator: str = "\t"
    set_separator: str = ","
    empty_field: str = "(empty)"
    unset_field: str = "-"
    fields: tuple[str, ...] | None = None
    types: tuple[str, ...] | None = None
    path: str | None = None

    def apply(self, line: str) -> bool:
        """Take one ``#`` line into account; True if it starts a new header block."""
        if line.startswith("#separator"):
            # Written before the separator is known, so a space separates key and value.
            value = unescape_zeek(line[len("#separator") :].lstrip(" "))
            self.__init__(separator=value)  # a new block: forget the previous header
            return True
        key, _, rest = line[1:].partition(self.separator)
        values = tuple(unescape_zeek(v) for v in rest.split(self.separator)) if rest else ()
        if key == "fields":
            self.fields = values
        elif key == "types":
            self.types = values
        elif key in ("set_separator", "empty_field", "unset_field", "path") and values:
            setattr(self, key, values[0])
        return False

    @property
    def unset_values(self) -> frozenset[str]:
        """Texts that mean "no value" under this header."""
        return frozenset({self.unset_field, self.empty_field, ""})


@dataclass
class _TsvPlan:
    """How to read data lines under one header: which fields to scan, and as what."""

    n_fields: int
    column_of: dict[str, str]  # logical field -> column (header field) holding it
    compound: dict[str, list[str]]  # column -> the logical fields packed in it
    missing: list[str]  # feature fields the header lacks
    scan: list[tuple[int, int]]  # (field index, _tsvscan kind), in field order
    scan_names: list[str]  # the column of each scanned field
    names: dict[str, str]  # column -> conn.log field name, for messages


def _plan(header: ZeekHeader, where: str) -> _TsvPlan:
    """What to scan under the current header; InputError if a required field is missing."""
    if header.fields is None:
        raise InputError("data line before any #fields header line", where=where, kind="header")
    if len(header.separator) != 1 or not header.separator.isascii() or header.separator == "\n":
        raise InputError(
            f"unsupported #separator {header.separator!r} (one ASCII character expected)",
            where=where,
            kind="header",
        )
    names: list[str] = []
    column_of: dict[str, str] = {}
    compound: dict[str, list[str]] = {}
    for i, raw in enumerate(header.fields):
        name = f"{raw}#{i}" if raw in names else raw
        names.append(name)
        parts = [p.strip() for p in raw.split(_COMPOUND_SEPARATOR) if p.strip()]
        if len(parts) > 1:
            compound[name] = parts
            for part in parts:
                column_of.setdefault(part, name)
        else:
            column_of.setdefault(raw, name)
    absent = [f for f in REQUIRED_FIELDS if f not in column_of]
    if absent:
        raise InputError(
            f"not a conn.log: #fields lacks required field(s) {', '.join(absent)}",
            where=where,
            kind="header",
        )
    packed = {p for parts in compound.values() for p in parts}
    if packed & {*NUMERIC_FIELDS, "id.orig_h", "id.resp_h"}:
        raise InputError(
            "unsupported #fields: a numeric or address field shares a column with others",
            where=where,
            kind="header",
        )
    kinds = {column_of[f]: _tsvscan.NUMBER for f in NUMERIC_FIELDS if f in column_of}
    # Few distinct values (or addresses, canonicalized per distinct value): coded text.
    # Addresses: coded against the reader's AddressBook, kept across blocks.
    kinds.update({column_of[f]: _tsvscan.INTERNED for f in ("id.orig_h", "id.resp_h")})
    for f in ("proto", "service", "conn_state", *LABEL_FIELDS, *DETAILED_LABEL_FIELDS):
        if f in column_of:
            kinds.setdefault(column_of[f], _tsvscan.DISTINCT)
    if "uid" in column_of:
        kinds.setdefault(column_of["uid"], _tsvscan.TEXT)  # one per row: no coding
    scanned = [(i, name) for i, name in enumerate(names) if name in kinds]
    return _TsvPlan(
        n_fields=len(names),
        column_of=column_of,
        compound=compound,
        missing=[f for f in FEATURE_FIELDS if f not in column_of],
        scan=[(i, kinds[name]) for i, name in scanned],
        scan_names=[name for _, name in scanned],
        names={c: f for f, c in reversed(column_of.items())},
    )


def _text_fields(
    n: int,
    unset: frozenset[str],
    *,
    proto: pa.Array | None,
    conn_state: pa.Array | None,
    service: pa.Array | None,
    label: pa.Array | None,
    detailed: pa.Array | None,
) -> dict[str, np.ndarray | None]:
    """Codes of the text fields, each computed once per distinct value.

    Label columns stay None unless the input has one of them; an unset label is
    LABEL_NONE, not background.
    """

    def coded(arr: pa.Array | None, func, dtype, missing) -> np.ndarray:
        if arr is None:
            return np.full(n, missing, dtype=dtype)
        return map_distinct(
            arr, lambda v: missing if v in unset else func(unescape_zeek(v)), dtype, missing
        )

    fields = {
        "proto": coded(proto, lambda v: PROTO_CODE.get(v.lower(), 0), np.uint8, 0),
        "state": coded(conn_state, lambda v: STATE_CODE.get(v, 0), np.uint8, 0),
        "service": coded(service, service_flags, np.uint8, 0),
        "label": None,
        "detailed_label": None,
    }
    if label is not None or detailed is not None:
        fields["label"] = coded(label, label_code, np.int8, LABEL_NONE)
        fields["detailed_label"] = coded(detailed, str, object, "")
    return fields


def _arrow_text(count: int, offsets: bytearray, data: bytearray) -> pa.StringArray:
    """Scanned text in Arrow's string layout as an Arrow array (the scanner checked UTF-8)."""
    # from_buffers, not pa.array(...): the latter imports pandas to look for its types.
    return pa.Array.from_buffers(
        pa.string(), count, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def _arrow_coded(codes: bytearray, distinct: tuple[int, bytearray, bytearray]) -> pa.Array:
    """Scanned DISTINCT codes and values as an Arrow dictionary array."""
    n = len(codes) // 4
    return pa.DictionaryArray.from_buffers(
        DICT_TYPE, n, [None, pa.py_buffer(codes)], _arrow_text(*distinct)
    )


def _comment_lines(block: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of each line that begins with ``#`` in a block of whole lines."""
    # Jumping between "#" bytes (memchr) is much faster than a multiline regex over
    # megabytes of data lines, which rarely contain "#".
    pos = block.find(b"#")
    while pos >= 0:
        if pos == 0 or block[pos - 1] == 10:
            end = block.find(b"\n", pos) + 1
            yield pos, end
            pos = block.find(b"#", end)
        else:
            pos = block.find(b"#", pos + 1)


class _TsvDecoder:
    """Zeek ASCII (TSV) blocks to chunks, following header blocks as they come."""

    fmt = FORMAT_TSV

    def __init__(self, parser: ConnLogParser) -> None:
        self.parser = parser
        self.header = ZeekHeader()
        self.plan: _TsvPlan | None = None
        self._invalid: list[tuple[int, int, int, str]] = []
        self._addresses = AddressBook()

    def decode(self, block: bytes, first_line: int, n_lines: int) -> list[ConnChunk]:
        # memchr for "#" is cheap; data lines rarely contain one, so the exact scan for
        # comment lines runs only on blocks that may hold a header.
        if block.find(b"#") < 0:
            return self._decode_run(block, first_line, n_lines)
        chunks: list[ConnChunk] = []
        pos, line = 0, first_line
        for start, end in _comment_lines(block):
            if start > pos:
                run = block[pos:start]
                count = count_newlines(run)
                chunks += self._decode_run(run, line, count)
                line += count
            text = block[start:end].rstrip(b"\r\n").decode("utf-8", errors="replace")
            self.header.apply(text)
            if not text.startswith(("#open", "#close", "#path")):
                self.plan = None  # the fields, separator or unset markers may have changed
            line += 1
            pos = end
        if pos < len(block):
            run = block[pos:]
            chunks += self._decode_run(run, line, count_newlines(run))
        return chunks

    def _decode_run(self, run: bytes, first_line: int, n_lines: int) -> list[ConnChunk]:
        parser = self.parser
        findings: list[Finding] = []
        if self.plan is None:
            self.plan = _plan(self.header, f"{parser.source}:{first_line}")
            if self.plan.missing:
                findings.append(
                    Finding(
                        "missing_column",
                        first_line,
                        f"#fields lacks {', '.join(self.plan.missing)}; read as 0/empty",
                        severity=WARNING,
                    )
                )
        plan = self.plan
        header = self.header
        interner = self._addresses.prepare(header.unset_values)
        rows, rows_at, wrong, wrong_fields, empty, scanned = _tsvscan.scan(
            run,
            ord(header.separator),
            plan.n_fields,
            plan.scan,
            header.unset_field.encode(),
            header.empty_field.encode(),
            n_lines + 1,  # the last line may lack its newline
            interner,
        )
        lines = first_line + np.frombuffer(rows_at, dtype=np.int32).astype(np.int64)
        block_lines = BlockLines(run, first_line)

        def line_text(i: int) -> bytes:
            return block_lines.text(lines[i])

        empty = np.frombuffer(empty, dtype=np.int32)
        if empty.size:
            findings.append(
                Finding(
                    "empty_line",
                    first_line + int(empty[0]),
                    "empty line",
                    count=int(empty.size),
                    severity=IGNORED,
                )
            )
        wrong = np.frombuffer(wrong, dtype=np.int32)
        if wrong.size:
            findings.append(
                Finding(
                    "field_count",
                    first_line + int(wrong[0]),
                    f"{wrong_fields} fields where #fields has {plan.n_fields}",
                    block_lines.text(first_line + int(wrong[0])),
                    count=int(wrong.size),
                )
            )
        if not rows:
            settle(findings, parser.report, parser.source, parser.strict)
            return []
        # Columns in field order; a row with several bad fields counts once, for the first.
        drop = np.zeros(rows, dtype=bool)
        columns: dict[str, np.ndarray | pa.Array] = {}
        for (index, kind), name, (values, extra, bad) in zip(
            plan.scan, plan.scan_names, scanned, strict=True
        ):
            bad = np.frombuffer(bad, dtype=np.int32)
            if kind == _tsvscan.NUMBER:
                columns[name] = np.frombuffer(values, dtype=np.float64)
            elif kind == _tsvscan.INTERNED:
                columns[name] = np.frombuffer(values, dtype=np.int32)
            elif kind == _tsvscan.DISTINCT:
                columns[name] = _arrow_coded(values, extra)
            else:
                columns[name] = _arrow_text(rows, values, extra)
            fresh = bad[~drop[bad]] if bad.size else bad
            if fresh.size:
                first = int(fresh[0])
                reason = f"{plan.names[name]} is not valid UTF-8"
                if kind == _tsvscan.NUMBER:
                    field_text = line_text(first).split(header.separator.encode())[index]
                    with contextlib.suppress(UnicodeDecodeError):
                        reason = f"{plan.names[name]} is not a number: {field_text.decode()!r}"
                findings.append(
                    Finding("bad_value", int(lines[first]), reason, line_text(first), fresh.size)
                )
                drop[fresh] = True
        chunk = self._assemble(columns, lines, line_text, findings, drop if drop.any() else None)
        settle(findings, parser.report, parser.source, parser.strict)
        return [chunk] if chunk is not None else []

    def _assemble(
        self,
        columns: dict[str, np.ndarray | pa.Array],
        lines: np.ndarray,
        line_text: Callable[[int], bytes],
        findings: list[Finding],
        drop: np.ndarray | None,
    ) -> ConnChunk | None:
        plan = self.plan
        unset = self.header.unset_values
        n = len(lines)
        texts = dict(columns)
        for column, parts in plan.compound.items():
            wrong = self._split_compound(texts, column, parts)
            if wrong is None:
                continue
            hits = np.flatnonzero(wrong if drop is None else wrong & ~drop)
            if hits.size:
                findings.append(
                    Finding(
                        "field_count",
                        int(lines[hits[0]]),
                        f"field {column!r} does not hold {len(parts)} values",
                        line_text(int(hits[0])),
                        count=int(hits.size),
                    )
                )
            drop = wrong if drop is None else drop | wrong

        def get(name: str) -> pa.Array | None:
            column = plan.column_of.get(name)
            if column is None:
                return None
            return texts[name] if column in plan.compound else texts[column]

        def number(name: str) -> np.ndarray:
            arr = get(name)
            return np.full(n, np.nan) if arr is None else arr

        label = next((get(f) for f in LABEL_FIELDS if get(f) is not None), None)
        detailed = next((get(f) for f in DETAILED_LABEL_FIELDS if get(f) is not None), None)
        uid = get("uid")
        cols = RecordColumns(
            ts=number("ts"),
            duration=number("duration"),
            orig=get("id.orig_h"),
            resp=get("id.resp_h"),
            resp_p=number("id.resp_p"),
            orig_pkts=number("orig_pkts"),
            resp_pkts=number("resp_pkts"),
            orig_ip_bytes=number("orig_ip_bytes"),
            resp_ip_bytes=number("resp_ip_bytes"),
            uid=uid,
            **_text_fields(
                n,
                unset,
                proto=get("proto"),
                conn_state=get("conn_state"),
                service=get("service"),
                label=label,
                detailed=detailed,
            ),
        )
        return build_chunk(
            cols,
            lines,
            source=self.parser.source,
            fmt=self.fmt,
            line_text=line_text,
            findings=findings,
            drop=drop,
            addresses=self._addresses,
        )

    def _split_compound(self, texts: dict, column: str, parts: list[str]) -> np.ndarray | None:
        """Unpack an IoT-23 style field into one dictionary column per packed field."""
        arr = as_dictionary(texts[column])
        values = arr.dictionary.to_pylist()
        split = [v.split(_COMPOUND_SEPARATOR) for v in values]
        width = len(parts)
        for j, name in enumerate(parts):
            sub = pa.array([s[j].strip() if len(s) == width else "" for s in split], pa.string())
            texts[name] = pa.DictionaryArray.from_arrays(arr.indices, sub)
        wrong = np.array([len(s) != width for s in split], dtype=bool)
        if not wrong.any():
            return None
        indices = pc.fill_null(arr.indices, 0).to_numpy(zero_copy_only=False)
        return wrong[indices] if len(wrong) else None


def _json_schema(ts_text: bool) -> pa.Schema:
    text = pa.string()
    number = pa.float64()
    fields = [
        ("ts", text if ts_text else number),
        ("uid", text),
        ("id.orig_h", text),
        ("id.resp_h", text),
        ("id.resp_p", number),
        ("proto", text),
        ("service", text),
        ("duration", number),
        ("conn_state", text),
        ("orig_pkts", number),
        ("resp_pkts", number),
        ("orig_ip_bytes", number),
        ("resp_ip_bytes", number),
        *((name, text) for name in LABEL_FIELDS + DETAILED_LABEL_FIELDS),
        ("id", pa.struct([("orig_h", text), ("resp_h", text), ("resp_p", number)])),
    ]
    return pa.schema(fields)


_JSON_UNSET = frozenset({"-", "(empty)", ""})
"""Zeek JSON leaves unset fields out; labelling tools still write these texts."""


class _JsonDecoder:
    """Zeek JSON-lines blocks to chunks (flat ``id.orig_h`` keys or a nested ``id`` object)."""

    fmt = FORMAT_JSON

    def __init__(self, parser: ConnLogParser, first_record: dict) -> None:
        self.parser = parser
        # Zeek writes ts as a number, or as ISO 8601 text with JSON::TS_ISO8601.
        self.ts_text = isinstance(first_record.get("ts"), str)
        self.schema = _json_schema(self.ts_text)
        self._addresses = AddressBook()

    def decode(self, block: bytes, first_line: int, n_lines: int) -> list[ConnChunk]:
        parser = self.parser
        findings: list[Finding] = []

        def on_bad(line: int, text: bytes, message: str) -> None:
            kind, reason, _ = explain_json_line(text, message)
            findings.append(Finding(kind, line, reason, text))

        table, lines = read_json_block(block, first_line, n_lines, self.schema, on_bad)
        block_lines = BlockLines(block, first_line)
        chunk = (
            self._assemble(table, lines, findings, lambda i: block_lines.text(lines[i]))
            if table.num_rows
            else None
        )
        settle(findings, parser.report, parser.source, parser.strict)
        return [chunk] if chunk is not None else []

    def _assemble(
        self,
        table: pa.Table,
        lines: np.ndarray,
        findings: list[Finding],
        line_text: Callable[[int], bytes],
    ) -> ConnChunk | None:
        n = table.num_rows
        nested = table.column("id").combine_chunks()

        def col(name: str) -> pa.Array:
            return table.column(name).combine_chunks()

        def with_nested(name: str, sub: str) -> pa.Array:
            flat = col(name)
            if flat.null_count and nested.null_count < n:
                return pc.coalesce(flat, pc.struct_field(nested, sub))
            return flat

        def text_column(names: tuple[str, ...]) -> pa.Array | None:
            arrays = [col(name) for name in names if col(name).null_count < n]
            if not arrays:
                return None
            return pc.coalesce(*arrays) if len(arrays) > 1 else arrays[0]

        uid = col("uid")
        book = self._addresses
        book.prepare(_JSON_UNSET)
        cols = RecordColumns(
            ts=iso_seconds(col("ts")) if self.ts_text else numbers(col("ts")),
            duration=numbers(col("duration")),
            orig=book.intern_column(with_nested("id.orig_h", "orig_h")),
            resp=book.intern_column(with_nested("id.resp_h", "resp_h")),
            resp_p=numbers(with_nested("id.resp_p", "resp_p")),
            orig_pkts=numbers(col("orig_pkts")),
            resp_pkts=numbers(col("resp_pkts")),
            orig_ip_bytes=numbers(col("orig_ip_bytes")),
            resp_ip_bytes=numbers(col("resp_ip_bytes")),
            uid=None if uid.null_count == n else uid,
            **_text_fields(
                n,
                _JSON_UNSET,
                proto=col("proto"),
                conn_state=col("conn_state"),
                service=col("service"),
                label=text_column(LABEL_FIELDS),
                detailed=text_column(DETAILED_LABEL_FIELDS),
            ),
        )
        return build_chunk(
            cols,
            lines,
            source=self.parser.source,
            fmt=self.fmt,
            line_text=line_text,
            findings=findings,
            addresses=self._addresses,
        )


_DETECT_BYTES = 1 << 16
"""Detection gives up waiting for a first newline after this much (binary input)."""


def _without_bom(data: bytes) -> bytes:
    return data[3:] if data.startswith(b"\xef\xbb\xbf") else data


class ConnLogParser:
    """Incremental, sans-I/O parser: bytes in, ConnChunks out.

    ``feed`` accepts any slicing of the byte stream (the partial trailing line is kept for
    the next call) and returns chunks as blocks of ``chunk_rows`` lines complete; ``flush``
    parses the complete lines held so far (a live tail); ``close`` parses what is left.
    The format (Zeek TSV, Zeek JSON lines, Suricata EVE) is detected from the first line
    unless ``fmt`` names it. Malformed lines are skipped and counted in ``report``; with
    ``strict=True`` the first one raises :class:`InputError` instead.
    """

    def __init__(
        self,
        source: str = "<stream>",
        *,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        strict: bool = False,
        report: ProblemReport | None = None,
        fmt: str | None = None,
    ) -> None:
        if fmt not in (None, FORMAT_TSV, FORMAT_JSON, FORMAT_EVE):
            raise ValueError(f"unknown format {fmt!r}")
        self.source = source
        self.strict = strict
        self.report = report if report is not None else ProblemReport()
        self.rows = 0
        """Rows returned so far."""
        self._format = fmt
        self._lines = LineBuffer(chunk_rows)
        self._head = bytearray()
        self._decoder = None
        self._closed = False

    @property
    def format(self) -> str | None:
        """The detected (or given) format, None until the first line has arrived."""
        return self._format

    @property
    def lines_read(self) -> int:
        """Complete lines handed to the decoder so far."""
        return self._lines.next_line - 1

    def feed(self, data: bytes) -> list[ConnChunk]:
        """Parse the complete lines in ``data`` (plus what was held back); return chunks."""
        if self._closed:
            raise ValueError("feed() after close()")
        if self._decoder is None:
            self._head += data
            if not self._ready(final=False):
                return []
            data, self._head = _without_bom(bytes(self._head)), bytearray()
        return self._decode(self._lines_feed(data))

    def flush(self) -> list[ConnChunk]:
        """Parse every complete line held back, without waiting for ``chunk_rows`` of them.

        For a live tail: ``feed(appended) + flush()`` returns the rows written so far,
        while the partial last line, the header state and the line count stay for the
        next feed. Smaller blocks cost more per row, so file readers do not call this.
        """
        if self._closed or self._decoder is None:
            return []
        return self._decode(self._lines.drain())

    def close(self) -> list[ConnChunk]:
        """Parse everything held back (a last line without newline included)."""
        if self._closed:
            return []
        self._closed = True
        if self._decoder is None:
            if not self._head.strip():
                return []  # an empty input holds no connections, in any format
            self._ready(final=True)
            self._lines_feed(_without_bom(bytes(self._head)))
            self._head = bytearray()
        return self._decode(self._lines.flush())

    def _lines_feed(self, data: bytes) -> list[tuple[int, bytes | bytearray, int]]:
        try:
            return self._lines.feed(data)
        except ValueError as exc:
            raise InputError(str(exc), where=self.source, kind="line_length") from None

    def _decode(self, blocks: list[tuple[int, bytes | bytearray, int]]) -> list[ConnChunk]:
        chunks = []
        for first_line, block, n_lines in blocks:
            chunks += self._decoder.decode(block, first_line, n_lines)
        self.rows += sum(len(c) for c in chunks)
        return chunks

    def _ready(self, final: bool) -> bool:
        """Create the decoder once the first non-blank line is complete."""
        head = bytes(self._head)
        stripped = head.lstrip(b"\xef\xbb\xbf").lstrip()
        if not final and b"\n" not in stripped and len(head) < _DETECT_BYTES:
            return False
        first_line = stripped.split(b"\n", 1)[0]
        fmt = self._format or detect_format(stripped)
        if fmt is None:
            raise InputError(
                "unknown input format: expected a Zeek conn.log (TSV with a #separator header, "
                f"or JSON lines) or Suricata EVE JSON; it starts with {excerpt(first_line)!r}",
                where=self.source,
                kind="format",
            )
        self._format = fmt
        if fmt == FORMAT_TSV:
            self._decoder = _TsvDecoder(self)
        else:
            try:
                record = json.loads(first_line)
            except ValueError:
                record = {}
            if fmt == FORMAT_JSON:
                self._decoder = _JsonDecoder(self, record if isinstance(record, dict) else {})
            else:
                from seqwatch.sidecar.eve import EveDecoder

                self._decoder = EveDecoder(self)
        return True
