"""Zeek conn.log parsing: TSV headers, JSON lines, labels, escapes, bad lines, line numbers."""

from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seqwatch.sidecar import arrowcols, linebuffer
from seqwatch.sidecar.archives import read_connections, read_file
from seqwatch.sidecar.linebuffer import LineBuffer
from seqwatch.sidecar.problems import ERROR, IGNORED, WARNING, InputError, ProblemReport
from seqwatch.sidecar.records import (
    LABEL_BACKGROUND,
    LABEL_BENIGN,
    LABEL_MALICIOUS,
    LABEL_NONE,
    ConnChunk,
)
from seqwatch.sidecar.schema import (
    CONN_STATES,
    PROTOCOLS,
    SERVICE_DNS,
    SERVICE_LONG_TIMEOUT,
    STATE_CODE,
)
from seqwatch.sidecar.zeeklog import (
    FORMAT_EVE,
    FORMAT_JSON,
    FORMAT_TSV,
    ConnLogParser,
    detect_format,
)

READERS = Path(__file__).parent / "data" / "readers"
LAB2_HEAD = READERS / "lab2-head.conn.log"
MALFORMED = READERS / "malformed.conn.log"
TSV_HEADER = (
    "#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tconn\n"
)


def parse(
    data: bytes, *, step: int | None = None, **kwargs
) -> tuple[list[ConnChunk], ConnLogParser]:
    """Feed ``data`` in ``step``-byte slices (all at once if None) and close."""
    parser = ConnLogParser("test.log", **kwargs)
    chunks = []
    step = step or max(len(data), 1)
    for i in range(0, len(data), step):
        chunks += parser.feed(data[i : i + step])
    chunks += parser.close()
    return chunks, parser


def column(chunks: list[ConnChunk], name: str) -> np.ndarray:
    return np.concatenate([getattr(c, name) for c in chunks])


def hosts(chunks: list[ConnChunk], side: str) -> list[str]:
    return [h for c in chunks for h in getattr(c, side)().tolist()]


def state_totals(chunks: list[ConnChunk]) -> collections.Counter:
    totals = collections.Counter()
    for c in chunks:
        totals.update(
            zip((PROTOCOLS[p] for p in c.proto), (CONN_STATES[s] for s in c.state), strict=True)
        )
    return totals


# --- real files ---------------------------------------------------------------------------


def test_lab2_conn_log_rows_states_and_lines(shared_data: Path) -> None:
    report = ProblemReport()
    chunks = list(read_file(shared_data / "lab2" / "conn.log", report=report))
    assert sum(len(c) for c in chunks) == 16171
    # conn.log totals from lab2/README.md
    assert state_totals(chunks) == {
        ("tcp", "S0"): 8000,
        ("tcp", "REJ"): 4126,
        ("tcp", "SF"): 2391,
        ("tcp", "RSTO"): 6,
        ("tcp", "RSTR"): 3,
        ("tcp", "S1"): 1,
        ("tcp", "S2"): 2,
        ("tcp", "S3"): 1,
        ("tcp", "OTH"): 1,
        ("udp", "SF"): 1403,
        ("udp", "S0"): 47,
        ("icmp", "OTH"): 190,
    }
    # 8 header lines, then one row per line, then #close
    assert column(chunks, "line").tolist() == list(range(9, 9 + 16171))
    assert not report
    assert all(c.label is None and c.meta["format"] == FORMAT_TSV for c in chunks)


def test_lab2_in_small_chunks_and_odd_feeds_is_identical(shared_data: Path) -> None:
    data = (shared_data / "lab2" / "conn.log").read_bytes()
    whole, _ = parse(data)
    pieces, parser = parse(data, step=7777, chunk_rows=1000)
    assert all(len(c) <= 1000 for c in pieces)
    assert len(pieces) >= 16
    for name in ("ts", "duration", "resp_p", "proto", "state", "service", "orig_ip_bytes", "line"):
        assert np.array_equal(column(whole, name), column(pieces, name)), name
    assert hosts(whole, "orig_h") == hosts(pieces, "orig_h")
    assert column(whole, "uid").tolist() == column(pieces, "uid").tolist()
    assert parser.rows == 16171
    assert parser.lines_read == 16180  # every line, #close included


def test_stratosphere_008_labels_match_provenance(shared_data: Path) -> None:
    path = shared_data / "stratosphere" / "008-zeek-mixed" / "conn.log.labeled.gz"
    counts = collections.Counter()
    for c in read_file(path):
        counts.update(zip(c.label.tolist(), c.detailed_label.tolist(), strict=True))
    # shared/data/stratosphere/PROVENANCE.txt
    assert counts == {
        (LABEL_MALICIOUS, "External-Attack-to-Device"): 4201,
        (LABEL_BENIGN, "Microsoft"): 652,
        (LABEL_BENIGN, "ESET"): 604,
        (LABEL_BENIGN, "Dropbox"): 135,
        (LABEL_BACKGROUND, ""): 60,
        (LABEL_BENIGN, "Cert-Validation"): 11,
    }


def test_stratosphere_001_relative_times_ipv6_and_labels(shared_data: Path) -> None:
    path = shared_data / "stratosphere" / "001-zeek-scenario-malicious" / "labeled-conn.log"
    chunks = list(read_file(path))
    labels = collections.Counter(
        (int(lab), det) for c in chunks for lab, det in zip(c.label, c.detailed_label, strict=True)
    )
    assert labels == {
        (LABEL_BACKGROUND, ""): 739,
        (LABEL_MALICIOUS, "CC"): 244,
        (LABEL_BENIGN, "Google"): 9,
    }
    ts = column(chunks, "ts")
    assert 0 < ts.min() < ts.max() < 3 * 3600  # relative timestamps, kept as they are
    assert "fd2d:ab8c:225:0:81d3:fd3e:7f62:aec8" in hosts(chunks, "orig_h")


def test_stratosphere_002_zeek_json(shared_data: Path) -> None:
    path = shared_data / "stratosphere" / "002-zeek-scenario-port-scanning" / "conn.log.json.gz"
    report = ProblemReport()
    chunks = list(read_file(path, report=report))
    assert sum(len(c) for c in chunks) == 4504
    assert {c.meta["format"] for c in chunks} == {FORMAT_JSON}
    states = collections.Counter(CONN_STATES[s] for c in chunks for s in c.state)
    assert states == {"S0": 2409, "REJ": 1273, "OTH": 652, "RSTO": 95, "SHR": 43, "RSTRH": 32}
    assert set(hosts(chunks, "orig_h")) == {"172.16.1.11"}
    assert column(chunks, "line").tolist() == list(range(1, 4505))
    assert not report
    first = chunks[0]
    assert first.uid[0] == "C5xhsO3uGtOfyrBlHh"
    assert first.ts[0] == pytest.approx(1664462456.755299)
    assert first.service[0] == SERVICE_DNS
    assert (first.resp_pkts[0], first.resp_ip_bytes[0], first.orig_pkts[0]) == (1, 139, 0)


# --- TSV details --------------------------------------------------------------------------


def test_lab2_head_values() -> None:
    chunks, parser = parse(LAB2_HEAD.read_bytes())
    (chunk,) = chunks
    assert len(chunk) == 40 and parser.format == FORMAT_TSV
    # first data line: 1796417504.082331 CNsnna3aWxgKkjQrEf 10.88.20.102 52138 10.88.10.5 80
    # tcp http 0.052347 511 1207466 SF T T 0 ShADadFf 370 19759 859 1252142 - 6
    assert chunk.ts[0] == pytest.approx(1796417504.082331)
    assert chunk.uid[0] == "CNsnna3aWxgKkjQrEf"
    assert (chunk.orig_h()[0], chunk.resp_h()[0], chunk.resp_p[0]) == (
        "10.88.20.102",
        "10.88.10.5",
        80,
    )
    assert PROTOCOLS[chunk.proto[0]] == "tcp" and chunk.state[0] == STATE_CODE["SF"]
    assert chunk.duration[0] == pytest.approx(0.052347)
    assert (chunk.orig_pkts[0], chunk.orig_ip_bytes[0]) == (370, 19759)
    assert (chunk.resp_pkts[0], chunk.resp_ip_bytes[0]) == (859, 1252142)
    assert chunk.service[0] == 0  # http
    assert chunk.service[1] == SERVICE_DNS  # second line is a dns lookup
    ssh = [i for i, p in enumerate(chunk.resp_p) if p == 22]
    assert ssh and all(chunk.service[i] == SERVICE_LONG_TIMEOUT for i in ssh)
    # an ICMPv6 row: resp_p is the ICMP code as Zeek writes it; service "-" means none
    icmp = int(np.flatnonzero(chunk.proto == 3)[0])
    assert chunk.orig_h()[icmp] == "fe80::4fb:ff:fe69:8423" and chunk.resp_p[icmp] == 136
    assert chunk.duration[icmp] == pytest.approx(0.000025) and chunk.service[icmp] == 0
    assert len(set(chunk.addresses)) == len(chunk.addresses)
    assert chunk.resp_p.dtype == np.int32 and chunk.orig_idx.dtype == np.int32
    assert chunk.ts.dtype == np.float64 and chunk.line.dtype == np.int64


def test_ipv6_written_differently_maps_to_one_canonical_address() -> None:
    text = LAB2_HEAD.read_text()
    expanded = text.replace("\tfd88::20:105\t", "\tFD88:0000:0000:0000:0000:0000:0020:0105\t")
    expanded = expanded.replace("\tfd88::5\t", "\tfd88:0:0:0:0:0:0:5\t")
    assert expanded != text
    (plain,), _ = parse(text.encode())
    (other,), _ = parse(expanded.encode())
    assert plain.orig_h().tolist() == other.orig_h().tolist()
    assert plain.resp_h().tolist() == other.resp_h().tolist()
    assert "fd88::20:105" in other.addresses and "fd88::5" in other.addresses
    assert len(set(other.addresses)) == len(other.addresses)


@pytest.fixture
def canonicalized(monkeypatch) -> collections.Counter:
    """How often each address text goes through canonical_address in the readers."""
    calls = collections.Counter()
    real = arrowcols.canonical_address

    def counting(text: str) -> str:
        calls[text] += 1
        return real(text)

    monkeypatch.setattr(arrowcols, "canonical_address", counting)
    return calls


def test_addresses_are_canonicalized_once_per_distinct_value(canonicalized) -> None:
    calls = canonicalized
    row = "1.5\tC1\tFD88:0:0:0:0:0:0:1\t1\t2001:DB8::0:1\t80\ttcp\t-\t1\t0\t0\tSF\t1\t40\t1\t40\n"
    header = (
        TSV_HEADER + "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\t"
        "service\tduration\torig_bytes\tresp_bytes\tconn_state\torig_pkts\torig_ip_bytes\t"
        "resp_pkts\tresp_ip_bytes\n"
    )
    (chunk,), _ = parse((header + row * 5000).encode())
    assert len(chunk) == 5000
    assert set(chunk.addresses) == {"fd88::1", "2001:db8::1"}
    assert calls == {"FD88:0:0:0:0:0:0:1": 1, "2001:DB8::0:1": 1}


def test_zeek_escapes_custom_separator_and_unset_values() -> None:
    # Zeek writes the separator itself, and non-printable bytes, as \xNN inside strings.
    data = (
        "#separator \\x7c\n#set_separator|,\n#empty_field|(empty)\n#unset_field|-\n"
        "#fields|ts|uid|id.orig_h|id.resp_h|id.resp_p|proto|service|duration|conn_state"
        "|label|detailedlabel\n"
        "10.0|C\\x41b|10.0.0.1|10.0.0.2|53|udp|\\x64ns|-|SF|Malicious|caf\\xc3\\xa9\\x7cC\\x26C\n"
        "11.0|Cx|10.0.0.1|10.0.0.3|80|tcp|(empty)|(empty)|S0|Benign|-\n"
        "12.0|Cy|10.0.0.1|10.0.0.3|80|tcp|ssh\\x2cftp|2.5|S1|-|-\n"
    )
    (chunk,), parser = parse(data.encode())
    assert chunk.uid.tolist() == ["CAb", "Cx", "Cy"]
    assert chunk.service.tolist() == [SERVICE_DNS, 0, SERVICE_LONG_TIMEOUT]
    assert chunk.detailed_label.tolist() == ["café|C&C", "", ""]
    assert chunk.label.tolist() == [LABEL_MALICIOUS, LABEL_BENIGN, LABEL_NONE]
    assert chunk.duration.tolist() == [0.0, 0.0, 2.5]
    assert chunk.resp_h().tolist() == ["10.0.0.2", "10.0.0.3", "10.0.0.3"]
    assert parser.report.skipped_rows == 0
    assert set(parser.report.problems) == {"missing_column"}  # no packet/byte counts here


def test_iot23_layout_with_three_space_separated_label_field() -> None:
    path = READERS / "008-iot23-layout.conn.log.labeled"
    report = ProblemReport()
    (chunk,) = list(read_file(path, report=report))
    assert len(chunk) == 12 and not report
    assert chunk.label.tolist().count(LABEL_BENIGN) == 3
    assert chunk.label.tolist().count(LABEL_MALICIOUS) == 9
    assert chunk.detailed_label[:3].tolist() == ["Microsoft", "External-Attack-to-Device", "ESET"]
    assert chunk.resp_p[1] == 3933 and chunk.state[1] == STATE_CODE["S0"]
    assert chunk.uid[0] == "CHLXQF2OBY4onAR0Ug"


def test_iot23_field_with_wrong_number_of_values_is_skipped() -> None:
    data = (
        TSV_HEADER + "#fields\tts\tid.orig_h\tid.resp_h\tid.resp_p\tproto\tconn_state\t"
        "tunnel_parents   label   detailed-label\n"
        "1.0\t10.0.0.1\t10.0.0.2\t23\ttcp\tS0\t(empty)   Malicious   PartOfAHorizontalPortScan\n"
        "2.0\t10.0.0.1\t10.0.0.2\t23\ttcp\tS0\t(empty)   Malicious\n"
        "3.0\t10.0.0.1\t10.0.0.2\t80\ttcp\tSF\t-   Benign   -\n"
    )
    (chunk,), parser = parse(data.encode())
    assert chunk.line.tolist() == [7, 9]
    assert chunk.label.tolist() == [LABEL_MALICIOUS, LABEL_BENIGN]
    assert chunk.detailed_label.tolist() == ["PartOfAHorizontalPortScan", ""]
    problem = parser.report.first("field_count")
    assert problem.count == 1 and problem.first_where == "test.log:8"


def test_field_order_extra_fields_and_missing_optional_columns() -> None:
    data = (
        TSV_HEADER
        + "#fields\tconn_state\tid.resp_p\textra\tid.resp_h\tts\tproto\tid.orig_h\n"
        + "#types\tstring\tport\tstring\taddr\ttime\tenum\taddr\n"
        + "REJ\t445\twhatever\t10.0.0.9\t100.25\ttcp\t10.0.0.1\n"
    )
    (chunk,), parser = parse(data.encode())
    assert chunk.ts.tolist() == [100.25] and chunk.resp_p.tolist() == [445]
    assert (chunk.orig_h()[0], chunk.resp_h()[0]) == ("10.0.0.1", "10.0.0.9")
    assert chunk.state[0] == STATE_CODE["REJ"]
    assert chunk.duration.tolist() == [0.0] and chunk.orig_ip_bytes.tolist() == [0.0]
    assert chunk.uid is None and chunk.label is None
    warning = parser.report.first("missing_column")
    assert warning.severity == WARNING and warning.count == 1
    assert "duration" in warning.reason and "service" in warning.reason
    assert parser.report.skipped_rows == 0


def test_malformed_lines_are_counted_with_exact_places() -> None:
    report = ProblemReport()
    chunks = list(read_file(MALFORMED, report=report))
    assert column(chunks, "line").tolist() == [9, 10, 12, 17, 20, 30, 31, 33]
    where = str(MALFORMED)
    expected = {
        "field_count": (2, 11, ERROR),
        "bad_value": (3, 13, ERROR),
        "bad_address": (1, 15, ERROR),
        "missing_value": (1, 16, ERROR),
        "empty_line": (1, 14, IGNORED),
        "missing_column": (1, 30, WARNING),
    }
    assert set(report.problems) == set(expected)
    for kind, (count, line, severity) in expected.items():
        problem = report.problems[kind]
        assert (problem.count, problem.first_where, problem.severity) == (
            count,
            f"{where}:{line}",
            severity,
        ), kind
    assert report.skipped_rows == 7
    assert "orig_pkts" in report.first("bad_value").reason
    assert "'abc'" in report.first("bad_value").reason
    assert "10.88.999.1" in report.first("bad_address").reason
    assert report.first("field_count").excerpt.startswith("1796417507.086593\\tCyojE52")
    summary = report.summary()
    assert "7 malformed line(s) skipped" in summary
    assert f"bad_address: 1 x, first at {where}:15" in summary
    # The second header block (other field order) is read with its own columns.
    assert chunks[-1].resp_p.tolist()[-1] == 22 and chunks[-1].duration[-1] == pytest.approx(
        15.270491
    )


@pytest.mark.parametrize("chunk_rows, step", [(2, 1), (3, 50), (1000, 4096)])
def test_malformed_line_numbers_do_not_depend_on_chunking(chunk_rows: int, step: int) -> None:
    chunks, parser = parse(MALFORMED.read_bytes(), step=step, chunk_rows=chunk_rows)
    assert column(chunks, "line").tolist() == [9, 10, 12, 17, 20, 30, 31, 33]
    firsts = {k: p.first_where for k, p in parser.report.problems.items()}
    assert firsts == {
        "field_count": "test.log:11",
        "bad_value": "test.log:13",
        "empty_line": "test.log:14",
        "bad_address": "test.log:15",
        "missing_value": "test.log:16",
        "missing_column": "test.log:30",
    }
    assert parser.report.count("bad_value") == 3 and parser.report.count("field_count") == 2


def test_strict_mode_raises_at_the_first_problem() -> None:
    with pytest.raises(InputError) as err:
        list(read_file(MALFORMED, strict=True))
    assert err.value.where == f"{MALFORMED}:11"
    assert err.value.kind == "field_count"
    assert "21 fields where #fields has 22" in str(err.value)
    # A type error earlier in the block than a field-count error is the one reported.
    lines = LAB2_HEAD.read_text().splitlines()
    bad_number = lines[9].replace("\t1\t76\t", "\tx\t76\t")
    short = "\t".join(lines[11].split("\t")[:-2])
    data = "\n".join([*lines[:9], bad_number, lines[10], short]) + "\n"
    with pytest.raises(InputError, match=r"test\.log:10: orig_pkts is not a number: 'x'"):
        parse(data.encode(), strict=True)


def test_missing_required_field_is_an_input_error() -> None:
    data = TSV_HEADER + "#fields\tts\tid.resp_h\tid.resp_p\tproto\n1.0\t10.0.0.2\t80\ttcp\n"
    with pytest.raises(InputError, match=r"test\.log:7: .*id\.orig_h, conn_state"):
        parse(data.encode())


def test_data_before_fields_and_unknown_formats_are_input_errors() -> None:
    with pytest.raises(InputError, match="before any #fields"):
        parse(b"#separator \\x09\n1.0\t10.0.0.1\n")
    with pytest.raises(InputError, match=r"test\.log: unknown input format.*'hello world'"):
        parse(b"hello world\nmore\n")
    with pytest.raises(InputError, match="unknown input format"):
        parse(b'{"some": "json"}\n')


def test_empty_input_gives_no_chunks() -> None:
    assert parse(b"")[0] == []
    assert parse(b"\n\n  \n")[0] == []
    chunks, parser = parse(TSV_HEADER.encode() + b"#fields\tts\tid.orig_h\n")
    assert chunks == [] and parser.format == FORMAT_TSV


def test_last_line_without_newline_and_gzip_are_read(tmp_path: Path) -> None:
    data = LAB2_HEAD.read_bytes().rsplit(b"\n#close", 1)[0]  # ends without newline
    assert not data.endswith(b"\n")
    chunks, _ = parse(data, step=100)
    assert sum(len(c) for c in chunks) == 40
    path = tmp_path / "conn.log.gz"
    path.write_bytes(gzip.compress(data))
    assert sum(len(c) for c in read_connections(path)) == 40


@pytest.mark.parametrize(
    "head, fmt",
    [
        (b"#separator \\x09\n#set_separator\t,\n", FORMAT_TSV),
        (b'{"ts":1.0,"uid":"C1","id.orig_h":"10.0.0.1"}\n', FORMAT_JSON),
        (b'{"ts":1.0,"id":{"orig_h":"10.0.0.1"}}\n', FORMAT_JSON),
        (b'{"timestamp":"2024-01-01T00:00:00+0000","event_type":"flow"}\n', FORMAT_EVE),
        (b"\xef\xbb\xbf\n#separator \\x09\n", FORMAT_TSV),
        (b"ts,uid,orig\n", None),
        (b"{not json\n", None),
    ],
)
def test_detect_format(head: bytes, fmt: str | None) -> None:
    assert detect_format(head) == fmt


# --- Zeek JSON ----------------------------------------------------------------------------


def json_lines(*records) -> bytes:
    return b"".join(
        (r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records
    )


def test_zeek_json_nested_id_labels_and_missing_keys() -> None:
    data = json_lines(
        {
            "ts": 5.5,
            "uid": "C1",
            "id": {"orig_h": "10.0.0.1", "orig_p": 1000, "resp_h": "2001:DB8::1", "resp_p": 53},
            "proto": "udp",
            "service": "dns",
            "conn_state": "SF",
            "orig_pkts": 1,
            "resp_pkts": 1,
            "orig_ip_bytes": 60,
            "resp_ip_bytes": 90,
            "label": "Malicious",
            "detailed-label": "C&C",
        },
        {
            "ts": 6.5,
            "uid": "C2",
            "id.orig_h": "10.0.0.1",
            "id.resp_h": "10.0.0.2",
            "id.resp_p": 22,
            "proto": "tcp",
            "conn_state": "S0",
        },
    )
    (chunk,), parser = parse(data)
    assert parser.format == FORMAT_JSON and not parser.report
    assert chunk.resp_h().tolist() == ["2001:db8::1", "10.0.0.2"]
    assert chunk.resp_p.tolist() == [53, 22]
    assert chunk.service.tolist() == [SERVICE_DNS, 0]
    assert chunk.state.tolist() == [STATE_CODE["SF"], STATE_CODE["S0"]]
    assert chunk.duration.tolist() == [0.0, 0.0]  # Zeek leaves unset fields out of JSON
    assert chunk.resp_ip_bytes.tolist() == [90.0, 0.0]
    assert chunk.label.tolist() == [LABEL_MALICIOUS, LABEL_NONE]
    assert chunk.detailed_label.tolist() == ["C&C", ""]
    assert chunk.uid.tolist() == ["C1", "C2"]


def test_zeek_json_iso8601_timestamps() -> None:
    base = {"id.orig_h": "10.0.0.1", "id.resp_h": "10.0.0.2", "proto": "tcp", "conn_state": "SF"}
    data = json_lines(
        {**base, "ts": "2024-05-14T10:00:01.250000Z"},
        {**base, "ts": "2024-05-14T12:00:01.5+02:00"},
        {**base, "ts": "yesterday"},
    )
    (chunk,), parser = parse(data)
    assert chunk.ts.tolist() == [1715680801.25, 1715680801.5]
    assert parser.report.first("missing_value").first_where == "test.log:3"


def test_zeek_json_bad_lines_are_skipped_with_exact_lines() -> None:
    good = {"ts": 1.0, "id.orig_h": "10.0.0.1", "id.resp_h": "10.0.0.2", "proto": "tcp"}
    data = json_lines(
        good,  # 1
        b'{"ts": 2.0, "id.orig_h": "10.0.0.1"',  # 2 cut off
        b"",  # 3 blank
        {**good, "ts": 4.0, "orig_pkts": "many"},  # 4 wrong type
        json.dumps(good).encode() * 2,  # 5 two objects on one line
        b"[1, 2]",  # 6 not an object
        {**good, "ts": 7.0, "id.resp_h": "not-an-ip"},  # 7
        {**good, "ts": 8.0},  # 8
    )
    for chunk_rows in (100, 3):
        chunks, parser = parse(data, chunk_rows=chunk_rows, step=13)
        assert column(chunks, "line").tolist() == [1, 8]
        assert column(chunks, "ts").tolist() == [1.0, 8.0]
        report = parser.report
        assert report.count("bad_json") == 3
        assert report.first("bad_json").first_where == "test.log:2"
        assert report.count("bad_value") == 1
        assert report.first("bad_value").first_where == "test.log:4"
        assert report.first("bad_address").first_where == "test.log:7"
        assert report.skipped_rows == 5
    with pytest.raises(InputError, match=r"test\.log:2: not valid JSON"):
        parse(data, strict=True)


def test_json_problem_excerpt_is_the_raw_line() -> None:
    raw = b'{"ts": 7.0, "id.orig_h": "10.0.0.1", "id.resp_h": "not-an-ip", "proto": "tcp"}'
    good = b'{"ts": 8.0, "id.orig_h": "10.0.0.1", "id.resp_h": "10.0.0.2", "proto": "tcp"}'
    _, parser = parse(good + b"\n" + raw + b"\n")
    problem = parser.report.first("bad_address")
    assert problem.first_where == "test.log:2" and problem.excerpt == raw.decode()


# --- line buffering and hostile input -----------------------------------------------------


def test_line_buffer_cuts_whole_lines_and_numbers_them() -> None:
    buffer = LineBuffer(max_lines=3)
    assert buffer.feed(b"a\nb") == []
    assert buffer.feed(b"\nc\nd\ne") == [(1, b"a\nb\nc\n", 3)]
    assert buffer.pending_bytes == len(b"d\ne")
    assert buffer.feed(b"\n" * 4) == [(4, b"d\ne\n\n", 3)]
    assert buffer.flush() == [(7, b"\n\n", 2)]
    assert buffer.feed(b"tail") == [] and buffer.flush() == [(9, b"tail\n", 1)]


def test_line_buffer_never_reuses_a_block_the_caller_still_holds() -> None:
    buffer = LineBuffer(max_lines=2)
    (first,) = buffer.feed(b"a1\na2\n")  # one object fed: handed out as it is
    kept = [block for _, block, _ in buffer.feed(b"b1\nb") + buffer.feed(b"2\nc1\nc")]
    assert kept == [b"b1\nb2\n"]
    later = []  # each block dropped before the next is cut: the buffer may reuse its memory
    for piece in (b"2\nd1\n", b"dd2\ne1\n", b"e2\n"):
        later += [bytes(block) for _, block, _ in buffer.feed(piece)]
    assert later == [b"c1\nc2\n", b"d1\ndd2\n", b"e1\ne2\n"]
    assert first[1] == b"a1\na2\n" and kept == [b"b1\nb2\n"]


def test_reading_and_featurizing_a_tsv_log_does_not_import_pandas() -> None:
    """pyarrow's to_numpy() imports pandas; the runtime reads Arrow buffers instead."""
    code = (
        "import sys\n"
        "from seqwatch.sidecar.archives import read_connections\n"
        "from seqwatch.sidecar.features import featurize\n"
        f"assert list(featurize(read_connections([{str(LAB2_HEAD)!r}])))\n"
        "sys.exit(3 if 'pandas' in sys.modules else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr or "pandas was imported"


def test_uids_become_strings_when_read_and_survive_copies() -> None:
    (chunk,), _ = parse(LAB2_HEAD.read_bytes())
    assert isinstance(chunk, ConnChunk)
    rows = [line for line in LAB2_HEAD.read_bytes().splitlines() if not line.startswith(b"#")]
    expected = [row.split(b"\t")[1].decode() for row in rows]
    for copy in (
        pickle.loads(pickle.dumps(chunk)),
        dataclasses.replace(chunk, label=np.zeros(len(chunk), np.int8)),
        chunk.take(np.arange(len(chunk))),
        chunk,
    ):
        assert copy.uid.dtype == object and copy.uid.tolist() == expected


def test_binary_input_is_an_unknown_format_without_reading_it_all() -> None:
    parser = ConnLogParser("blob.bin")
    noise = bytes(range(11, 256)) * 300  # no newline anywhere
    with pytest.raises(InputError, match=r"blob\.bin: unknown input format"):
        for _ in range(100):
            parser.feed(noise)


def test_overlong_line_is_an_input_error(monkeypatch) -> None:
    monkeypatch.setattr(linebuffer, "MAX_LINE_BYTES", 1000)
    parser = ConnLogParser("big.log")
    parser.feed(LAB2_HEAD.read_bytes().rsplit(b"#close", 1)[0])
    with pytest.raises(InputError, match=r"big\.log: line 49 is longer than 1000 bytes"):
        for _ in range(10):
            parser.feed(b"9" * 400)


def test_flush_returns_rows_now_and_keeps_state_for_a_live_tail() -> None:
    data = MALFORMED.read_bytes()
    cut_a = data.index(b"1796417504.064298")  # middle of the first block's data
    cut_b = data.index(b"CLRI8Y3E9cNfPPZISf") + 5  # inside line 31, after the new header
    parser = ConnLogParser("tail.log")  # default chunk_rows: feed alone would hold rows back
    seen = []
    for piece in (data[:cut_a], data[cut_a:cut_b], data[cut_b:]):
        assert parser.feed(piece) == []
        seen.append([int(x) for c in parser.flush() for x in c.line])
    seen.append([int(x) for c in parser.close() for x in c.line])
    assert seen == [[9, 10], [12, 17, 20, 30], [31, 33], []]
    assert parser.report.first("bad_value").first_where == "tail.log:13"
    assert parser.report.count("field_count") == 2


def test_invalid_utf8_in_a_read_field_skips_the_row_and_elsewhere_is_harmless() -> None:
    lines = LAB2_HEAD.read_bytes().split(b"\n")
    lines[8] = lines[8].replace(b"\thttp\t", b"\tht\xfftp\t")  # service, a field we read
    lines[9] = lines[9].replace(b"\tDd\t", b"\tD\xfe\t")  # history, a field we do not read
    lines[10] = lines[10].replace(b"\t35126\t", b"\t35126x\t").replace(b"CyojE", b"Cyo\xffE")
    (chunk,), parser = parse(b"\n".join(lines))
    assert chunk.line.tolist() == [10, *range(12, 49)]
    problem = parser.report.first("bad_value")
    assert (problem.count, problem.first_where) == (2, "test.log:9")
    assert problem.reason == "service is not valid UTF-8"
    assert "ht\\xfftp" in problem.excerpt
    assert chunk.uid[0] == "CHUK7i4O2EYGkLGQi2" and chunk.service[0] == SERVICE_DNS


@pytest.mark.parametrize(
    "text, plain",
    [
        ("plain", "plain"),
        ("a\\x09b", "a\tb"),
        ("caf\\xc3\\xa9", "café"),
        ("€\\x41", "€A"),  # raw UTF-8 (LogAscii::enable_utf_8) beside an escape
        ("bad\\xff", "bad\\xff"),  # a byte that is not UTF-8 stays visible
        ("\\x5cx41", "\\x41"),  # an escaped backslash is not a second escape
    ],
)
def test_unescape_zeek(text: str, plain: str) -> None:
    assert arrowcols.unescape_zeek(text) == plain


def test_bad_lines_deep_in_a_large_block_keep_exact_line_numbers(shared_data: Path) -> None:
    # Arrow parses a block in 1 MiB pieces; row numbers must stay right across them.
    lines = (shared_data / "lab2" / "conn.log").read_bytes().split(b"\n")
    short, letters, empty = 9000, 12000, 15000  # 1-based line numbers, past 1 MiB
    lines[short - 1] = lines[short - 1].rsplit(b"\t", 1)[0]
    fields = lines[letters - 1].split(b"\t")
    fields[16] = b"many"  # orig_pkts
    lines[letters - 1] = b"\t".join(fields)
    lines[empty - 1] = b""
    chunks, parser = parse(b"\n".join(lines))
    got = column(chunks, "line")
    assert len(got) == 16171 - 3
    assert {short, letters, empty}.isdisjoint(got.tolist())
    assert got[0] == 9 and got[-1] == 16179
    firsts = {k: (p.count, p.first_where) for k, p in parser.report.problems.items()}
    assert firsts == {
        "field_count": (1, f"test.log:{short}"),
        "bad_value": (1, f"test.log:{letters}"),
        "empty_line": (1, f"test.log:{empty}"),
    }
    uid = column(chunks, "uid")
    assert uid[got.tolist().index(short + 1)] == lines[short].split(b"\t")[1].decode()


def test_address_fast_path_agrees_with_canonical_address() -> None:
    import pyarrow as pa

    from seqwatch.sidecar.addresses import canonical_address

    texts = [
        "10.0.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "010.1.1.1",  # leading zero: ipaddress refuses it
        "1.2.3.256",
        "1.2.3",
        " 10.0.0.1",
        "::ffff:10.0.0.1",
        "FE80::1",
        "-",
        "garbage",
    ]
    book = arrowcols.AddressBook()
    book.prepare(frozenset({"-"}))
    orig = book.intern_column(pa.array(texts))
    codes = book.encode(orig, book.intern_column(pa.array(["10.0.0.1"] * len(texts))))
    for i, text in enumerate(texts):
        try:
            expected = canonical_address(text)
        except ValueError:
            expected = None
        got = codes.addresses[codes.orig_idx[i]] if codes.orig_idx[i] >= 0 else None
        assert got == expected, text
    assert codes.orig_state.tolist() == [0, 0, 0, 2, 2, 2, 0, 0, 0, 1, 2]


def test_address_book_codes_chunks_against_texts_seen_once_and_stays_bounded(
    canonicalized,
) -> None:
    import pyarrow as pa

    calls = canonicalized
    book = arrowcols.AddressBook(limit=5)
    unset = frozenset({"-"})

    def chunk(orig: list[str | None], resp: list[str | None]) -> arrowcols.AddressCodes:
        book.prepare(unset)
        return book.encode(
            book.intern_column(pa.array(orig, pa.string())),
            book.intern_column(pa.array(resp, pa.string())),
        )

    first = chunk(["FD88::1", "10.0.0.1", "-"], ["10.0.0.2", "fd88:0::1", None])
    assert sorted(first.addresses) == ["10.0.0.1", "10.0.0.2", "fd88::1"]
    assert [first.addresses[i] for i in first.orig_idx[:2]] == ["fd88::1", "10.0.0.1"]
    assert first.orig_state.tolist() == [0, 0, 1] and first.resp_state.tolist() == [0, 0, 1]
    # A later chunk's table holds only its own addresses; known texts are not examined again.
    second = chunk(["10.0.0.2", "FD88::1"], ["10.0.0.2", "bogus"])
    assert sorted(second.addresses) == ["10.0.0.2", "fd88::1"]
    assert [second.addresses[i] for i in second.orig_idx] == ["10.0.0.2", "fd88::1"]
    assert second.resp_state.tolist() == [0, 2] and book.text(int(second.resp_idx[1])) is None
    assert calls == {"FD88::1": 1, "fd88:0::1": 1, "bogus": 1}
    # Past its limit the book starts afresh before the next chunk, with the same results.
    assert len(book.interner) > book.limit
    third = chunk(["FD88::1"], ["10.0.0.9"])
    assert len(book.interner) == 2 and sorted(third.addresses) == ["10.0.0.9", "fd88::1"]
    assert calls["FD88::1"] == 2
    # Other unset markers mean other meanings: "-" is no longer "no value" but a bad text.
    book.prepare(frozenset({"?"}))
    fourth = book.encode(book.intern_column(pa.array(["-"])), book.intern_column(pa.array(["?"])))
    assert fourth.orig_state.tolist() == [2] and fourth.resp_state.tolist() == [1]
