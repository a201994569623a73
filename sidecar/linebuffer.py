"""Cutting a byte stream into blocks of whole lines, for the columnar parsers.

The parsers hand whole blocks to compiled readers (the TSV field scanner, Arrow's JSON
reader), so they need complete lines and a bounded block size; the byte stream arrives
in arbitrary pieces (file reads, a live tail's appended bytes, decompressor output).
:class:`LineBuffer` keeps the partial trailing line between feeds and numbers the lines it
hands out.
"""

from __future__ import annotations

import sys

import numpy as np

from seqwatch.sidecar._tsvscan import count_newlines as _count
from seqwatch.sidecar._tsvscan import nth_newline as _nth_newline

_PIECE_BYTES = 1 << 22
"""Large feeds are split into pieces of this size so finding the n-th newline stays cheap."""
MAX_LINE_BYTES = 1 << 26
"""A partial line longer than this is not a log line; holding it would break bounded memory."""


def newline_positions(data: bytes) -> np.ndarray:
    """Offsets of every ``\\n`` in ``data`` (vectorized; one pass)."""
    return np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)


def count_newlines(data: bytes) -> int:
    r"""Number of ``\n`` in ``data`` (vectorized C, several times faster than bytes.count)."""
    return _count(data)


class BlockLines:
    """The text of single lines of a block, by line number, for problem excerpts.

    Newline offsets are found only when the first excerpt is asked for: clean blocks,
    the common case, never pay for them.
    """

    def __init__(self, block: bytes, first_line: int) -> None:
        self.block = block
        self.first_line = first_line
        self._ends: np.ndarray | None = None

    def text(self, line: int) -> bytes:
        """The bytes of line number ``line`` (without its newline)."""
        if self._ends is None:
            self._ends = newline_positions(self.block)
        k = int(line) - self.first_line
        start = 0 if k == 0 else int(self._ends[k - 1]) + 1
        return self.block[start : int(self._ends[k])]


class LineBuffer:
    """Accumulates bytes and releases blocks of at most ``max_lines`` complete lines.

    Each released block ends with a newline and comes as ``(first_line, block, n_lines)``:
    the 1-based number of its first line (so callers can report ``file:line`` exactly) and
    its number of lines.

    Bytes are held as ``(data, start, end)`` ranges of the objects fed, so that a byte is
    copied once, when its block is assembled (a block equal to one object fed is not
    copied at all). A block may be a ``bytearray`` that the buffer fills again for a later
    block once nothing else refers to it, so a caller may keep blocks as long as it likes.
    """

    def __init__(self, max_lines: int) -> None:
        if max_lines < 1:
            raise ValueError(f"max_lines must be >= 1, got {max_lines}")
        self.max_lines = max_lines
        self._pieces: list[list] = []  # [data: bytes, start, end, complete lines in it]
        self._lines = 0  # complete lines held
        self._arena: bytearray | None = None  # see _assemble
        self.next_line = 1
        """Number of the first line not yet released."""

    @property
    def pending_bytes(self) -> int:
        """Bytes held (complete lines not yet released plus the partial last line)."""
        return sum(end - start for _, start, end, _ in self._pieces)

    def feed(self, data: bytes) -> list[tuple[int, bytes | bytearray, int]]:
        """Add bytes; return the blocks of ``max_lines`` lines that are now complete."""
        if not isinstance(data, bytes):
            data = bytes(data)  # a bytearray or view may change under us: own a copy
        for start in range(0, len(data), _PIECE_BYTES):
            end = min(start + _PIECE_BYTES, len(data))
            count = _count_range(data, start, end)
            self._pieces.append([data, start, end, count])
            self._lines += count
        blocks = []
        while self._lines >= self.max_lines:
            blocks.append(self._cut(self.max_lines))
        # Only a run of newline-free pieces at the end can make the partial line long.
        tail_open = bool(self._pieces) and not self._pieces[-1][3]
        if tail_open and self._partial_bytes() > MAX_LINE_BYTES:
            line = self.next_line + self._lines
            raise ValueError(f"line {line} is longer than {MAX_LINE_BYTES} bytes")
        return blocks

    def _partial_bytes(self) -> int:
        """Bytes after the last complete line."""
        total = 0
        for data, start, end, count in reversed(self._pieces):
            if count:
                return total + end - data.rfind(b"\n", start, end) - 1
            total += end - start
        return total

    def drain(self) -> list[tuple[int, bytes | bytearray, int]]:
        """Release every complete line held now; the partial last line stays."""
        blocks = []
        while self._lines >= self.max_lines:
            blocks.append(self._cut(self.max_lines))
        if self._lines:
            blocks.append(self._cut(self._lines))
        return blocks

    def flush(self) -> list[tuple[int, bytes | bytearray, int]]:
        """Release everything held; a final line without a newline is completed with one."""
        blocks = self.drain()
        rest = _join([(data, start, end) for data, start, end, _ in self._pieces])
        self._pieces.clear()
        if rest:
            blocks.append((self.next_line, rest + b"\n", 1))
            self.next_line += 1
        return blocks

    def _cut(self, lines: int) -> tuple[int, bytes | bytearray, int]:
        """Remove and return the first ``lines`` complete lines as one block."""
        pieces = self._pieces
        taken: list[tuple[bytes, int, int]] = []
        need = lines
        i = 0
        while pieces[i][3] < need:
            data, start, end, count = pieces[i]
            taken.append((data, start, end))
            need -= count
            i += 1
        data, start, end, count = pieces[i]
        if count == need:
            cut = data.rfind(b"\n", start, end) + 1
        else:
            cut = _nth_newline(data, start, end, need) + 1
        taken.append((data, start, cut))
        if cut < end:
            if 4 * (end - cut) < len(data):
                # Keep a small rest, not the large object it was fed in (a live tail's
                # partial last line would pin megabytes).
                data, cut, end = data[cut:end], 0, end - cut
            pieces[i] = [data, cut, end, count - need]
            del pieces[:i]
        else:
            del pieces[: i + 1]
        self._lines -= lines
        first = self.next_line
        self.next_line += lines
        return first, self._assemble(taken), lines

    def _assemble(self, ranges: list[tuple[bytes, int, int]]) -> bytes | bytearray:
        """One block from ``(data, start, end)`` ranges, copied once or not at all.

        Blocks that span several fed objects are assembled in a bytearray that is reused
        once nobody else holds it: a fresh multi-megabyte object per block would cost
        page faults (the allocator hands such sizes back to the system) on top of the copy.
        """
        if len(ranges) == 1 and ranges[0][1] == 0 and ranges[0][2] == len(ranges[0][0]):
            return ranges[0][0]
        size = sum(end - start for _, start, end in ranges)
        # Two references are self._arena and getrefcount's argument; more: a caller kept it.
        if self._arena is None or sys.getrefcount(self._arena) > 2:
            self._arena = bytearray(size)
        arena = self._arena
        if len(arena) > size:
            del arena[size:]  # a small shrink keeps the allocation
        elif len(arena) < size:
            arena.extend(bytes(size - len(arena)))
        view = memoryview(arena)
        pos = 0
        for data, start, end in ranges:
            view[pos : pos + end - start] = memoryview(data)[start:end]
            pos += end - start
        view.release()
        return arena


def _count_range(data: bytes, start: int, end: int) -> int:
    """Newlines in ``data[start:end]``, without copying the range."""
    return _count(data, start, end)


def _join(ranges: list[tuple[bytes, int, int]]) -> bytes:
    """The bytes of several ``(data, start, end)`` ranges, copied once (or not at all)."""
    if len(ranges) == 1:
        data, start, end = ranges[0]
        if start == 0 and end == len(data):
            return data
    return b"".join(memoryview(data)[start:end] for data, start, end in ranges)
