"""The C field scanner (_tsvscan) against a plain-Python reading of the same bytes.

zeeklog.py's tests pin what the reader makes of real and malformed logs; these pin the
scanner itself, field by field, on generated input: splitting (every separator, lines
crossing the 16-byte steps and the end of the block, CRLF, empty lines, wrong counts),
number conversion (exactly Python's float() on the accepted grammar), UTF-8 checks, the
per-block distinct values and the interner that outlives blocks.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from seqwatch.sidecar import _tsvscan
from seqwatch.sidecar.addresses import canonical_address

NUMBER, DISTINCT, TEXT, INTERNED = (
    _tsvscan.NUMBER,
    _tsvscan.DISTINCT,
    _tsvscan.TEXT,
    _tsvscan.INTERNED,
)
# Python's reading of "an IPv4 address as ipaddress writes it", for the interner's flag.
_IPV4_PLAIN = re.compile(
    r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])",
    re.ASCII,
).fullmatch
_GRAMMAR = re.compile(rb"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def reference(block: bytes, sep: bytes, n_fields: int, columns, unset: bytes, empty: bytes):
    """What scan() must return, computed line by line in Python."""
    rows_at, wrong, empties = [], [], []
    wrong_first = -1
    fields_of_rows = []
    lines = block.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the block's final newline ends the last line; it starts none
    for i, line in enumerate(lines):
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            empties.append(i)
            continue
        fields = line.split(sep)
        if len(fields) != n_fields:
            wrong.append(i)
            wrong_first = len(fields) if wrong_first < 0 else wrong_first
            continue
        rows_at.append(i)
        fields_of_rows.append(fields)
    results = []
    for index, kind in columns:
        values = [f[index] for f in fields_of_rows]
        if kind == NUMBER:
            numbers, bad = [], []
            for r, v in enumerate(values):
                if v in (b"", unset, empty):
                    numbers.append(math.nan)
                elif _GRAMMAR.fullmatch(v):
                    numbers.append(float(v))
                else:
                    numbers.append(math.nan)
                    bad.append(r)
            results.append((numbers, bad))
        elif kind == TEXT:
            results.append(([v if _utf8(v) else b"" for v in values], _bad_utf8(values)))
        else:
            results.append((values, _bad_utf8(values)))
    return len(rows_at), rows_at, wrong, wrong_first, empties, results


def _bad_utf8(values: list[bytes]) -> list[int]:
    return [r for r, v in enumerate(values) if not _utf8(v)]


def ints(buf: bytearray) -> list[int]:
    return np.frombuffer(buf, dtype=np.int32).tolist()


def check(block: bytes, sep: bytes, n_fields: int, columns, interner=None) -> None:
    unset, empty = b"-", b"(empty)"
    interner = interner if interner is not None else _tsvscan.Interner()
    seen = len(interner)
    got = _tsvscan.scan(block, sep[0], n_fields, columns, unset, empty, 4, interner)
    want = reference(block, sep, n_fields, columns, unset, empty)
    rows, rows_at, wrong, wrong_first, empties, scanned = got
    assert (rows, ints(rows_at), ints(wrong), wrong_first, ints(empties)) == want[:5]
    new_texts, _ = interner.take_new()
    for (_, kind), (values, extra, bad), (want_values, want_bad) in zip(
        columns, scanned, want[5], strict=True
    ):
        assert ints(bad) == want_bad
        if kind == NUMBER:
            got_numbers = np.frombuffer(values, dtype=np.float64).tolist()
            assert len(got_numbers) == len(want_values)
            for a, b in zip(got_numbers, want_values, strict=True):
                assert (math.isnan(a) and math.isnan(b)) or a == b
        elif kind == TEXT:
            offsets = ints(values)
            assert len(offsets) == rows + 1 and offsets[0] == 0
            texts = [bytes(extra[offsets[i] : offsets[i + 1]]) for i in range(rows)]
            assert texts == want_values
        elif kind == DISTINCT:
            count, offsets, data = extra
            offsets = ints(offsets)
            distinct = [bytes(data[offsets[i] : offsets[i + 1]]) for i in range(count)]
            codes = ints(values)
            # Codes number the distinct values in order of first sight.
            first_seen = list(dict.fromkeys(want_values))
            assert distinct == [v if _utf8(v) else b"" for v in first_seen]
            assert [first_seen[c] for c in codes] == want_values
        else:
            # Codes index the interner's texts, new ones numbered from ``seen`` on.
            decoded = [v.decode() if _utf8(v) else None for v in want_values]
            assert [new_texts[c - seen] for c in ints(values)] == decoded


_FIELD = st.one_of(
    st.sampled_from(
        [b"-", b"(empty)", b"", b"0", b"1", b"-0", b".5", b"5.", b"1e3", b"1E-2", b"2.5e+3"]
    ),
    st.sampled_from([b"1796417504.082331", b"12345678901234567890.5", b"0.000000000000000000001"]),
    st.sampled_from([b"abc", b"1.2.3", b"--1", b"1e", b".", b"+1", b"nan", b"inf", b"1 "]),
    st.sampled_from([b"10.0.0.1", b"fd88::1", b"caf\xc3\xa9", b"bad\xff", b"\xed\xa0\x80"]),
    st.integers(min_value=0, max_value=2**64).map(lambda v: str(v).encode()),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda v: repr(v).encode()),
    st.binary(max_size=20),
)


@st.composite
def blocks(draw):
    sep = draw(st.sampled_from([b"\t", b",", b"|", b" "]))
    n_fields = draw(st.integers(min_value=1, max_value=7))
    kinds = draw(st.lists(st.sampled_from([NUMBER, DISTINCT, TEXT, INTERNED]), max_size=n_fields))
    columns = list(zip(draw(st.permutations(range(n_fields)))[: len(kinds)], kinds, strict=True))
    lines = []
    for _ in range(draw(st.integers(min_value=0, max_value=12))):
        count = draw(st.sampled_from([n_fields, n_fields, n_fields, n_fields - 1, n_fields + 1]))
        fields = [
            draw(_FIELD).replace(sep, b"").replace(b"\n", b"").replace(b"\r", b"")
            for _ in range(max(count, 0))
        ]
        line = sep.join(fields)
        lines.append(line + draw(st.sampled_from([b"", b"\r"])))
    block = b"\n".join(lines) + draw(st.sampled_from([b"\n", b""]))
    return block, sep, n_fields, columns


@settings(max_examples=400, deadline=None)
@given(blocks())
@example((b"1\t2\n\n3\t4\r\n5\n", b"\t", 2, [(0, NUMBER), (1, NUMBER)]))
def test_scan_agrees_with_a_python_reading(case) -> None:
    check(*case)


def test_long_lines_cross_every_16_byte_step_and_the_end_of_the_block() -> None:
    # Lines of every length near the vector width, the last one without a newline, so
    # that separators fall at every offset of a 16-byte load and at the block's end.
    for width in range(1, 40):
        fields = [b"x" * (i % 5) + str(i).encode() for i in range(width)]
        line = b"\t".join(fields)
        for tail in (b"", b"\n"):
            block = (line + b"\n") * 3 + line + tail
            cols = [(i, TEXT) for i in range(0, width, 3)] + [(width - 1, DISTINCT)]
            check(block, b"\t", width, list(dict(cols).items()))  # one kind per field


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False), st.integers(0, 9))
def test_numbers_are_exactly_what_python_float_gives(value: float, decimals: int) -> None:
    for text in (repr(value), f"{value:.{decimals}f}", f"{value:.{decimals}e}"):
        (_, _, _, _, _, [(values, _, bad)]) = _tsvscan.scan(
            text.encode() + b"\n", 9, 1, [(0, NUMBER)], b"-", b"(empty)"
        )
        assert ints(bad) == [] and np.frombuffer(values)[0] == float(text), text


def test_interner_numbers_texts_across_scans_and_flags_plain_ipv4() -> None:
    interner = _tsvscan.Interner()
    block = b"10.0.0.1\tfd88::1\n10.0.0.2\t10.0.0.1\n"
    first = _tsvscan.scan(block, 9, 2, [(0, INTERNED), (1, INTERNED)], b"-", b"", 2, interner)
    assert [ints(values) for values, _, _ in first[5]] == [[0, 2], [1, 0]]
    assert interner.take_new() == (["10.0.0.1", "fd88::1", "10.0.0.2"], bytearray([1, 0, 1]))
    second = _tsvscan.scan(b"10.0.0.3\t10.0.0.2\n", 9, 2, [(0, INTERNED), (1, INTERNED)],
                           b"-", b"", 1, interner)  # fmt: skip
    assert [ints(values) for values, _, _ in second[5]] == [[3], [2]]
    assert interner.take_new() == (["10.0.0.3"], bytearray([1])) and len(interner) == 4
    assert ints(interner.intern(["10.0.0.2", "1.1.1.1"])) == [2, 4]
    interner.clear()
    assert len(interner) == 0 and interner.take_new() == ([], bytearray())


@pytest.mark.parametrize(
    "text",
    ["0.0.0.0", "255.255.255.255", "10.0.0.1", "010.0.0.1", "1.2.3.256", "1.2.3", "1.2.3.4.",
     "1..2.3", " 1.2.3.4", "1.2.3.4 ", "1.2.3.0004", "", "fd88::1", "-"],
)  # fmt: skip
def test_plain_ipv4_flag_matches_the_python_fast_path(text: str) -> None:
    interner = _tsvscan.Interner()
    interner.intern([text])
    assert interner.take_new()[1] == bytearray([_IPV4_PLAIN(text) is not None])
    if _IPV4_PLAIN(text):  # the reader takes flagged texts as canonical as they are
        assert canonical_address(text) == text


def test_bad_arguments_are_errors_not_crashes() -> None:
    with pytest.raises(ValueError):
        _tsvscan.scan(b"a\n", 10, 1, [], b"-", b"")  # newline as the separator
    with pytest.raises(ValueError):
        _tsvscan.scan(b"a\n", 9, 1, [(1, NUMBER)], b"-", b"")  # no such field
    with pytest.raises(ValueError):
        _tsvscan.scan(b"a\n", 9, 1, [(0, INTERNED)], b"-", b"")  # no interner
    with pytest.raises(TypeError):
        _tsvscan.scan(b"a\n", 9, 1, [(0, INTERNED)], b"-", b"", 1, object())


def test_localize_numbers_the_addresses_a_chunk_uses() -> None:
    # Interned codes 0 and 4 are two spellings of canonical address 0.
    meaning = np.array([0, -1, 2, -2, 0, 1], dtype=np.int32)

    def run(orig, resp, n_canonical=3):
        out = _tsvscan.localize(
            meaning, np.array(orig, np.int32), np.array(resp, np.int32), n_canonical
        )
        return (
            ints(out[0]),
            ints(out[1]),
            list(out[2]),
            list(out[3]),
            np.frombuffer(out[4], np.int64).tolist(),
        )

    assert run([0, 1, 4, -1], [2, 3, 5, 2]) == (
        [0, -1, 0, -1],
        [2, -1, 1, 2],
        [0, 1, 0, 1],
        [0, 2, 0, 0],
        [0, 1, 2],
    )
    # Only the canonical addresses in use enter the table, densely numbered.
    assert run([0], [2]) == ([0], [1], [0], [0], [0, 2])
    assert run([], []) == ([], [], [], [], [])
    with pytest.raises(IndexError):
        run([6], [0])  # a code the meanings do not cover
    with pytest.raises(IndexError):
        run([2], [0], n_canonical=2)  # a canonical index past the table
    with pytest.raises(ValueError):
        _tsvscan.localize(meaning, b"\x00\x00\x00", b"", 3)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=80).map(lambda b: b.replace(b"x", b"\n")), st.data())
def test_newline_counting_and_finding_agree_with_bytes(data: bytes, draw) -> None:
    start = draw.draw(st.integers(0, len(data)))
    end = draw.draw(st.integers(start, len(data)))
    assert _tsvscan.count_newlines(data, start, end) == data.count(b"\n", start, end)
    offsets = [i for i in range(start, end) if data[i] == 10]
    for n in range(1, len(offsets) + 2):
        expected = offsets[n - 1] if n <= len(offsets) else -1
        assert _tsvscan.nth_newline(data, start, end, n) == expected


@pytest.fixture(scope="module")
def portable_build(tmp_path_factory):
    """The scanner compiled without SSE2 and as if loads were big-endian: the code paths
    other machines take (scalar splitting, byte-wise tails, no eight-digit steps)."""
    import importlib.util
    import shutil
    import subprocess
    import sysconfig
    from pathlib import Path

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the portable variant with")
    source = Path(__file__).resolve().parents[1] / "sidecar" / "_tsvscan.c"
    target = tmp_path_factory.mktemp("portable") / (
        "_tsvscan" + sysconfig.get_config_var("EXT_SUFFIX")
    )
    flags = ["-U__SSE2__", "-U__BYTE_ORDER__", "-D__BYTE_ORDER__=__ORDER_BIG_ENDIAN__", "-w"]
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O1", *flags, f"-I{sysconfig.get_paths()['include']}",
         str(source), "-o", str(target)],
        check=True,
    )  # fmt: skip
    spec = importlib.util.spec_from_file_location("_tsvscan", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@settings(max_examples=150, deadline=None)
@given(blocks())
def test_portable_build_reads_exactly_as_the_vectorized_one(portable_build, case) -> None:
    block, sep, n_fields, columns = case
    args = (block, sep[0], n_fields, columns, b"-", b"(empty)", 4)
    fast = _tsvscan.scan(*args, _tsvscan.Interner())
    portable = portable_build.scan(*args, portable_build.Interner())
    assert fast == portable
