"""Suricata EVE flow events as connections: field mapping and derived conn_state."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from seqwatch.sidecar.archives import read_connections, read_file
from seqwatch.sidecar.eve import ACK, FIN, RST, SYN, derive_states
from seqwatch.sidecar.problems import IGNORED, InputError, ProblemReport
from seqwatch.sidecar.schema import (
    CONN_STATES,
    PROTO_CODE,
    PROTOCOLS,
    SERVICE_DNS,
    SERVICE_LONG_TIMEOUT,
    STATE_CODE,
)
from seqwatch.sidecar.zeeklog import FORMAT_EVE, ConnLogParser

READERS = Path(__file__).parent / "data" / "readers"
EVE = READERS / "eve-flows.json"

# flow_id -> (conn_state, proto) for every case in eve-flows.json
EXPECTED_STATES = {
    "1101": ("S0", "tcp"),
    "1102": ("REJ", "tcp"),
    "1103": ("SF", "tcp"),
    "1104": ("RSTO", "tcp"),
    "1105": ("RSTR", "tcp"),
    "1106": ("S1", "tcp"),
    "1107": ("RSTOS0", "tcp"),
    "1108": ("SH", "tcp"),
    "1109": ("S2", "tcp"),
    "1110": ("S3", "tcp"),
    "1111": ("SF", "udp"),
    "1112": ("S0", "udp"),
    "1113": ("OTH", "icmp"),
    "1114": ("OTH", "icmp"),
    "1115": ("SF", "tcp"),
    "1116": ("SF", "tcp"),
    "1117": ("S1", "tcp"),
    "1118": ("SF", "tcp"),
    "1119": ("SF", "tcp"),
}


def by_uid(path: Path, report: ProblemReport | None = None) -> dict[str, dict]:
    rows = {}
    for chunk in read_file(path, report=report):
        assert chunk.meta["format"] == FORMAT_EVE
        for i, uid in enumerate(chunk.uid):
            rows[uid] = {
                "state": CONN_STATES[chunk.state[i]],
                "proto": PROTOCOLS[chunk.proto[i]],
                "ts": chunk.ts[i],
                "duration": chunk.duration[i],
                "orig": chunk.orig_h()[i],
                "resp": chunk.resp_h()[i],
                "resp_p": int(chunk.resp_p[i]),
                "service": int(chunk.service[i]),
                "orig_pkts": chunk.orig_pkts[i],
                "resp_pkts": chunk.resp_pkts[i],
                "orig_ip_bytes": chunk.orig_ip_bytes[i],
                "resp_ip_bytes": chunk.resp_ip_bytes[i],
                "line": int(chunk.line[i]),
            }
    return rows


def test_every_flow_case_maps_to_its_conn_state() -> None:
    report = ProblemReport()
    rows = by_uid(EVE, report)
    assert {uid: (r["state"], r["proto"]) for uid, r in rows.items()} == EXPECTED_STATES
    ignored = report.first("ignored_event")
    assert (ignored.count, ignored.severity) == (4, IGNORED)  # alert, http, dns, stats
    assert ignored.first_where == f"{EVE}:3" and "'alert'" in ignored.reason
    assert report.skipped_rows == 0


def test_fields_map_per_design() -> None:
    rows = by_uid(EVE)
    web = rows["1103"]
    # flow.start 10:00:03 UTC, flow.end 0.812 s later
    assert web["ts"] == 1715680803.0 and web["duration"] == pytest.approx(0.812)
    assert (web["orig"], web["resp"], web["resp_p"]) == ("192.168.56.11", "192.168.56.20", 80)
    assert (web["orig_pkts"], web["resp_pkts"]) == (6, 5)
    assert (web["orig_ip_bytes"], web["resp_ip_bytes"]) == (642, 3400)
    assert rows["1111"]["service"] == SERVICE_DNS
    assert rows["1115"]["service"] == SERVICE_LONG_TIMEOUT  # app_proto ssh
    assert rows["1112"]["service"] == 0  # app_proto "failed"
    # Suricata writes IPv6 expanded (and here in capitals): canonical compressed form
    assert (rows["1115"]["orig"], rows["1115"]["resp"]) == ("fd00::11", "fd00::5")
    assert rows["1114"]["resp"] == "ff02::2"
    # ICMP has no ports: resp_p is the ICMP code, like Zeek's id.resp_p
    assert rows["1113"]["resp_p"] == 0
    # a +0200 offset is the same instant as 10:00:23 UTC
    assert rows["1119"]["ts"] == 1715680823.0 and rows["1119"]["duration"] == 0.5
    assert rows["1106"]["duration"] == 120.0
    assert rows["1101"]["line"] == 1 and rows["1103"]["line"] == 4  # an alert sits between


def test_gzip_reads_the_same() -> None:
    assert by_uid(READERS / "eve-flows.json.gz") == by_uid(EVE)


def test_derive_states_fallbacks() -> None:
    tcp, udp, icmp, other = (PROTO_CODE[p] for p in ("tcp", "udp", "icmp", "other"))
    proto = np.array([tcp, tcp, tcp, tcp, udp, udp, icmp, other, tcp, tcp], dtype=np.uint8)
    replied = np.array([False, True, True, True, True, False, False, True, True, True])
    unknown = -1
    orig = np.array([unknown, unknown, unknown, SYN, 0, 0, 0, 0, ACK, SYN | ACK], dtype=np.int16)
    resp = np.array(
        [unknown, unknown, unknown, SYN | ACK | FIN, 0, 0, 0, 0, ACK | RST, ACK], dtype=np.int16
    )
    closed = np.array([False, True, False, False, False, False, False, False, False, False])
    states = [CONN_STATES[s] for s in derive_states(proto, replied, orig, resp, closed)]
    assert states == ["S0", "SF", "S1", "S3", "SF", "S0", "OTH", "OTH", "RSTR", "OTH"]


def flow_line(**changes) -> dict:
    event = json.loads(EVE.read_text().splitlines()[0])  # the S0 flow, flow_id 1101
    event.update(changes)
    return event


def test_bad_eve_lines_are_counted_and_clashing_other_events_ignored() -> None:
    lines = [
        json.dumps(flow_line()),
        '{"event_type":"flow","src_ip":',  # cut off
        json.dumps(flow_line(flow_id=7, src_ip="999.1.1.1")),
        json.dumps(flow_line(flow_id=8, dest_port="eighty")),
        # a non-flow event whose "tcp" is not an object: not ours, not an error
        json.dumps({"event_type": "anomaly", "tcp": "odd"}),
        json.dumps(flow_line(flow_id=9)),
    ]
    parser = ConnLogParser("eve.json")
    chunks = parser.feed(("\n".join(lines) + "\n").encode()) + parser.close()
    assert [int(x) for c in chunks for x in c.line] == [1, 6]
    report = parser.report
    assert report.first("bad_json").first_where == "eve.json:2"
    assert report.first("bad_address").first_where == "eve.json:3"
    assert "src_ip" in report.first("bad_address").reason
    assert report.first("bad_value").first_where == "eve.json:4"
    assert report.first("ignored_event").first_where == "eve.json:5"
    assert report.skipped_rows == 3
    with pytest.raises(InputError, match=r"eve\.json:2: not valid JSON"):
        strict = ConnLogParser("eve.json", strict=True)
        strict.feed(("\n".join(lines) + "\n").encode())
        strict.close()


def test_flow_without_start_is_a_missing_value() -> None:
    event = flow_line()
    del event["flow"]["start"]
    parser = ConnLogParser("eve.json")
    assert parser.feed((json.dumps(event) + "\n").encode()) + parser.close() == []
    problem = parser.report.first("missing_value")
    assert problem.first_where == "eve.json:1" and "flow.start" in problem.reason


def test_eve_through_read_connections_keeps_state_codes() -> None:
    chunks = list(read_connections([EVE]))
    states = np.concatenate([c.state for c in chunks])
    assert (states == STATE_CODE["OTH"]).sum() == 2
    assert len(states) == len(EXPECTED_STATES)
