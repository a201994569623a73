"""Vectorized column helpers shared by the readers (Zeek TSV/JSON, Suricata EVE).

Everything here works per column or per *distinct value* of a column, never per row: Arrow
dictionary-encodes the text columns, Python touches each distinct value once (address
canonicalization, state codes, label codes), and numpy gathers the results back to rows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqwatch.sidecar._tsvscan import Interner, localize
from seqwatch.sidecar.addresses import canonical_address
from seqwatch.sidecar.problems import Finding
from seqwatch.sidecar.records import ConnChunk

DICT_TYPE = pa.dictionary(pa.int32(), pa.string())

_ZEEK_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")
_ISO_TIME = (
    r"^(?P<base>\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d)(?:\.(?P<frac>\d{1,9}))?"
    r"(?P<tz>Z|[+-]\d\d:?\d\d)?$"
)


def as_dictionary(arr: pa.Array | pa.ChunkedArray) -> pa.DictionaryArray:
    """One dictionary-encoded array (Arrow readers may hand back chunked or plain text)."""
    if isinstance(arr, pa.ChunkedArray):
        # Concatenation unifies the chunks' dictionaries.
        arr = arr.chunk(0) if arr.num_chunks == 1 else arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        return arr
    if not pa.types.is_string(arr.type):
        arr = pc.cast(arr, pa.string())
    return pc.dictionary_encode(arr)


# Arrow -> numpy without ``to_numpy``: pyarrow's conversion imports pandas (about 0.15 s
# of CPU and tens of MiB the first time), and the runtime has no use for it. Primitive
# columns are read straight from their buffers instead.
_NUMPY_TYPES = {
    pa.int8(): np.int8,
    pa.int16(): np.int16,
    pa.int32(): np.int32,
    pa.int64(): np.int64,
    pa.uint8(): np.uint8,
    pa.uint16(): np.uint16,
    pa.uint32(): np.uint32,
    pa.uint64(): np.uint64,
    pa.float64(): np.float64,
}


def _single(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        return arr.chunk(0) if arr.num_chunks == 1 else arr.combine_chunks()
    return arr


def valid_rows(arr: pa.Array) -> np.ndarray | None:
    """Which rows of an array hold a value, or None when none is null."""
    if arr.null_count == 0:
        return None
    bits = np.frombuffer(arr.buffers()[0], dtype=np.uint8)
    valid = np.unpackbits(bits, count=arr.offset + len(arr), bitorder="little")
    return valid[arr.offset :].view(bool)


def values_view(arr: pa.Array) -> np.ndarray:
    """The values of a fixed-width numeric array, as a numpy view of its buffer (no copy).

    Null rows hold whatever the buffer holds there; see :func:`valid_rows`.
    """
    dtype = np.dtype(_NUMPY_TYPES[arr.type])
    buffer = arr.buffers()[1]
    if buffer is None:  # an array of nulls only may have no value buffer
        return np.zeros(len(arr), dtype=dtype)
    return np.frombuffer(buffer, dtype=dtype, count=len(arr), offset=arr.offset * dtype.itemsize)


def gather(table: np.ndarray, arr: pa.DictionaryArray, missing) -> np.ndarray:
    """Per-distinct-value results spread over the rows: ``table[indices]``.

    ``missing`` goes where the row itself is null.
    """
    table = np.concatenate([table, np.array([missing], dtype=table.dtype)])
    indices = values_view(arr.indices)
    valid = valid_rows(arr.indices)
    if valid is not None:
        indices = np.where(valid, indices, len(table) - 1)
    # np.take, not table[indices]: fancy indexing first casts int32 indices to intp,
    # which costs twice the gather itself.
    return np.take(table, indices)


def map_distinct(arr: pa.Array, func: Callable[[str], object], dtype, missing) -> np.ndarray:
    """Apply ``func`` once per distinct text value and spread the results over the rows."""
    arr = as_dictionary(arr)
    values = arr.dictionary.to_pylist()
    table = np.array([func(v) for v in values], dtype=dtype) if values else np.array([], dtype)
    return gather(table, arr, missing)


def numbers(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A numeric column as float64, nulls (unset fields) as NaN."""
    arr = _single(arr)
    if arr.type != pa.float64():
        arr = pc.cast(arr, pa.float64())
    values = values_view(arr)
    valid = valid_rows(arr)
    if valid is None:
        return values
    return np.where(valid, values, np.nan)


def mask_array(mask: np.ndarray) -> pa.Array:
    """A numpy bool array as an Arrow boolean array (for ``filter``), built from bits."""
    bits = np.packbits(mask, bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(mask), [None, pa.py_buffer(bits)])


def unescape_zeek(text: str) -> str:
    """Undo Zeek's ``\\xNN`` escapes (non-printable bytes and separators in string fields)."""
    if "\\x" not in text:
        return text
    # Escapes stand for bytes, which may form UTF-8 sequences together with their
    # neighbours; bytes that do not decode stay visible as \xNN.
    raw = bytearray()
    pos = 0
    for match in _ZEEK_ESCAPE.finditer(text):
        raw += text[pos : match.start()].encode("utf-8")
        raw.append(int(match.group(1), 16))
        pos = match.end()
    raw += text[pos:].encode("utf-8")
    return raw.decode("utf-8", errors="backslashreplace")


def unescape_column(arr: pa.Array) -> np.ndarray:
    """A text column as an object array of str, Zeek escapes undone, nulls as ""."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.chunk(0) if arr.num_chunks == 1 else arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        return map_distinct(arr, unescape_zeek, object, "")
    out = (pc.fill_null(arr, "") if arr.null_count else arr).to_numpy(zero_copy_only=False)
    escaped = pc.match_substring(arr, "\\x")
    if escaped.true_count:
        for i in np.flatnonzero(pc.fill_null(escaped, False).to_numpy(zero_copy_only=False)):
            out[i] = unescape_zeek(out[i])
    return out


def iso_seconds(arr: pa.Array) -> np.ndarray:
    """ISO 8601 times (``2024-01-15T10:00:00.123456+0100``, ``...Z``) as epoch seconds.

    Text that is not such a time gives NaN. Suricata writes this form; Zeek JSON does with
    ``LogAscii::json_timestamps = JSON::TS_ISO8601``.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    ok = pc.fill_null(pc.match_substring_regex(arr, _ISO_TIME), False)
    parts = pc.extract_regex(pc.if_else(ok, arr, pa.scalar(None, pa.string())), _ISO_TIME)
    base = pc.replace_substring(pc.struct_field(parts, "base"), " ", "T")
    try:
        result = numbers(pc.cast(pc.cast(base, pa.timestamp("s")), pa.int64()))
    except pa.ArrowInvalid:
        # Well-formed but impossible dates (month 13): let Python judge each distinct value.
        result = map_distinct(base, _naive_utc_seconds, np.float64, np.nan)
    frac = pc.fill_null(pc.struct_field(parts, "frac"), "")
    has_frac = pc.greater(pc.utf8_length(frac), 0)
    if has_frac.true_count:
        digits = pc.if_else(has_frac, frac, "0")
        scale = np.power(10.0, numbers(pc.utf8_length(digits)))
        result = result + numbers(pc.cast(digits, pa.int64())) / scale
    tz = pc.replace_substring(pc.fill_null(pc.struct_field(parts, "tz"), ""), ":", "")
    has_offset = pc.greater(pc.utf8_length(tz), 1)
    if has_offset.true_count:
        tz = pc.if_else(has_offset, tz, "+0000")
        sign = np.where(numbers(pc.equal(pc.utf8_slice_codeunits(tz, 0, 1), "-")) > 0, -1, 1)
        hours = numbers(pc.cast(pc.utf8_slice_codeunits(tz, 1, 3), pa.int64()))
        minutes = numbers(pc.cast(pc.utf8_slice_codeunits(tz, 3, 5), pa.int64()))
        result = result - sign * (hours * 3600 + minutes * 60)
    return result


def _naive_utc_seconds(text: str) -> float:
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return math.nan


@dataclass
class AddressCodes:
    """Both address columns as codes into one chunk-local table of canonical text."""

    orig_idx: np.ndarray  # int32, -1 where the row's address is unset or invalid
    resp_idx: np.ndarray
    addresses: list[str]
    orig_state: np.ndarray  # uint8: 0 ok, 1 unset, 2 not an address
    resp_state: np.ndarray
    keys: np.ndarray | None = None  # int64 per ``addresses`` entry, stable within ``space``
    space: object | None = None


ADDRESS_OK, ADDRESS_UNSET, ADDRESS_INVALID = 0, 1, 2
_MEANS_UNSET, _MEANS_INVALID = -1, -2
"""What an interned text means when it is not an address (else: its canonical index)."""


class AddressBook:
    """The address texts a reader has seen, each examined once, and chunk tables from them.

    Texts are interned in C (:class:`_tsvscan.Interner`: the TSV scanner codes address
    fields against it directly, other readers through :meth:`intern_column`) and numbered
    in order of first sight. Python looks at each *new* text once, to find its canonical
    form, so a chunk's work per row is numpy gathers, and per address already seen
    nothing at all. Bounded: the book starts afresh, between chunks, once it holds
    ``limit`` texts or the unset markers change.
    """

    def __init__(self, limit: int = 1 << 17) -> None:
        self.limit = limit
        self.interner = Interner()
        self._reset(frozenset())

    def _reset(self, unset: frozenset[str]) -> None:
        self.interner.clear()
        self._space = object()  # canonical indices are keys; a reset starts a new key space
        self._unset = unset
        self._texts: list[str | None] = []  # per code; None: not UTF-8
        self._meaning = np.empty(0, dtype=np.int32)  # per code: canonical index or _MEANS_*
        self._canonical = np.empty(0, dtype=object)  # by index; the first _n_canonical used
        self._n_canonical = 0
        self._index: dict[str, int] = {}  # canonical text -> index

    def prepare(self, unset: frozenset[str]) -> Interner:
        """The interner to code one chunk's address texts against.

        Call before coding a chunk: a reset here never invalidates codes in use.
        ``unset`` holds the texts that mean "no value" (Zeek's ``-``, ``(empty)``).
        """
        if unset != self._unset or len(self.interner) > self.limit:
            self._reset(unset)
        return self.interner

    def intern_column(self, arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Codes of an Arrow text column, -1 where it is null (after :meth:`prepare`)."""
        arr = as_dictionary(arr)
        values = [v if v is not None else "" for v in arr.dictionary.to_pylist()]
        codes = np.frombuffer(self.interner.intern(values), dtype=np.int32)
        return gather(codes, arr, -1)

    def text(self, code: int) -> str | None:
        """The text behind a code (None if it was not UTF-8), for messages."""
        return self._texts[code] if code >= 0 else None

    def _learn(self) -> None:
        new, plain = self.interner.take_new()
        if not new:
            return
        index = self._index
        start = len(index)
        meanings = np.empty(len(new), dtype=np.int32)
        plain = np.frombuffer(plain, dtype=bool)
        others = np.flatnonzero(~plain)
        rest = range(len(new))
        if len(others) < len(new):
            fresh = new if not len(others) else [new[i] for i in np.flatnonzero(plain).tolist()]
            if index.keys().isdisjoint(fresh):
                # The usual batch: new IPv4 texts, already canonical and distinct. dict
                # and list work at C speed; the loop below costs a microsecond per text.
                index.update(zip(fresh, range(start, start + len(fresh)), strict=True))
                meanings[plain] = np.arange(start, start + len(fresh), dtype=np.int32)
                rest = others.tolist()
        unset = self._unset
        for i in rest:
            text = new[i]
            if text is None:  # not UTF-8
                meanings[i] = _MEANS_INVALID
                continue
            # A dotted quad without leading zeros (the interner's flag) is exactly what
            # ipaddress prints, so it needs no round trip through ipaddress.
            meaning = text if plain[i] else _classify(text, unset)
            if isinstance(meaning, str):
                meaning = index.setdefault(meaning, len(index))
            meanings[i] = meaning
        if len(index) > start:
            self._add_canonical(list(islice(reversed(index), len(index) - start))[::-1])
        self._texts += new
        self._meaning = np.concatenate([self._meaning, meanings])

    def _add_canonical(self, texts: list[str]) -> None:
        """Append to the canonical table (an object array, so chunks take rows at C speed)."""
        size = self._n_canonical + len(texts)
        if size > len(self._canonical):
            grown = np.empty(max(2 * len(self._canonical), size, 1024), dtype=object)
            grown[: self._n_canonical] = self._canonical[: self._n_canonical]
            self._canonical = grown
        self._canonical[self._n_canonical : size] = texts
        self._n_canonical = size

    def encode(self, orig: np.ndarray, resp: np.ndarray) -> AddressCodes:
        """Codes of both columns' rows (-1: no value) as a chunk-local address table."""
        self._learn()
        orig_idx, resp_idx, orig_state, resp_state, used = localize(
            self._meaning,
            np.ascontiguousarray(orig, dtype=np.int32),
            np.ascontiguousarray(resp, dtype=np.int32),
            self._n_canonical,
        )
        used = np.frombuffer(used, dtype=np.int64)
        return AddressCodes(
            orig_idx=np.frombuffer(orig_idx, dtype=np.int32),
            resp_idx=np.frombuffer(resp_idx, dtype=np.int32),
            addresses=self._canonical[used].tolist(),
            orig_state=np.frombuffer(orig_state, dtype=np.uint8),
            resp_state=np.frombuffer(resp_state, dtype=np.uint8),
            keys=used,
            space=self._space,
        )


def _classify(text: str, unset: frozenset[str]) -> str | int:
    """Canonical text of an address text, or _MEANS_UNSET / _MEANS_INVALID."""
    if text in unset or not text.strip():
        return _MEANS_UNSET
    try:
        return canonical_address(text)
    except ValueError:
        return _MEANS_INVALID


@dataclass
class RecordColumns:
    """One block's connection fields as columns, decoded but not yet validated.

    Numeric columns are float64 with NaN where the input had no value; addresses are codes
    of the reader's :class:`AddressBook` (-1: no value), so that each distinct address text
    is canonicalized once.
    """

    ts: np.ndarray
    duration: np.ndarray
    orig: np.ndarray  # int32 AddressBook codes
    resp: np.ndarray
    resp_p: np.ndarray
    proto: np.ndarray  # uint8 schema.PROTO_CODE
    state: np.ndarray  # uint8 schema.STATE_CODE
    service: np.ndarray  # uint8 schema.SERVICE_* flags
    orig_pkts: np.ndarray
    resp_pkts: np.ndarray
    orig_ip_bytes: np.ndarray
    resp_ip_bytes: np.ndarray
    uid: np.ndarray | pa.Array | pa.ChunkedArray | None = None
    """Object array of str, or an Arrow text column converted only when read (LazyUidChunk)."""
    label: np.ndarray | None = None
    detailed_label: np.ndarray | None = None


class _UidColumn:
    """An Arrow uid column waiting to become Python strings."""

    __slots__ = ("array",)

    def __init__(self, array: pa.Array | pa.ChunkedArray) -> None:
        self.array = array

    def strings(self) -> np.ndarray:
        return unescape_column(self.array)

    def __reduce__(self):
        return (_UidColumn, (self.array,))


class LazyUidChunk(ConnChunk):
    """A :class:`ConnChunk` whose ``uid`` column becomes Python strings when first read.

    The featurizer never reads uids, and building a ``str`` object per row costs nearly a
    tenth of what parsing the whole row in Arrow does, so the readers keep Arrow's column
    and convert it (Zeek escapes undone) on first access. Otherwise it is a ConnChunk:
    ``take`` and ``dataclasses.replace`` read the converted column, pickling keeps the
    Arrow one.
    """

    @property
    def uid(self) -> np.ndarray | None:
        value = self.__dict__.get("_uid")
        if isinstance(value, _UidColumn):
            value = self.__dict__["_uid"] = value.strings()
        return value

    @uid.setter
    def uid(self, value: np.ndarray | _UidColumn | None) -> None:
        self.__dict__["_uid"] = value


def _bounds(values: np.ndarray) -> tuple[float, float]:
    """Smallest and largest value (NaN if any is NaN); (0, 0) for no values."""
    if not len(values):
        return 0.0, 0.0
    return float(values.min()), float(values.max())


_COUNT_FIELDS = ("duration", "orig_pkts", "resp_pkts", "orig_ip_bytes", "resp_ip_bytes")


def build_chunk(
    cols: RecordColumns,
    lines: np.ndarray,
    *,
    source: str,
    fmt: str,
    line_text: Callable[[int], str | bytes],
    findings: list[Finding],
    drop: np.ndarray | None = None,
    names: dict[str, str] | None = None,
    addresses: AddressBook,
) -> ConnChunk | None:
    """Validate the columns, drop bad rows (adding findings) and assemble a ConnChunk.

    ``drop`` marks rows already found bad by the caller (their findings already added).
    ``names`` renames conn.log fields in messages to the input's own field names;
    ``addresses`` is the reader's :class:`AddressBook`, which coded ``cols.orig`` and
    ``cols.resp``.
    Returns None when no row is left.
    """
    names = names or {}

    def name_of(field: str) -> str:
        return names.get(field, field)

    n = len(cols.ts)
    bad = np.zeros(n, dtype=bool) if drop is None else drop.copy()

    def flag(mask: np.ndarray, kind: str, reason: Callable[[int], str]) -> None:
        mask = mask & ~bad
        hits = np.flatnonzero(mask)
        if hits.size:
            first = int(hits[0])
            findings.append(
                Finding(kind, int(lines[first]), reason(first), line_text(first), int(hits.size))
            )
            bad[mask] = True

    # Clean columns are the rule: a min and a max (NaN propagates through both) clear
    # most checks without building a mask per check.
    ts = cols.ts
    ts_lo, ts_hi = _bounds(ts)
    if math.isnan(ts_lo):
        flag(np.isnan(ts), "missing_value", lambda i: f"{name_of('ts')} is unset or not a time")
    if math.isinf(ts_lo) or math.isinf(ts_hi):
        flag(np.isinf(ts), "bad_value", lambda i: f"{name_of('ts')} is not a finite number")
    codes = addresses.encode(cols.orig, cols.resp)
    for name, state, column in (
        (name_of("id.orig_h"), codes.orig_state, cols.orig),
        (name_of("id.resp_h"), codes.resp_state, cols.resp),
    ):
        if not state.any():
            continue
        flag(state == ADDRESS_UNSET, "missing_value", lambda i, name=name: f"{name} is unset")
        flag(
            state == ADDRESS_INVALID,
            "bad_address",
            lambda i, name=name, column=column: (
                f"{name} is not an IP address: {addresses.text(int(column[i]))!r}"
            ),
        )
    port = cols.resp_p
    port_lo, port_hi = _bounds(port)
    if not (port_lo >= 0 and port_hi <= 65535 and np.array_equal(np.floor(port), port)):
        flag(
            (port < 0) | (port > 65535) | ((np.floor(port) != port) & ~np.isnan(port)),
            "bad_value",
            lambda i: f"{name_of('id.resp_p')} is not a port number: {port[i]!r}",
        )
    missing = {"resp_p": math.isnan(port_lo)}
    for field in _COUNT_FIELDS:
        values = getattr(cols, field)
        lo, hi = _bounds(values)
        missing[field] = math.isnan(lo)
        if not (lo >= 0 and hi < math.inf):
            flag(
                (values < 0) | np.isinf(values),
                "bad_value",
                lambda i, field=field, values=values: (
                    f"{name_of(field)} is negative or infinite: {values[i]!r}"
                ),
            )
    keep = None if not bad.any() else ~bad
    if keep is not None and not keep.any():
        return None

    def col(a: np.ndarray | None, dtype=None) -> np.ndarray | None:
        if a is None:
            return None
        if keep is not None:
            a = a[keep]
        return a if dtype is None else a.astype(dtype, copy=False)

    uid = cols.uid
    chunk_type = ConnChunk
    if isinstance(uid, pa.Array | pa.ChunkedArray):
        if keep is not None:
            uid = uid.filter(mask_array(keep))
        uid = _UidColumn(uid)
        chunk_type = LazyUidChunk
    else:
        uid = col(uid)

    def num(a: np.ndarray, field: str) -> np.ndarray:
        a = col(a)
        return np.nan_to_num(a, nan=0.0) if missing[field] else a

    return chunk_type(
        source=source,
        ts=col(ts),
        duration=num(cols.duration, "duration"),
        orig_idx=col(codes.orig_idx),
        resp_idx=col(codes.resp_idx),
        resp_p=num(port, "resp_p").astype(np.int32),
        proto=col(cols.proto, np.uint8),
        state=col(cols.state, np.uint8),
        service=col(cols.service, np.uint8),
        orig_pkts=num(cols.orig_pkts, "orig_pkts"),
        resp_pkts=num(cols.resp_pkts, "resp_pkts"),
        orig_ip_bytes=num(cols.orig_ip_bytes, "orig_ip_bytes"),
        resp_ip_bytes=num(cols.resp_ip_bytes, "resp_ip_bytes"),
        addresses=codes.addresses,
        address_keys=codes.keys,
        address_space=codes.space,
        label=col(cols.label, np.int8),
        detailed_label=col(cols.detailed_label),
        uid=uid,
        line=col(lines, np.int64),
        meta={"format": fmt},
    )
