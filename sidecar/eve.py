"""Suricata EVE JSON ``flow`` events as connection records (the same ConnChunk as conn.log).

Only ``event_type == "flow"`` lines become rows; every other event (alert, dns, http,
stats, ...) is skipped and counted in the ProblemReport as ``ignored_event``.

Field mapping (DESIGN.md, "Inputs beyond the Broker path"):

=====================================  ==============================================
EVE                                    ConnChunk
=====================================  ==============================================
``src_ip`` / ``dest_ip``               orig / resp (canonical text; Suricata writes
                                       IPv6 fully expanded, Zeek compressed)
``dest_port``                          resp_p (ICMP: ``icmp_code``, as Zeek does)
``proto`` TCP/UDP/ICMP/IPv6-ICMP       proto code (anything else: other)
``flow.start``                         ts
``flow.end - flow.start``              duration, so ts + duration is the last packet
``flow.pkts_toserver`` / ``toclient``  orig_pkts / resp_pkts
``flow.bytes_toserver`` / ``toclient`` orig_ip_bytes / resp_ip_bytes (IP-level bytes)
``app_proto`` dns / ssh, ftp           service flag DNS / long timeout
``flow_id``                            uid (as text)
=====================================  ==============================================

Suricata logs a flow when it times out, not when Zeek would have removed it. Rather than
a special removal rule, a Zeek ``conn_state`` is derived so that the standard estimate
(DESIGN.md) applies to ts + duration exactly as for conn.log. TCP uses the per-direction
flag sets ``tcp.tcp_flags_ts`` (originator) and ``tcp.tcp_flags_tc`` (responder);
"replied" means ``flow.pkts_toclient > 0``. First matching row wins:

========  =======================================================  ==========
proto     observed                                                 conn_state
========  =======================================================  ==========
TCP       no reply; originator SYN and RST                         RSTOS0
TCP       no reply; originator SYN and FIN                         SH
TCP       no reply; originator SYN                                 S0
TCP       no reply; no SYN (mid-stream)                            OTH
TCP       reply; responder SYN-ACK; originator RST                 RSTO
TCP       reply; responder SYN-ACK; responder RST                  RSTR
TCP       reply; responder SYN-ACK; FIN from both                  SF
TCP       reply; responder SYN-ACK; FIN from originator only       S2
TCP       reply; responder SYN-ACK; FIN from responder only        S3
TCP       reply; responder SYN-ACK; no FIN, no RST (timed out)     S1
TCP       reply; originator SYN, no SYN-ACK; responder RST         REJ
TCP       reply; no SYN-ACK; FIN from both (mid-stream close)      SF
TCP       reply; no SYN-ACK; originator / responder RST            RSTO / RSTR
TCP       reply; anything else                                     OTH
UDP       reply / no reply                                         SF / S0
ICMP      always                                                   OTH
other     always                                                   OTH
========  =======================================================  ==========

ICMP maps to OTH, not S0/SF, because Zeek writes OTH for every ICMP "connection" (see
lab2: 190 icmp rows, all OTH); an unanswered ping must not count as a failed connection
on one side and not the other. When a TCP event lacks the per-direction flags (older
Suricata), the combined ``tcp.tcp_flags`` (or the ``syn``/``fin``/``rst``/``ack``
booleans) stand in for the originator and, if there was a reply, for the responder;
without any flags, ``tcp.state`` / ``flow.state`` decide: no reply -> S0, closed
(``closed``, ``time_wait``, ``last_ack``, ``closing``) -> SF, otherwise S1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqwatch.sidecar.arrowcols import (
    AddressBook,
    RecordColumns,
    build_chunk,
    iso_seconds,
    map_distinct,
    numbers,
)
from seqwatch.sidecar.jsonlines import explain_json_line, read_json_block
from seqwatch.sidecar.linebuffer import BlockLines
from seqwatch.sidecar.problems import IGNORED, Finding, settle
from seqwatch.sidecar.records import ConnChunk, service_flags
from seqwatch.sidecar.schema import PROTO_CODE, STATE_CODE

if TYPE_CHECKING:
    from seqwatch.sidecar.zeeklog import ConnLogParser

FORMAT_EVE = "eve"

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
_FIELD_NAMES = {
    "ts": "flow.start",
    "duration": "flow.end - flow.start",
    "id.orig_h": "src_ip",
    "id.resp_h": "dest_ip",
    "id.resp_p": "dest_port",
    "orig_pkts": "flow.pkts_toserver",
    "resp_pkts": "flow.pkts_toclient",
    "orig_ip_bytes": "flow.bytes_toserver",
    "resp_ip_bytes": "flow.bytes_toclient",
}
"""EVE names of the fields, for problem messages."""
_UNSET = frozenset({""})
"""EVE leaves absent fields out; an empty address text is no address either."""
_CLOSED_TCP_STATES = frozenset({"closed", "time_wait", "last_ack", "closing"})

_TEXT = pa.string()
_NUMBER = pa.float64()
EVE_SCHEMA = pa.schema(
    [
        ("event_type", _TEXT),
        ("flow_id", pa.int64()),
        ("src_ip", _TEXT),
        ("dest_ip", _TEXT),
        ("dest_port", _NUMBER),
        ("proto", _TEXT),
        ("app_proto", _TEXT),
        ("icmp_code", _NUMBER),
        (
            "flow",
            pa.struct(
                [
                    ("pkts_toserver", _NUMBER),
                    ("pkts_toclient", _NUMBER),
                    ("bytes_toserver", _NUMBER),
                    ("bytes_toclient", _NUMBER),
                    ("start", _TEXT),
                    ("end", _TEXT),
                    ("state", _TEXT),
                    ("reason", _TEXT),
                ]
            ),
        ),
        (
            "tcp",
            pa.struct(
                [
                    ("tcp_flags", _TEXT),
                    ("tcp_flags_ts", _TEXT),
                    ("tcp_flags_tc", _TEXT),
                    ("syn", pa.bool_()),
                    ("fin", pa.bool_()),
                    ("rst", pa.bool_()),
                    ("ack", pa.bool_()),
                    ("state", _TEXT),
                ]
            ),
        ),
    ]
)


def _hex_flags(arr: pa.Array) -> np.ndarray:
    """Suricata's hex flag sets ("1b") as integers; -1 where absent or unreadable."""

    def parse(text: str) -> int:
        try:
            return int(text, 16)
        except ValueError:
            return -1

    return map_distinct(arr, parse, np.int16, -1)


def _bool_flags(tcp: pa.StructArray) -> np.ndarray:
    """The combined ``syn``/``fin``/``rst``/``ack`` booleans as a flag set; -1 if none."""
    flags = np.zeros(len(tcp), dtype=np.int16)
    seen = np.zeros(len(tcp), dtype=bool)
    for name, bit in (("syn", SYN), ("fin", FIN), ("rst", RST), ("ack", ACK)):
        value = pc.struct_field(tcp, name)
        seen |= value.is_valid().to_numpy(zero_copy_only=False)
        flags |= np.where(pc.fill_null(value, False).to_numpy(zero_copy_only=False), bit, 0)
    return np.where(seen, flags, -1).astype(np.int16)


def derive_states(
    proto: np.ndarray,
    replied: np.ndarray,
    orig_flags: np.ndarray,
    resp_flags: np.ndarray,
    closed: np.ndarray,
) -> np.ndarray:
    """Zeek conn_state codes from EVE observations (the table in the module docstring).

    ``orig_flags``/``resp_flags`` are TCP flag sets (-1: unknown); ``closed`` says the
    TCP or flow state was a closed one (used only when no flags are known).
    """
    code = STATE_CODE
    tcp = proto == PROTO_CODE["tcp"]
    udp = proto == PROTO_CODE["udp"]
    known = orig_flags >= 0
    o = np.where(known, orig_flags, 0)
    r = np.where(resp_flags >= 0, resp_flags, 0)
    o_syn, o_fin, o_rst = (o & SYN) > 0, (o & FIN) > 0, (o & RST) > 0
    r_synack = ((r & SYN) > 0) & ((r & ACK) > 0)
    r_fin, r_rst = (r & FIN) > 0, (r & RST) > 0
    quiet = ~replied
    rules = [
        (tcp & ~known & quiet, "S0"),
        (tcp & ~known & closed, "SF"),
        (tcp & ~known, "S1"),
        (tcp & quiet & o_syn & o_rst, "RSTOS0"),
        (tcp & quiet & o_syn & o_fin, "SH"),
        (tcp & quiet & o_syn, "S0"),
        (tcp & quiet, "OTH"),
        (tcp & r_synack & o_rst, "RSTO"),
        (tcp & r_synack & r_rst, "RSTR"),
        (tcp & r_synack & o_fin & r_fin, "SF"),
        (tcp & r_synack & o_fin, "S2"),
        (tcp & r_synack & r_fin, "S3"),
        (tcp & r_synack, "S1"),
        (tcp & o_syn & r_rst, "REJ"),
        (tcp & o_fin & r_fin, "SF"),
        (tcp & o_rst, "RSTO"),
        (tcp & r_rst, "RSTR"),
        (udp & replied, "SF"),
        (udp, "S0"),
    ]
    # Everything no rule claims (other TCP, ICMP, other protocols) stays OTH.
    state = np.full(len(proto), code["OTH"], dtype=np.uint8)
    decided = np.zeros(len(proto), dtype=bool)
    for mask, name in rules:
        take = mask & ~decided
        state[take] = code[name]
        decided |= take
    return state


class EveDecoder:
    """Blocks of EVE JSON lines to chunks of flow records (see the module docstring)."""

    fmt = FORMAT_EVE

    def __init__(self, parser: ConnLogParser) -> None:
        self.parser = parser
        self._addresses = AddressBook()

    def decode(self, block: bytes, first_line: int, n_lines: int) -> list[ConnChunk]:
        parser = self.parser
        findings: list[Finding] = []

        def on_bad(line: int, text: bytes, message: str) -> None:
            kind, reason, value = explain_json_line(text, message)
            if isinstance(value, dict) and value.get("event_type") != "flow":
                # Not ours anyway: some other event whose fields clash with flow's types.
                findings.append(
                    Finding(
                        "ignored_event",
                        line,
                        f"EVE event_type {value.get('event_type')!r} is not a flow",
                        severity=IGNORED,
                    )
                )
                return
            findings.append(Finding(kind, line, reason, text))

        table, lines = read_json_block(block, first_line, n_lines, EVE_SCHEMA, on_bad)
        chunk = None
        if table.num_rows:
            event = table.column("event_type").combine_chunks()
            is_flow = pc.fill_null(pc.equal(event, "flow"), False)
            others = len(is_flow) - is_flow.true_count
            if others:
                first = int(np.flatnonzero(~is_flow.to_numpy(zero_copy_only=False))[0])
                findings.append(
                    Finding(
                        "ignored_event",
                        int(lines[first]),
                        f"EVE event_type {event[first].as_py()!r} is not a flow",
                        count=others,
                        severity=IGNORED,
                    )
                )
                mask = is_flow.to_numpy(zero_copy_only=False)
                table, lines = table.filter(is_flow), lines[mask]
            if table.num_rows:
                block_lines = BlockLines(block, first_line)
                chunk = self._assemble(table, lines, findings, lambda i: block_lines.text(lines[i]))
        settle(findings, parser.report, parser.source, parser.strict)
        return [chunk] if chunk is not None else []

    def _assemble(
        self,
        table: pa.Table,
        lines: np.ndarray,
        findings: list[Finding],
        line_text: Callable[[int], bytes],
    ) -> ConnChunk | None:
        def col(name: str) -> pa.Array:
            return table.column(name).combine_chunks()

        flow = col("flow")
        tcp = col("tcp")
        n = table.num_rows

        def flow_number(name: str) -> np.ndarray:
            return numbers(pc.struct_field(flow, name))

        proto = map_distinct(col("proto"), lambda v: PROTO_CODE.get(v.lower(), 0), np.uint8, 0)
        start = iso_seconds(pc.struct_field(flow, "start"))
        end = iso_seconds(pc.struct_field(flow, "end"))
        resp_pkts = flow_number("pkts_toclient")
        replied = np.nan_to_num(resp_pkts) > 0

        orig_flags = _hex_flags(pc.struct_field(tcp, "tcp_flags_ts"))
        resp_flags = _hex_flags(pc.struct_field(tcp, "tcp_flags_tc"))
        combined = _hex_flags(pc.struct_field(tcp, "tcp_flags"))
        combined = np.where(combined >= 0, combined, _bool_flags(tcp))
        fallback = orig_flags < 0
        orig_flags = np.where(fallback, combined, orig_flags)
        resp_flags = np.where(fallback, np.where(replied, combined, 0), resp_flags)
        closed_tcp = map_distinct(
            pc.struct_field(tcp, "state"), lambda v: v in _CLOSED_TCP_STATES, bool, False
        )
        closed_flow = map_distinct(
            pc.struct_field(flow, "state"), lambda v: v == "closed", bool, False
        )
        state = derive_states(proto, replied, orig_flags, resp_flags, closed_tcp | closed_flow)

        is_icmp = proto == PROTO_CODE["icmp"]
        port = numbers(col("dest_port"))
        if is_icmp.any():
            port = np.where(is_icmp, numbers(col("icmp_code")), port)
        flow_id = col("flow_id")
        uid = (
            None
            if flow_id.null_count == n
            else pc.fill_null(pc.cast(flow_id, pa.string()), "").to_numpy(zero_copy_only=False)
        )
        book = self._addresses
        book.prepare(_UNSET)
        cols = RecordColumns(
            ts=start,
            duration=np.where(np.isnan(end), 0.0, end - start),
            orig=book.intern_column(col("src_ip")),
            resp=book.intern_column(col("dest_ip")),
            resp_p=port,
            proto=proto,
            state=state,
            service=map_distinct(col("app_proto"), service_flags, np.uint8, 0),
            orig_pkts=flow_number("pkts_toserver"),
            resp_pkts=resp_pkts,
            orig_ip_bytes=flow_number("bytes_toserver"),
            resp_ip_bytes=flow_number("bytes_toclient"),
            uid=uid,
        )

        return build_chunk(
            cols,
            lines,
            source=self.parser.source,
            fmt=self.fmt,
            line_text=line_text,
            findings=findings,
            names=_FIELD_NAMES,
            addresses=book,
        )
