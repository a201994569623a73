"""Finding, ordering, decompressing and streaming connection archives."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from seqwatch.sidecar.archives import (
    first_timestamp,
    is_connection_file,
    iter_files,
    read_bytes,
    read_connections,
    read_file,
)
from seqwatch.sidecar.labels import LabelSet
from seqwatch.sidecar.problems import InputError, ProblemReport
from seqwatch.sidecar.records import LABEL_BENIGN, LABEL_MALICIOUS

READERS = Path(__file__).parent / "data" / "readers"
LAB2_HEAD = READERS / "lab2-head.conn.log"


def shifted_log(seconds: float) -> bytes:
    """lab2-head with every ts moved by ``seconds`` (a stand-in for another hour's file)."""
    out = []
    for line in LAB2_HEAD.read_text().splitlines():
        if not line.startswith("#"):
            ts, rest = line.split("\t", 1)
            line = f"{float(ts) + seconds:.6f}\t{rest}"
        out.append(line)
    return ("\n".join(out) + "\n").encode()


def rows(chunks) -> int:
    return sum(len(c) for c in chunks)


def test_gzip_is_recognized_by_content_not_name(tmp_path: Path) -> None:
    data = LAB2_HEAD.read_bytes()
    disguised = tmp_path / "conn.log"
    disguised.write_bytes(gzip.compress(data))
    plain_named_gz = tmp_path / "conn.log.gz"
    plain_named_gz.write_bytes(data)
    assert b"".join(read_bytes(disguised)) == data
    assert rows(read_file(disguised)) == rows(read_file(plain_named_gz)) == 40


def test_multi_member_gzip_and_small_reads(tmp_path: Path) -> None:
    data = LAB2_HEAD.read_bytes()
    body = data.split(b"\n", 8)[8]  # the data lines and #close
    path = tmp_path / "conn.log.gz"
    path.write_bytes(gzip.compress(data) + gzip.compress(body))
    assert b"".join(read_bytes(path, block_size=64)) == data + body
    assert rows(read_file(path)) == 80


def test_truncated_gzip_is_an_input_error_naming_the_file(
    shared_data: Path, tmp_path: Path
) -> None:
    packed = gzip.compress((shared_data / "lab2" / "conn.log").read_bytes())
    path = tmp_path / "conn.00:00:00-01:00:00.log.gz"
    path.write_bytes(packed[: len(packed) // 2])
    report = ProblemReport()
    with pytest.raises(InputError, match="truncated gzip") as err:
        list(read_connections(path, report=report))
    assert err.value.where == str(path) and str(path) in str(err.value)
    assert err.value.__context__ is None  # no zlib/EOFError chained underneath


def test_corrupt_gzip_is_an_input_error(tmp_path: Path) -> None:
    packed = bytearray(gzip.compress(LAB2_HEAD.read_bytes()))
    packed[40:60] = b"\xff" * 20
    path = tmp_path / "conn.log.gz"
    path.write_bytes(bytes(packed))
    with pytest.raises(InputError, match=r"conn\.log\.gz: corrupt gzip data") as err:
        list(read_file(path))
    assert err.value.__suppress_context__  # the zlib.error is not shown to the operator


def test_missing_path_is_an_input_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "conn.log"
    with pytest.raises(InputError, match="no such file") as err:
        list(read_connections([LAB2_HEAD, missing]))
    assert err.value.where == str(missing)
    with pytest.raises(InputError, match="cannot open"):
        list(read_bytes(missing))


def test_unknown_format_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "conn.log"
    path.write_text("ts,orig,resp\n1,2,3\n")
    with pytest.raises(InputError, match=rf"{path}: unknown input format"):
        list(read_connections(path))


@pytest.mark.parametrize(
    "name, wanted",
    [
        ("conn.log", True),
        ("conn.log.gz", True),
        ("conn.09:00:00-10:00:00.log.gz", True),
        ("conn.2024-01-01-09-00-00.log", True),
        ("conn.log.labeled", True),
        ("conn.log.json.gz", True),
        ("labeled-conn.log", True),
        ("capture.log.labeled.gz", True),
        ("eve.json", True),
        ("eve.json.1.gz", True),
        ("eve-2024-01-01.json", True),
        ("conn-summary.09:00:00-10:00:00.log.gz", False),
        ("dns.09:00:00-10:00:00.log.gz", False),
        ("connections.txt", False),
        (".conn.log.swp", False),
        ("stats.json", False),
    ],
)
def test_connection_file_names(name: str, wanted: bool) -> None:
    assert is_connection_file(name) is wanted


def build_tree(root: Path) -> list[Path]:
    """A zeekctl-style archive: date folders, rotated hourly files, current/ last."""
    hour = 3600.0
    layout = [
        ("2026-12-03/conn.23:00:00-00:00:00.log.gz", -hour),
        ("2026-12-04/conn.00:00:00-01:00:00.log.gz", 0.0),
        ("2026-12-04/conn.01:00:00-02:00:00.log.gz", hour),
        ("2026-12-04/conn.10:00:00-11:00:00.log.gz", 10 * hour),
        ("2026-12-04/conn.02:00:00-03:00:00.log", 2 * hour),
        ("current/conn.log", 11 * hour),
    ]
    for name, shift in layout:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = shifted_log(shift)
        path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    (root / "2026-12-04" / "dns.00:00:00-01:00:00.log.gz").write_bytes(gzip.compress(b"x"))
    (root / "2026-12-04" / "conn-summary.00:00:00-01:00:00.log.gz").write_bytes(b"x")
    order = [0, 1, 2, 4, 3, 5]
    return [root / layout[i][0] for i in order]


def test_rotated_tree_is_read_in_time_order(tmp_path: Path) -> None:
    expected = build_tree(tmp_path)
    assert iter_files(tmp_path) == expected
    firsts = [c.ts.min() for c in read_connections(tmp_path)]
    assert len(firsts) == 6 and firsts == sorted(firsts)


def test_loose_files_are_ordered_by_their_first_record(tmp_path: Path) -> None:
    late, early, middle = tmp_path / "b.log", tmp_path / "c.log", tmp_path / "a.log"
    late.write_bytes(shifted_log(7200))
    early.write_bytes(gzip.compress(shifted_log(-7200)))
    middle.write_bytes(shifted_log(0))
    assert first_timestamp(early) == pytest.approx(1796417504.082331 - 7200)
    assert iter_files([late, early, middle]) == [early, middle, late]
    # a file given by name is read whatever its name
    firsts = [c.ts[0] for c in read_connections([late, early, middle])]
    assert firsts == sorted(firsts)


def test_chunks_are_bounded_and_line_numbers_continue(shared_data: Path) -> None:
    chunks = list(read_connections(shared_data / "lab2" / "conn.log", chunk_rows=4096))
    assert max(len(c) for c in chunks) == 4096 and rows(chunks) == 16171
    lines = np.concatenate([c.line for c in chunks])
    assert np.array_equal(lines, np.arange(9, 9 + 16171))


def test_read_connections_applies_labels(shared_data: Path) -> None:
    lab2 = shared_data / "lab2"
    chunks = list(read_connections(lab2 / "conn.log", labels=lab2 / "attack_uids.tsv"))
    label = np.concatenate([c.label for c in chunks])
    assert (label == LABEL_MALICIOUS).sum() == 14458
    assert (label == LABEL_BENIGN).sum() == 16171 - 14458
    labels = LabelSet.load(lab2 / "attack_uids.tsv")
    again = list(read_connections([lab2 / "conn.log"], labels=labels))
    assert np.array_equal(np.concatenate([c.label for c in again]), label)


def test_report_is_shared_across_files(tmp_path: Path) -> None:
    bad = tmp_path / "conn.log"
    bad.write_bytes((READERS / "malformed.conn.log").read_bytes())
    report = ProblemReport()
    total = rows(read_connections([bad, LAB2_HEAD, bad], report=report))
    assert total == 8 + 40 + 8
    assert report.count("bad_value") == 6
    assert report.first("bad_value").first_where == f"{bad}:13"


def test_directory_without_connection_files_yields_nothing(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    os.mkdir(tmp_path / "empty")
    assert iter_files(tmp_path) == []
    assert list(read_connections(tmp_path)) == []


def test_first_timestamp_of_eve_empty_and_unreadable_files(tmp_path: Path) -> None:
    assert first_timestamp(READERS / "eve-flows.json.gz") == 1715680801.25  # first flow.start
    empty = tmp_path / "conn.log"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.log"
    junk.write_bytes(b"not a log\n")
    assert first_timestamp(empty) is None and first_timestamp(junk) is None
    # files without a first record go last, in the order given
    assert iter_files([junk, empty, LAB2_HEAD]) == [LAB2_HEAD, junk, empty]
