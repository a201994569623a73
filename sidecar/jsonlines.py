"""Reading a block of JSON lines with Arrow, finding the bad lines without a per-line loop.

Arrow's JSON reader parses a whole block in C++ but fails the whole block on one bad line
and does not say which physical line it was. The common case (a clean block) is therefore
one call; only a failing block is split in halves until the bad lines are isolated, which
costs about twice the block's parse time plus a little per bad line.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.json as pajson

from seqwatch.sidecar.linebuffer import newline_positions

_SMALL_RANGE = 8
"""Ranges this short are tried line by line instead of halved further."""

BadLine = Callable[[int, bytes, str], None]
"""Called as ``on_bad(line_number, line_bytes, arrow_message)`` for each rejected line."""


def json_options(
    schema: pa.Schema, block_bytes: int
) -> tuple[pajson.ReadOptions, pajson.ParseOptions]:
    """Single-threaded Arrow JSON options reading only ``schema``'s fields."""
    read = pajson.ReadOptions(use_threads=False, block_size=max(block_bytes + 1, 1 << 16))
    parse = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    return read, parse


def _parse(data: bytes, schema: pa.Schema) -> pa.Table:
    read, parse = json_options(schema, len(data))
    return pajson.read_json(pa.BufferReader(data), read_options=read, parse_options=parse)


def explain_json_line(line: bytes, arrow_message: str) -> tuple[str, str, object]:
    """Classify one rejected line: ``(kind, reason, parsed value or None)``.

    ``kind`` is ``bad_json`` for text that is not one JSON object, else ``bad_value``
    (valid JSON whose values do not fit the expected types).
    """
    try:
        value = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        return "bad_json", f"not valid JSON: {exc}", None
    if not isinstance(value, dict):
        return "bad_json", f"not a JSON object but {type(value).__name__}", value
    message = arrow_message.removeprefix("JSON parse error: ")
    return "bad_value", f"a value has the wrong type: {message}", value


def read_json_block(
    block: bytes, first_line: int, n_lines: int, schema: pa.Schema, on_bad: BadLine
) -> tuple[pa.Table, np.ndarray]:
    """Parse a block of ``n_lines`` whole JSON lines; return the good rows and their line numbers.

    Blank lines are skipped silently. Every other line must hold exactly one JSON object;
    lines that do not, or whose values do not convert to ``schema``, are handed to
    ``on_bad`` and left out.
    """
    try:
        table = _parse(block, schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        table = None
    if table is not None and table.num_rows == n_lines:
        return table, np.arange(first_line, first_line + n_lines, dtype=np.int64)

    ends = newline_positions(block)
    starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64)
    lengths = ends - starts
    # Only short lines can be blank; checking them in Python touches few lines.
    blank = lengths == 0
    for i in np.flatnonzero((lengths > 0) & (lengths <= 8)):
        blank[i] = not block[starts[i] : ends[i]].strip()
    content = np.flatnonzero(~blank)
    if table is not None and table.num_rows == content.size:
        return table, first_line + content

    tables: list[pa.Table] = []
    kept: list[np.ndarray] = []

    def line_bytes(k: int) -> bytes:
        i = content[k]
        return block[starts[i] : ends[i]]

    def try_range(lo: int, hi: int) -> bool:
        data = block[starts[content[lo]] : ends[content[hi - 1]] + 1]
        try:
            piece = _parse(data, schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            if hi - lo == 1:
                on_bad(first_line + int(content[lo]), line_bytes(lo), str(exc))
            return False
        if piece.num_rows != hi - lo:
            if hi - lo == 1:
                on_bad(first_line + int(content[lo]), line_bytes(lo), "more than one JSON value")
            return False
        tables.append(piece)
        kept.append(content[lo:hi])
        return True

    def split(lo: int, hi: int) -> None:
        if hi - lo <= _SMALL_RANGE:
            for k in range(lo, hi):
                try_range(k, k + 1)
            return
        mid = (lo + hi) // 2
        for a, b in ((lo, mid), (mid, hi)):
            if not try_range(a, b):
                split(a, b)

    split(0, content.size)
    if not tables:
        return schema.empty_table(), np.zeros(0, dtype=np.int64)
    lines = first_line + np.concatenate(kept)
    return pa.concat_tables(tables), lines.astype(np.int64)
