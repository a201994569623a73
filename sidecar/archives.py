"""Reading connection archives: files, many files or rotated Zeek trees, in time order.

This is the thin I/O layer around :class:`~seqwatch.sidecar.zeeklog.ConnLogParser`:
it finds the conn.log / eve.json files, decompresses gzip (recognized by its magic bytes,
not the name), feeds the parser and yields ConnChunks, streaming with bounded memory.

Order of files:

- a directory is walked recursively; directories named ``YYYY-MM-DD`` sort by date and
  before other names (Zeek's ``logs/current`` then comes last), files by the start time in
  rotated names (``conn.00:00:00-01:00:00.log.gz``), unrotated names (``conn.log``) last;
- loose files (and separate directories) are ordered by their first record's ts, which
  costs a peek at each file's first block.

Within a file, rows keep the file's order (Zeek writes conn.log in removal order).
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Iterable, Iterator
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

from seqwatch.sidecar.problems import InputError, ProblemReport
from seqwatch.sidecar.records import ConnChunk
from seqwatch.sidecar.zeeklog import DEFAULT_CHUNK_ROWS, ConnLogParser

if TYPE_CHECKING:
    from seqwatch.sidecar.labels import LabelSet

READ_BYTES = 1 << 20
"""Bytes read (and, for gzip, decompressed) per step."""
_PEEK_BYTES = 1 << 16
_PEEK_LIMIT = 1 << 18
"""How far to look for a first record when ordering files."""

_GZIP_MAGIC = b"\x1f\x8b"
_CONN_NAME = re.compile(r"^(?:.+[._-])?conn(?:\.[^/]*)?\.log(?:\..*)?$", re.IGNORECASE)
_LABELED_NAME = re.compile(r"^.+\.log\.labeled.*$", re.IGNORECASE)
_EVE_NAME = re.compile(r"^eve(?:[._-][^/]*)?\.json(?:\..*)?$", re.IGNORECASE)
_DATE_DIR = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_ROTATED_TIME = re.compile(r"\.(\d{2}):(\d{2}):(\d{2})-\d{2}:\d{2}:\d{2}\.")

PathArg = str | os.PathLike
Paths = PathArg | Iterable[PathArg]


def is_connection_file(name: str) -> bool:
    """True for names of conn.log / eve.json files, rotated or compressed."""
    if name.startswith("."):
        return False
    return bool(_CONN_NAME.match(name) or _LABELED_NAME.match(name) or _EVE_NAME.match(name))


def read_bytes(path: PathArg, block_size: int = READ_BYTES) -> Iterator[bytes]:
    """The content of a file in blocks, gunzipped if it starts with the gzip magic.

    Raises InputError (never a zlib or OS traceback) for a missing or unreadable file, a
    truncated gzip stream or corrupt compressed data.
    """
    name = os.fspath(path)
    try:
        handle = open(name, "rb")  # noqa: SIM115 - closed in finally; a generator holds it
    except OSError as exc:
        raise InputError(f"cannot open: {exc.strerror or exc}", where=name) from None
    try:
        head = handle.read(len(_GZIP_MAGIC))
        if head != _GZIP_MAGIC:
            yield head
            while block := _read(handle, block_size, name):
                yield block
            return
        yield from _gunzip(handle, head, block_size, name)
    finally:
        handle.close()


def _read(handle, size: int, name: str) -> bytes:
    try:
        return handle.read(size)
    except OSError as exc:
        raise InputError(f"read error: {exc.strerror or exc}", where=name) from None


def _gunzip(handle, head: bytes, block_size: int, name: str) -> Iterator[bytes]:
    """Decompress gzip members one after another (``cat a.gz b.gz`` is valid gzip)."""
    decomp = zlib.decompressobj(wbits=31)
    started = False  # has the current member consumed any input?
    data = head
    while True:
        if not data:
            data = _read(handle, block_size, name)
            if not data:
                if started and not decomp.eof:
                    raise InputError(
                        "truncated gzip file (the compressed stream ends early)", where=name
                    )
                return
        if not started:
            data = data.lstrip(b"\x00")  # zero padding between/after members, as gzip allows
            if not data:
                continue
        started = True
        while True:
            try:
                # Bounded output per call, so a highly compressed block stays small.
                out = decomp.decompress(data, block_size)
            except zlib.error as exc:
                raise InputError(f"corrupt gzip data: {exc}", where=name) from None
            if out:
                yield out
            data = decomp.unconsumed_tail
            if decomp.eof or (not data and len(out) < block_size):
                break
        if decomp.eof:
            data = decomp.unused_data + data
            decomp = zlib.decompressobj(wbits=31)
            started = False


def read_file(
    path: PathArg,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    strict: bool = False,
    report: ProblemReport | None = None,
) -> Iterator[ConnChunk]:
    """Stream one conn.log or eve.json file (plain or gzip, any supported format) as chunks."""
    parser = ConnLogParser(os.fspath(path), chunk_rows=chunk_rows, strict=strict, report=report)
    for block in read_bytes(path):
        yield from parser.feed(block)
    yield from parser.close()


def first_timestamp(path: PathArg) -> float | None:
    """The ts of a file's first record, from its first blocks; None if there is none."""
    parser = ConnLogParser(os.fspath(path), chunk_rows=1024)
    chunks: list[ConnChunk] = []
    try:
        with closing(read_bytes(path, _PEEK_BYTES)) as blocks:
            read = 0
            for block in blocks:
                chunks += parser.feed(block)
                read += len(block)
                if chunks or read >= _PEEK_LIMIT:
                    chunks += parser.flush()
                    break
            else:
                chunks += parser.close()
    except InputError:
        return None  # reading it for real will report the problem
    for chunk in chunks:
        if len(chunk):
            return float(chunk.ts[0])
    return None


def _dir_key(part: str) -> tuple:
    match = _DATE_DIR.match(part)
    return (0, match.groups()) if match else (1, part)


def _file_key(name: str) -> tuple:
    match = _ROTATED_TIME.search(name)
    return (0, match.groups(), name) if match else (1, (), name)


def _walk(root: Path) -> list[Path]:
    """Connection files under ``root`` in tree order (dates, rotation times, names)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if is_connection_file(name):
                found.append(Path(dirpath, name))

    def key(path: Path) -> tuple:
        parts = path.relative_to(root).parts
        return (tuple(_dir_key(p) for p in parts[:-1]), _file_key(parts[-1]))

    return sorted(found, key=key)


def _as_list(paths: Paths) -> list[PathArg]:
    if isinstance(paths, str | os.PathLike):
        return [paths]
    return list(paths)


def iter_files(paths: Paths) -> list[Path]:
    """The connection files that ``paths`` names, in reading order (module docstring).

    A file given explicitly is read whatever its name; directories contribute the files
    whose names look like conn.log / eve.json. A missing path is an InputError.
    """
    groups: list[list[Path]] = []
    for arg in _as_list(paths):
        path = Path(arg)
        if path.is_dir():
            files = _walk(path)
            if files:
                groups.append(files)
        elif path.exists():
            groups.append([path])
        else:
            raise InputError("no such file or directory", where=str(path))
    if len(groups) > 1:
        starts = [first_timestamp(group[0]) for group in groups]
        order = sorted(
            range(len(groups)),
            key=lambda i: (starts[i] is None, starts[i] or 0.0, i),
        )
        groups = [groups[i] for i in order]
    return [path for group in groups for path in group]


def read_connections(
    paths: Paths,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    strict: bool = False,
    report: ProblemReport | None = None,
    labels: LabelSet | Paths | None = None,
) -> Iterator[ConnChunk]:
    """Stream every connection in ``paths`` (files and/or directories) as ConnChunks.

    Files are read in the order of :func:`iter_files`; malformed lines are skipped and
    counted in ``report`` (pass one in to read it afterwards), or with ``strict=True``
    raise InputError. ``labels`` (a :class:`~seqwatch.sidecar.labels.LabelSet`, or a path
    or list of paths of label files) is applied to every chunk.
    """
    if labels is not None:
        from seqwatch.sidecar.labels import LabelSet

        if not isinstance(labels, LabelSet):
            labels = LabelSet.load(labels)
    report = report if report is not None else ProblemReport()
    for path in iter_files(paths):
        for chunk in read_file(path, chunk_rows=chunk_rows, strict=strict, report=report):
            yield labels.apply(chunk) if labels is not None else chunk
