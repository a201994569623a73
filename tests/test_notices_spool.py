"""notice.log output (Zeek's format, escaping, rotation) and its use as a durable spool."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from seqwatch.sidecar.messages import Verdict
from seqwatch.sidecar.notices import (
    FIELDS,
    NOTE,
    TYPES,
    NoticeWriter,
    escape,
    parse_tsv_line,
    read_notices,
    unescape,
)
from seqwatch.sidecar.spool import Spool


def verdict(i: int, host: str | None = None, start: float = 1_700_000_040.0) -> Verdict:
    return Verdict(
        host=host or f"10.0.{i // 200}.{i % 200 + 1}",
        start=start + 60.0 * (i // 7),
        width=60.0,
        error=3.5 + i / 1000,
        threshold=3.141593,
        model_id="4b322f8939f1ddd5",
        top_features=("out_ports", "out_failed", "in_bytes"),
        top_residuals=(8.123457, 6.0, -1.25 - i / 100),
    )


VERDICTS = [verdict(i) for i in range(20)]


# -- notice.log format ------------------------------------------------------------------------
def test_header_matches_a_real_zeek_notice_log(shared_data):
    real = (shared_data / "lab2" / "notice.log").read_text().splitlines()
    real_fields = next(line for line in real if line.startswith("#fields"))
    real_types = next(line for line in real if line.startswith("#types"))
    assert real_fields.split("\t")[1:] == list(FIELDS)
    assert real_types.split("\t")[1:] == list(TYPES)


def test_tsv_file_has_zeeks_header_and_parses_back(tmp_path):
    path = tmp_path / "notice.log"
    writer = NoticeWriter(path, "tsv")
    writer.write(VERDICTS[:3])
    writer.close()
    lines = path.read_text().splitlines()
    assert lines[0] == "#separator \\x09"
    assert lines[1:5] == [
        "#set_separator\t,",
        "#empty_field\t(empty)",
        "#unset_field\t-",
        "#path\tnotice",
    ]
    assert lines[5].startswith("#open\t") and lines[-1].startswith("#close\t")
    fields = lines[6].split("\t")[1:]
    data = [line for line in lines if not line.startswith("#")]
    assert len(data) == 3
    row = dict(zip(fields, data[0].split("\t"), strict=True))
    assert row["ts"] == "1700000100.000000"  # interval end, Zeek's time format
    assert row["note"] == NOTE
    assert row["src"] == VERDICTS[0].host
    assert row["actions"] == "Notice::ACTION_LOG"
    assert row["email_dest"] == "(empty)"
    assert row["suppress_for"] == "3600.000000"
    assert row["sub"] == VERDICTS[0].explanation()
    assert row["uid"] == row["dst"] == row["remote_location.latitude"] == "-"
    assert list(read_notices(path)) == VERDICTS[:3]


def test_json_lines_have_zeeks_fields_and_parse_back(tmp_path):
    path = tmp_path / "notice.json"
    writer = NoticeWriter(path, "json")
    writer.write(VERDICTS[:4])
    writer.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 4
    assert set(records[0]) <= set(FIELDS)
    assert list(records[0]) == [f for f in FIELDS if f in records[0]]  # Zeek's order
    assert records[0]["ts"] == 1_700_000_100.0
    assert records[0]["actions"] == ["Notice::ACTION_LOG"]
    assert records[0]["email_dest"] == []
    assert list(read_notices(path)) == VERDICTS[:4]


def test_ipv6_hosts_and_exact_numbers_survive(tmp_path):
    v = Verdict("2001:db8::1", 1_700_000_000.0, 10.0, 0.1 + 0.2, 1 / 3, "abcdef0123456789",
                ("out_conns",), (-1e-7,))  # fmt: skip
    path = tmp_path / "notice.log"
    NoticeWriter(path).write([v])
    (back,) = read_notices(path)
    assert back == v and back.error == 0.1 + 0.2


@given(st.text(max_size=40))
def test_escaping_round_trips_and_keeps_lines_intact(text):
    escaped = escape(text)
    assert "\t" not in escaped and "\n" not in escaped
    assert escaped != "-"  # never confused with an unset field
    assert unescape(escaped) == (text if text else "(empty)")


def test_escaping_follows_zeeks_writer():
    assert escape("-") == "\\x2d"
    assert escape("(empty)") == "\\x28empty)"
    assert escape("") == "(empty)"
    assert escape("a\tb\\c") == "a\\x09b\\x5cc"
    assert escape("a,b", in_set=True) == "a\\x2cb"
    record = parse_tsv_line("\t".join(["-"] * 18 + ["A\\x2cB,C", "(empty)"] + ["-"] * 6))
    assert record == {"actions": ["A,B", "C"], "email_dest": []}


def test_writer_follows_a_rename_rotation(tmp_path):
    path = tmp_path / "notice.log"
    writer = NoticeWriter(path)
    writer.write(VERDICTS[:2])
    rotated = tmp_path / "notice.2024-01-01-00-00-00.log"
    path.rename(rotated)
    writer.write(VERDICTS[2:5])
    writer.close()
    assert rotated.read_text().splitlines()[-1].startswith("#close")
    assert path.read_text().startswith("#separator")
    assert list(read_notices(rotated)) == VERDICTS[:2]
    assert list(read_notices(path)) == VERDICTS[2:5]
    assert writer.files_started == 2


def test_reopen_after_external_rotation(tmp_path):
    path = tmp_path / "notice.log"
    writer = NoticeWriter(path, fsync="never")
    writer.write(VERDICTS[:1])
    path.rename(tmp_path / "notice.log.1")
    writer.reopen()  # SIGHUP
    assert path.exists() and list(read_notices(path)) == []
    writer.write(VERDICTS[1:2])
    assert list(read_notices(path)) == VERDICTS[1:2]


def test_writer_refuses_unknown_settings(tmp_path):
    with pytest.raises(ValueError, match="format"):
        NoticeWriter(tmp_path / "n.log", "xml")
    with pytest.raises(ValueError, match="fsync"):
        NoticeWriter(tmp_path / "n.log", fsync="sometimes")


# -- spool ------------------------------------------------------------------------------------
@pytest.fixture(params=["tsv", "json"])
def fmt(request):
    return request.param


def test_appended_verdicts_are_pending_until_marked_sent(tmp_path, fmt):
    with Spool(tmp_path / "notice.log", fmt) as spool:
        assert spool.append(VERDICTS[:5]) == VERDICTS[:5]
        assert spool.pending() == VERDICTS[:5] and spool.pending_count == 5
        spool.mark_sent(VERDICTS[:3])
        assert spool.pending() == VERDICTS[3:5] and spool.pending_count == 2
        spool.mark_sent(VERDICTS[3:5])
        assert spool.pending() == [] and spool.pending_count == 0


def test_restart_resends_only_unsent_verdicts_in_order(tmp_path, fmt):
    path = tmp_path / "notice.log"
    spool = Spool(path, fmt)
    spool.append(VERDICTS[:6])
    spool.mark_sent(VERDICTS[:2])
    spool.append(VERDICTS[6:9])
    spool.close()
    again = Spool(path, fmt)
    assert again.pending() == VERDICTS[2:9]
    again.mark_sent(VERDICTS[2:9])
    again.close()
    third = Spool(path, fmt)
    assert third.pending() == [] and third.pending_count == 0


def test_a_crash_without_close_loses_nothing(tmp_path):
    path = tmp_path / "notice.log"
    spool = Spool(path)
    spool.append(VERDICTS[:4])
    spool.mark_sent(VERDICTS[:1])
    del spool  # no close(): no #close line, the process died
    assert Spool(path).pending() == VERDICTS[1:4]


def test_appending_a_spooled_key_again_writes_nothing(tmp_path):
    path = tmp_path / "notice.log"
    with Spool(path) as spool:
        spool.append(VERDICTS[:3])
        spool.mark_sent(VERDICTS[:3])
    with Spool(path) as spool:  # e.g. the tail re-read the same conn.log
        assert spool.append(VERDICTS[:5]) == VERDICTS[3:5]
        assert spool.append([VERDICTS[4], VERDICTS[4]]) == []
        assert spool.pending() == VERDICTS[3:5]
    assert list(read_notices(path)) == VERDICTS[:5]


def test_out_of_order_marks_are_remembered_across_restarts(tmp_path):
    path = tmp_path / "notice.log"
    spool = Spool(path)
    spool.append(VERDICTS[:4])
    spool.mark_sent([VERDICTS[2]])
    assert spool.pending() == [VERDICTS[0], VERDICTS[1], VERDICTS[3]]
    assert spool.pending_count == 3
    spool.close()
    again = Spool(path)
    assert again.pending() == [VERDICTS[0], VERDICTS[1], VERDICTS[3]]
    again.mark_sent(VERDICTS[:2])
    assert again.pending() == [VERDICTS[3]] and again.pending_count == 1


def test_pending_is_capped_and_drains_in_order_exactly_once(tmp_path):
    verdicts = [verdict(i) for i in range(250)]
    with Spool(tmp_path / "notice.log", max_pending=64) as spool:
        spool.append(verdicts)
        sent = []
        for batch in iter(spool.pending, []):
            assert len(batch) <= 64
            sent += batch
            spool.mark_sent(batch)
        assert sent == verdicts and spool.pending_count == 0


def test_unsent_verdicts_survive_a_rotation_while_running(tmp_path):
    path = tmp_path / "notice.log"
    with Spool(path) as spool:
        spool.append(VERDICTS[:4])
        spool.mark_sent(VERDICTS[:1])
        os.rename(path, tmp_path / "notice.log.1")
        spool.append(VERDICTS[4:6])  # goes to a new notice.log
        assert spool.pending() == VERDICTS[1:6]
        spool.mark_sent(VERDICTS[1:6])
        assert spool.pending() == []
    assert list(read_notices(path)) == VERDICTS[4:6]


def test_unsent_verdicts_in_a_rotated_file_are_found_after_a_restart(tmp_path):
    path = tmp_path / "notice.log"
    spool = Spool(path)
    spool.append(VERDICTS[:5])
    spool.mark_sent(VERDICTS[:2])
    spool.close()
    os.rename(path, tmp_path / "notice.log.1")  # logrotate while the sidecar was down
    again = Spool(path)
    assert again.pending() == VERDICTS[2:5]
    again.append(VERDICTS[5:7])
    assert again.pending() == VERDICTS[2:7]
    again.mark_sent(VERDICTS[2:7])
    again.close()
    assert Spool(path).pending() == []


def test_a_lost_rotated_file_does_not_block_the_current_one(tmp_path, caplog):
    path = tmp_path / "notice.log"
    spool = Spool(path)
    spool.append(VERDICTS[:3])
    spool.mark_sent(VERDICTS[:1])
    os.rename(path, tmp_path / "notice.log.1")
    spool.append(VERDICTS[3:4])
    spool.close()
    (tmp_path / "notice.log.1").unlink()  # compressed away
    again = Spool(path)
    assert again.pending() == VERDICTS[3:4]
    assert "cannot be re-sent" in caplog.text


def test_marker_lives_outside_logrotate_globs(tmp_path):
    with Spool(tmp_path / "notice.log") as spool:
        spool.append(VERDICTS[:1])
        spool.mark_sent(VERDICTS[:1])
        size = (tmp_path / "notice.log").stat().st_size
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".notice.log.sent", "notice.log"]
    state = json.loads((tmp_path / ".notice.log.sent").read_text())
    assert state["ahead"] == [] and state["offset"] == size


def test_zeek_byte_escapes_decode_as_utf8():
    assert unescape("caf\\xc3\\xa9") == "café"
    assert unescape("\\x5cx41") == "\\x41"
