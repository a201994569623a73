"""A pure-Python mirror of zeek_scripts/main.zeek's streaming aggregation, for tests.

Zeek cannot run here, so the parity tests run this instead: each method below is one
function or event handler of main.zeek, translated statement by statement (same names,
same order, same arithmetic), and it emits the exact
``SeqWatch::interval_features`` messages the script would publish, as
:class:`~seqwatch.sidecar.messages.FeatureMessage` objects. tests/test_zeek_real.py
checks the script itself against the Python featurizer wherever Zeek is installed.

One deliberate difference: main.zeek estimates ``overflow`` (hosts refused beyond
``max_hosts_per_interval``) with HyperLogLog to keep memory bounded; this mirror counts
them exactly.

:func:`replay` drives the mirror like a live Zeek: network time runs continuously, the
periodic check fires at its due time, before a connection removed later than that.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seqwatch.sidecar.messages import FeatureMessage
from seqwatch.sidecar.schema import (
    CLOSED_STATES,
    DEFAULT_DISTINCT_CAP,
    DEFAULT_INTERVAL,
    DEFAULT_SLACK,
    FAILED_STATES,
    LONG_TIMEOUT_PORTS,
    LONG_TIMEOUT_SERVICES,
    SCHEMA_ID,
    RemovalDelays,
)


def _number(value: object) -> float:
    return 0.0 if value in (None, "", "-", "(empty)") else float(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Conn:
    """What ``connection_state_remove`` sees of a connection (conn.log's view of it)."""

    ts: float
    duration: float  # 0 when conn.log has "-" (Zeek leaves it unset when 0)
    orig_h: str
    resp_h: str
    resp_p: int
    proto: str  # get_port_transport_proto(c$id$resp_p): tcp, udp, icmp, unknown_transport
    conn_state: str
    service: frozenset[str]
    orig_pkts: int = 0
    resp_pkts: int = 0
    orig_ip_bytes: int = 0
    resp_ip_bytes: int = 0
    uid: str = ""

    @classmethod
    def from_row(cls, row: Mapping[str, object]) -> Conn:
        """From a dict with conn.log field names (as records.chunk_from_rows takes them)."""
        service = str(row.get("service") or "")
        state = str(row.get("conn_state") or "")
        return cls(
            ts=_number(row["ts"]),
            duration=_number(row.get("duration")),
            # Zeek's addr type holds the address, not its spelling.
            orig_h=ipaddress.ip_address(str(row["id.orig_h"])).compressed,
            resp_h=ipaddress.ip_address(str(row["id.resp_h"])).compressed,
            resp_p=int(_number(row["id.resp_p"])),
            proto=str(row.get("proto", "")),
            conn_state="" if state == "-" else state,
            service=frozenset(s for s in service.split(",") if s and s not in ("-", "(empty)")),
            orig_pkts=int(_number(row.get("orig_pkts"))),
            resp_pkts=int(_number(row.get("resp_pkts"))),
            orig_ip_bytes=int(_number(row.get("orig_ip_bytes"))),
            resp_ip_bytes=int(_number(row.get("resp_ip_bytes"))),
            uid=str(row.get("uid", "")),
        )


@dataclass
class Settings:
    """The script's export block (defaults as in main.zeek)."""

    interval_width: float = DEFAULT_INTERVAL
    distinct_cap: int = DEFAULT_DISTINCT_CAP
    delays: RemovalDelays = field(default_factory=RemovalDelays)
    slack: float = DEFAULT_SLACK
    check_interval: float = 1.0
    track_hosts: Callable[[str], bool] = lambda h: True  # ALL_HOSTS
    max_hosts_per_interval: int = 50000
    hosts_per_message: int = 256
    node_name: str = "zeek"
    long_timeout_services: frozenset[str] = LONG_TIMEOUT_SERVICES
    long_timeout_ports: tuple[int, ...] = LONG_TIMEOUT_PORTS


@dataclass
class HostAgg:
    out_conns: int = 0
    out_hosts: set[str] = field(default_factory=set)
    out_ports: set[tuple[int, str]] = field(default_factory=set)
    out_bytes: int = 0
    out_resp_bytes: int = 0
    out_pkts: int = 0
    out_resp_pkts: int = 0
    out_duration: float = 0.0
    out_failed: int = 0
    out_rejected: int = 0
    out_udp: int = 0
    out_icmp: int = 0
    in_conns: int = 0
    in_hosts: set[str] = field(default_factory=set)
    in_bytes: int = 0
    in_failed: int = 0


@dataclass
class Bin:
    hosts: dict[str, HostAgg] = field(default_factory=dict)
    late: int = 0
    overflow: set[str] = field(default_factory=set)  # HyperLogLog in main.zeek


class ZeekScript:
    """main.zeek's state and handlers."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.s = settings or Settings()
        self.bins: dict[int, Bin] = {}
        self.first_open_bin = 0
        self.checking = False
        self.next_check: float | None = None  # the scheduled check_bins(due)
        self.published: list[FeatureMessage] = []
        self.warnings: list[str] = []
        self.moved: list[tuple[Conn, int, int]] = []
        """Late connections: (conn, own bin, bin it was added to) -- for the tests."""

    # -- functions ------------------------------------------------------------------------
    def bin_index(self, t: float) -> int:
        if t <= 0.0:
            return 0
        return math.floor(t / self.s.interval_width)

    def long_timeout(self, c: Conn) -> bool:
        if c.proto == "tcp" and c.resp_p in self.s.long_timeout_ports:
            return True
        return any(s.lower() in self.s.long_timeout_services for s in c.service)

    def has_dns(self, c: Conn) -> bool:
        return any(s.lower() == "dns" for s in c.service)

    def removal_estimate(self, c: Conn) -> float:
        d = self.s.delays
        state = c.conn_state
        dur = c.duration
        if c.proto == "tcp":
            if state == "S0":
                return c.ts + d.tcp_attempt
            if state in CLOSED_STATES:
                return c.ts + dur + d.tcp_close
            if self.long_timeout(c):
                return c.ts + dur + d.long_inactivity
            return c.ts + dur + d.tcp_inactivity
        if c.proto == "udp":
            if self.has_dns(c):
                return c.ts + dur + d.dns
            return c.ts + dur + d.udp_inactivity
        return c.ts + dur + d.icmp_inactivity

    def admit(self, b: Bin, h: str) -> bool:
        if h in b.hosts:
            return True
        if len(b.hosts) < self.s.max_hosts_per_interval:
            b.hosts[h] = HostAgg()
            return True
        b.overflow.add(h)
        return False

    def add_connection(self, b: Bin, c: Conn) -> None:
        cap = self.s.distinct_cap
        failed = c.conn_state in FAILED_STATES
        if self.s.track_hosts(c.orig_h) and self.admit(b, c.orig_h):
            o = b.hosts[c.orig_h]
            o.out_conns += 1
            if len(o.out_hosts) < cap:
                o.out_hosts.add(c.resp_h)
            if len(o.out_ports) < cap:
                o.out_ports.add((c.resp_p, c.proto))
            o.out_bytes += c.orig_ip_bytes
            o.out_resp_bytes += c.resp_ip_bytes
            o.out_pkts += c.orig_pkts
            o.out_resp_pkts += c.resp_pkts
            o.out_duration += c.duration
            if failed:
                o.out_failed += 1
            if c.conn_state == "REJ":
                o.out_rejected += 1
            if c.proto == "udp":
                o.out_udp += 1
            if c.proto == "icmp":
                o.out_icmp += 1
        if self.s.track_hosts(c.resp_h) and self.admit(b, c.resp_h):
            r = b.hosts[c.resp_h]
            r.in_conns += 1
            if len(r.in_hosts) < cap:
                r.in_hosts.add(c.orig_h)
            r.in_bytes += c.orig_ip_bytes
            if failed:
                r.in_failed += 1

    @staticmethod
    def feature_vector(a: HostAgg) -> list[float]:
        counts = [
            a.out_conns,
            len(a.out_hosts),
            len(a.out_ports),
            a.out_bytes,
            a.out_resp_bytes,
            a.out_pkts,
            a.out_resp_pkts,
            0,
            a.out_failed,
            a.out_rejected,
            a.out_udp,
            a.out_icmp,
            a.in_conns,
            len(a.in_hosts),
            a.in_bytes,
            a.in_failed,
        ]
        v = [float(x) for x in counts]
        v[7] = a.out_duration
        return v

    def publish_chunk(self, start, chunk, chunks, late, overflow, hosts, values) -> None:
        self.published.append(
            FeatureMessage(
                node=self.s.node_name,
                start=start,
                width=self.s.interval_width,
                schema=SCHEMA_ID,
                chunk=chunk,
                chunks=chunks,
                late=late,
                overflow=overflow,
                hosts=tuple(hosts),
                values=np.array(values, dtype=np.float64).reshape(len(hosts), 16),
            )
        )

    def emit_bin(self, idx: int, b: Bin) -> None:
        start = idx * self.s.interval_width
        per = self.s.hosts_per_message if self.s.hosts_per_message > 0 else 1
        n = len(b.hosts)
        chunks = 1 if n == 0 else (n + per - 1) // per
        overflow = 0
        if b.overflow:
            overflow = len(b.overflow)
            self.warnings.append(f"interval {start} had about {overflow} hosts beyond the limit")
        hosts: list[str] = []
        values: list[list[float]] = []
        chunk = 0
        for h, a in b.hosts.items():
            hosts.append(h)
            values.append(self.feature_vector(a))
            if len(hosts) == per:
                self.publish_chunk(start, chunk, chunks, b.late, overflow, hosts, values)
                chunk += 1
                hosts, values = [], []
        if chunk < chunks:
            self.publish_chunk(start, chunk, chunks, b.late, overflow, hosts, values)

    def emit_before(self, limit: int) -> None:
        due = sorted(idx for idx in self.bins if idx < limit)
        for idx in due:
            self.emit_bin(idx, self.bins[idx])
            del self.bins[idx]
        if limit > self.first_open_bin:
            self.first_open_bin = limit

    # -- events ---------------------------------------------------------------------------
    def check_bins(self, due: float, network_time: float) -> None:
        self.emit_before(self.bin_index(due - self.s.slack))
        self.next_check = network_time + self.s.check_interval

    def connection_state_remove(self, c: Conn, network_time: float) -> None:
        if not self.checking:
            self.checking = True
            self.next_check = network_time + self.s.check_interval
        own = idx = self.bin_index(self.removal_estimate(c))
        late = idx < self.first_open_bin
        if late:
            idx = self.first_open_bin
            self.moved.append((c, own, idx))
        b = self.bins.setdefault(idx, Bin())
        if late:
            b.late += 1
        self.add_connection(b, c)

    def flush(self) -> None:
        last = 0
        for idx in self.bins:
            if idx >= last:
                last = idx + 1
        self.emit_before(last)

    def zeek_done(self) -> None:
        self.flush()


def replay(removals: Iterable[tuple[float, Conn]], settings: Settings | None = None) -> ZeekScript:
    """Run the mirror over (network time of removal, connection) pairs, then zeek_done."""
    script = ZeekScript(settings)
    for now, conn in sorted(removals, key=lambda pair: pair[0]):
        # Checks due before this removal fire first, at their own time (live Zeek).
        while script.next_check is not None and script.next_check < now:
            due = script.next_check
            script.check_bins(due, network_time=due)
        script.connection_state_remove(conn, now)
    script.zeek_done()
    return script


@dataclass
class Interval:
    """The chunks of one interval put back together."""

    start: float
    late: int
    overflow: int
    vectors: dict[str, np.ndarray]


def assemble(messages: Iterable[FeatureMessage]) -> dict[tuple[str, int], Interval]:
    """Group chunks by (node, bin), checking they are complete and agree."""
    parts: dict[tuple[str, int], list[FeatureMessage]] = {}
    for m in messages:
        parts.setdefault((m.node, m.bin), []).append(m)
    out = {}
    for key, chunks in parts.items():
        first = chunks[0]
        assert sorted(m.chunk for m in chunks) == list(range(first.chunks)), key
        assert {(m.chunks, m.late, m.overflow, m.start, m.width) for m in chunks} == {
            (first.chunks, first.late, first.overflow, first.start, first.width)
        }, key
        vectors = {h: m.values[i] for m in chunks for i, h in enumerate(m.hosts)}
        assert len(vectors) == sum(len(m.hosts) for m in chunks), f"host repeated in {key}"
        out[key] = Interval(first.start, first.late, first.overflow, vectors)
    return out


def read_tsv(path: Path) -> list[dict]:
    """Rows of a Zeek TSV log as dicts of text values (enough for the logs the tests read)."""
    fields: list[str] = []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("#fields"):
                fields = line.split("\t")[1:]
            elif line and not line.startswith("#"):
                rows.append(dict(zip(fields, line.split("\t"), strict=True)))
    return rows
