"""The Zeek script's streaming aggregation (mirrored in zeek_reference.py) vs the featurizer.

Without Zeek, tests/zeek_reference.py stands in for zeek_scripts/main.zeek. These tests
hold the mirror to seqwatch.sidecar.features: identical vectors whenever no connection
is late, and, when Zeek removes a connection after its interval went out, the connection
moves to the oldest open interval and is counted there -- exactly the batch result of
the same connection with its time shifted into that interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from zeek_reference import Conn, Settings, ZeekScript, assemble, read_tsv, replay

from seqwatch.sidecar.features import bin_of, estimate_removal, featurize
from seqwatch.sidecar.records import chunk_from_rows
from seqwatch.sidecar.schema import FEATURE_INDEX, FEATURE_NAMES, FeatureConfig, RemovalDelays

T0 = 1_733_299_200.0  # 2024-12-04T08:00:00Z, a multiple of 60 and of 10


def row(
    uid: str,
    ts: float,
    orig: str,
    resp: str,
    resp_p: int,
    proto: str = "tcp",
    state: str = "SF",
    duration: float = 1.0,
    service: str = "-",
    orig_pkts: int = 3,
    resp_pkts: int = 2,
    orig_ip_bytes: int = 300,
    resp_ip_bytes: int = 200,
) -> dict:
    """A conn.log record (field names as Zeek writes them)."""
    return {
        "uid": uid,
        "ts": ts,
        "duration": duration if duration else "-",
        "id.orig_h": orig,
        "id.resp_h": resp,
        "id.resp_p": resp_p,
        "proto": proto,
        "service": service,
        "conn_state": state,
        "orig_pkts": orig_pkts,
        "resp_pkts": resp_pkts,
        "orig_ip_bytes": orig_ip_bytes,
        "resp_ip_bytes": resp_ip_bytes,
    }


def config(settings: Settings) -> FeatureConfig:
    return FeatureConfig(
        interval=settings.interval_width,
        distinct_cap=settings.distinct_cap,
        delays=settings.delays,
    )


def batch(rows: list[dict], settings: Settings) -> dict[tuple[int, str], np.ndarray]:
    """The featurizer over all rows at once: {(bin, host): vector}."""
    out = {}
    for interval in featurize([chunk_from_rows(rows)], config(settings)):
        assert interval.late == 0
        for host, vector in zip(interval.hosts, interval.values, strict=True):
            out[(interval.bin, host)] = vector
    return out


def streamed(script: ZeekScript) -> dict[tuple[int, str], np.ndarray]:
    """The mirror's published messages: {(bin, host): vector}."""
    return {
        (b, host): vector
        for (_, b), interval in assemble(script.published).items()
        for host, vector in interval.vectors.items()
    }


def assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        # Counts must agree exactly; out_duration is a float sum in another order.
        np.testing.assert_allclose(got[key], want[key], rtol=1e-12, atol=1e-9, err_msg=str(key))


def live(rows: Iterable[dict], settings: Settings, delay: float = 0.0) -> list[tuple[float, Conn]]:
    """(removal time, conn) with Zeek removing each connection ``delay`` s after its estimate."""
    script = ZeekScript(settings)
    removals = []
    for r in rows:
        conn = Conn.from_row(r)
        removals.append((script.removal_estimate(conn) + delay, conn))
    return removals


def shift_moved(rows: list[dict], script: ZeekScript, settings: Settings) -> list[dict]:
    """Rows with each late connection moved (by whole intervals) to where Zeek put it."""
    moved = {conn.uid: (own, to) for conn, own, to in script.moved}
    out = []
    for r in rows:
        if r["uid"] in moved:
            own, to = moved[r["uid"]]
            r = {**r, "ts": float(r["ts"]) + (to - own) * settings.interval_width}
        out.append(r)
    # The shift must land each connection exactly in the bin Zeek used.
    chunk = chunk_from_rows(out)
    bins = bin_of(estimate_removal(chunk, settings.delays), settings.interval_width)
    for i, r in enumerate(out):
        if r["uid"] in moved:
            assert bins[i] == moved[r["uid"]][1]
    return out


# Every connection class of the DESIGN.md table, with what the estimate adds to ts.
CLASSES = [
    # (proto, state, service, resp_p, duration, delay after ts (+duration unless S0))
    ("tcp", "S0", "-", 80, 2.5, "tcp_attempt"),
    *[
        ("tcp", s, "-", 80, 2.0, "tcp_close")
        for s in ("SF", "REJ", "RSTO", "RSTR", "RSTOS0", "RSTRH", "SH", "SHR")
    ],
    *[("tcp", s, "-", 8080, 3.0, "tcp_inactivity") for s in ("S1", "S2", "S3", "OTH")],
    ("tcp", "S1", "ssh", 2222, 40.0, "long_inactivity"),
    ("tcp", "OTH", "ftp-data", 20, 4.0, "long_inactivity"),
    ("tcp", "S3", "-", 22, 4.0, "long_inactivity"),
    ("tcp", "S2", "-", 513, 4.0, "long_inactivity"),
    ("tcp", "SF", "ssh", 22, 30.0, "tcp_close"),  # closed: the long timeout never applies
    ("tcp", "", "-", 443, 1.0, "tcp_inactivity"),  # state unknown
    ("udp", "SF", "dns", 53, 0.1, "dns"),
    ("udp", "S0", "dns,mdns", 5353, 0.0, "dns"),
    ("udp", "SF", "-", 123, 0.2, "udp_inactivity"),
    ("udp", "SHR", "-", 53, 0.0, "udp_inactivity"),  # port 53 without the dns service
    ("icmp", "OTH", "-", 0, 1.5, "icmp_inactivity"),
    ("unknown_transport", "OTH", "-", 0, 0.0, "icmp_inactivity"),
]


def edge_rows(settings: Settings) -> list[dict]:
    """Every class placed so that its estimate falls just before, on and after edges."""
    rows = []
    hosts = ["10.0.0.1", "10.0.0.2", "2001:db8::7", "192.168.5.9", "fd00::1:2"]
    width = settings.interval_width
    for k, (proto, state, service, port, duration, delay_name) in enumerate(CLASSES):
        delay = getattr(settings.delays, delay_name)
        for j, offset in enumerate((-1e-3, 0.0, 1e-3, 0.5 * width)):
            edge = T0 + (k % 7 + 2) * width
            ts = edge + offset - delay - (0.0 if state == "S0" and proto == "tcp" else duration)
            orig, resp = hosts[(k + j) % 5], hosts[(k + j + 2) % 5]
            rows.append(row(f"C{k}_{j}", ts, orig, resp, port, proto, state, duration, service))
    return rows


@pytest.mark.parametrize("width", [60.0, 10.0])
def test_removal_estimate_is_the_featurizers(width):
    settings = Settings(interval_width=width)
    rows = edge_rows(settings)
    mirror = ZeekScript(settings)
    want = estimate_removal(chunk_from_rows(rows), settings.delays)
    got = [mirror.removal_estimate(Conn.from_row(r)) for r in rows]
    assert got == list(want)  # bit for bit: the same float operations in the same order


def test_estimate_follows_each_class():
    settings = Settings()
    mirror = ZeekScript(settings)
    for proto, state, service, port, duration, delay_name in CLASSES:
        r = row("C", T0, "10.0.0.1", "10.0.0.2", port, proto, state, duration, service)
        base = T0 if (proto, state) == ("tcp", "S0") else T0 + duration
        want = base + getattr(settings.delays, delay_name)
        assert mirror.removal_estimate(Conn.from_row(r)) == want, (proto, state, service)


@pytest.mark.parametrize("width", [60.0, 10.0])
@pytest.mark.parametrize("removal_lag", [0.0, 1.3])
def test_every_class_at_interval_edges_equals_batch(width, removal_lag):
    settings = Settings(interval_width=width)
    rows = edge_rows(settings)
    script = replay(live(rows, settings, removal_lag), settings)
    assert script.moved == []
    assert all(m.late == 0 for m in script.published)
    assert_same(streamed(script), batch(rows, settings))


def test_hand_computed_vectors_ipv6_inbound_outbound():
    settings = Settings()
    a, b, c = "2001:db8::a", "10.0.0.2", "10.0.0.3"
    ts = T0 + 10.0
    rows = [
        # a -> b, closed, 1 s: estimate ts+6 (same interval)
        row("C1", ts, a, b, 443, "tcp", "SF", 1.0, "ssl", 10, 8, 1000, 5000),
        # a -> b again on another port, rejected
        row("C2", ts + 1, a, b, 8443, "tcp", "REJ", 0.0, "-", 1, 1, 60, 40),
        # c -> a over UDP (dns), a is the responder here
        row("C3", ts + 2, c, "2001:0db8:0:0::a", 53, "udp", "SF", 0.5, "dns", 1, 1, 70, 120),
        # b -> a, S0: failed inbound for a
        row("C4", ts + 3, b, a, 22, "tcp", "S0", 0.0, "-", 2, 0, 120, 0),
    ]
    script = replay(live(rows, settings, 0.5), settings)
    got = streamed(script)
    b0 = math.floor(T0 / 60.0)
    vec = dict(zip(FEATURE_NAMES, got[(b0, a)], strict=True))
    assert vec == {
        "out_conns": 2.0,
        "out_hosts": 1.0,
        "out_ports": 2.0,
        "out_bytes": 1060.0,
        "out_resp_bytes": 5040.0,
        "out_pkts": 11.0,
        "out_resp_pkts": 9.0,
        "out_duration": 1.0,
        "out_failed": 1.0,
        "out_rejected": 1.0,
        "out_udp": 0.0,
        "out_icmp": 0.0,
        "in_conns": 2.0,
        "in_hosts": 2.0,
        "in_bytes": 190.0,
        "in_failed": 1.0,
    }
    vec_b = got[(b0, b)]
    assert vec_b[FEATURE_INDEX["in_conns"]] == 2 and vec_b[FEATURE_INDEX["in_failed"]] == 1
    assert vec_b[FEATURE_INDEX["out_conns"]] == 1 and vec_b[FEATURE_INDEX["out_failed"]] == 1
    assert got[(b0, c)][FEATURE_INDEX["out_udp"]] == 1
    assert_same(got, batch(rows, settings))


@pytest.mark.parametrize("cap", [4, 1024])
def test_distinct_counts_stop_at_the_cap(cap):
    settings = Settings(distinct_cap=cap)
    scanner, victim = "10.9.9.9", "10.0.0.50"
    rows = [
        row(f"S{i}", T0 + 5 + i * 0.01, scanner, f"10.1.{i // 250}.{i % 250}", 1 + i, state="S0")
        for i in range(1030)
    ]
    rows += [
        row(f"V{i}", T0 + 5 + i * 0.01, f"10.2.{i // 250}.{i % 250}", victim, 445, state="REJ")
        for i in range(1030)
    ]
    script = replay(live(rows, settings, 0.2), settings)
    got = streamed(script)
    b0 = math.floor((T0 + 10) / 60.0)
    want = float(min(1030, cap))
    assert got[(b0, scanner)][FEATURE_INDEX["out_hosts"]] == want
    assert got[(b0, scanner)][FEATURE_INDEX["out_ports"]] == want
    assert got[(b0, scanner)][FEATURE_INDEX["out_conns"]] == 1030
    assert got[(b0, victim)][FEATURE_INDEX["in_hosts"]] == want
    assert_same(got, batch(rows, settings))


def test_connection_removed_after_its_interval_went_out_is_moved_and_counted():
    settings = Settings()
    early = row("LATE", T0 + 30, "10.0.0.1", "10.0.0.2", 80, state="SF", duration=1.0)
    filler = [
        row(f"F{i}", T0 + 60 * i + 20, "10.0.0.3", "10.0.0.4", 80, state="SF", duration=1.0)
        for i in range(1, 5)
    ]
    rows = [early, *filler]
    removals = live(filler, settings, 0.5)
    # Zeek removes the early connection 150 s after its estimate, at T0+186: the
    # intervals ending at T0+60, +120 and +180 went out at +65, +125 and +185.
    mirror = ZeekScript(settings)
    removals.append((mirror.removal_estimate(Conn.from_row(early)) + 150.0, Conn.from_row(early)))
    script = replay(removals, settings)

    assert [(c.uid, own, to) for c, own, to in script.moved] == [
        ("LATE", math.floor(T0 / 60), math.floor(T0 / 60) + 3)
    ]
    intervals = assemble(script.published)
    late = {b: iv.late for (_, b), iv in intervals.items()}
    assert late == {b: int(b == math.floor(T0 / 60) + 3) for b in late}
    got = streamed(script)
    assert sum(v[FEATURE_INDEX["out_conns"]] for v in got.values()) == len(rows)
    assert_same(got, batch(shift_moved(rows, script, settings), settings))


def test_intervals_go_out_in_order_once_time_passes_their_end_plus_slack():
    settings = Settings(interval_width=10.0, slack=5.0)
    script = ZeekScript(settings)
    conn = Conn.from_row(row("C", T0 + 1, "10.0.0.1", "10.0.0.2", 80, duration=1.0))
    script.connection_state_remove(conn, T0 + 7.5)  # estimate T0+7: bin of T0
    script.check_bins(T0 + 14.9, network_time=T0 + 14.9)
    assert script.published == []  # due at T0 + 10 + 5
    script.check_bins(T0 + 15.0, network_time=T0 + 15.0)
    assert [m.start for m in script.published] == [T0]
    assert script.first_open_bin == math.floor(T0 / 10) + 1


def test_chunks_overflow_and_warnings():
    settings = Settings(hosts_per_message=3, max_hosts_per_interval=5)
    rows = [row(f"C{i}", T0 + 5, f"10.0.0.{i}", "10.0.1.1", 80) for i in range(1, 9)]
    script = replay(live(rows, settings, 0.1), settings)
    messages = script.published
    # 10.0.1.1 and the first four originators are admitted; four more are refused.
    assert [(m.chunk, m.chunks, len(m.hosts)) for m in messages] == [(0, 2, 3), (1, 2, 2)]
    assert {m.overflow for m in messages} == {4}
    assert len(script.warnings) == 1
    exported = {h for m in messages for h in m.hosts}
    assert "10.0.1.1" in exported and len(exported) == 5
    # The responder still counts every connection, including those of refused hosts.
    vectors = streamed(script)
    assert vectors[(math.floor(T0 / 60), "10.0.1.1")][FEATURE_INDEX["in_conns"]] == 8


def test_interval_without_tracked_hosts_still_sends_one_message():
    local = Settings(track_hosts=lambda h: h.startswith("192.168."))
    rows = [row("C1", T0 + 5, "10.0.0.1", "10.0.0.2", 80)]
    script = replay(live(rows, local, 0.1), local)
    assert [(m.chunk, m.chunks, m.hosts, m.values.shape) for m in script.published] == [
        (0, 1, (), (0, 16))
    ]


# -- real removal times from a real Zeek 8.2.2 ------------------------------------------------


def real_captures(shared_data: Path) -> list[Path]:
    dirs = sorted(p for p in (shared_data / "zeek-from-pcaps").iterdir() if p.is_dir())
    return [*dirs, shared_data / "lab2"]


@pytest.mark.parametrize("width", [60.0, 10.0])
def test_real_removal_times(shared_data, width):
    """Replays real Zeek removal times; moved connections must match the shifted batch."""
    settings = Settings(interval_width=width)
    checked = 0
    for capture in real_captures(shared_data):
        rows = read_tsv(capture / "conn.log")
        removed = {r["uid"]: float(r["removed"]) for r in read_tsv(capture / "removal.log")}
        assert set(removed) == {r["uid"] for r in rows}, capture
        script = replay([(removed[r["uid"]], Conn.from_row(r)) for r in rows], settings)
        got = streamed(script)
        total = sum(v[FEATURE_INDEX["out_conns"]] for v in got.values())
        assert total == len(rows), capture
        late = sum(iv.late for iv in assemble(script.published).values())
        assert late == len(script.moved), capture
        assert_same(got, batch(shift_moved(rows, script, settings), settings))
        if not script.moved:
            assert_same(got, batch(rows, settings))
        checked += len(rows)
    assert checked > 16000


def test_lab2_live_capture_has_no_late_connections_at_60s(shared_data):
    """DESIGN.md: on the live sensor no connection was removed after its bin closed."""
    rows = read_tsv(shared_data / "lab2" / "conn.log")
    removed = {
        r["uid"]: float(r["removed"]) for r in read_tsv(shared_data / "lab2" / "removal.log")
    }
    settings = Settings(delays=RemovalDelays())
    script = replay([(removed[r["uid"]], Conn.from_row(r)) for r in rows], settings)
    assert script.moved == []
    assert_same(streamed(script), batch(rows, settings))
