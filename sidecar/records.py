"""Columnar batches of connection records: what every reader produces.

Readers (Zeek TSV/JSON conn.log, Suricata EVE, the live tail) turn their input into
:class:`ConnChunk` objects; the featurizer consumes nothing else. Columns are numpy arrays
so that featurization is vectorized; addresses are codes into a chunk-local table so that
grouping works on integers, not strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

# Ground-truth label classes (per connection).
LABEL_NONE = -1
"""The input carries no label for this connection."""
LABEL_BENIGN = 0
LABEL_MALICIOUS = 1
LABEL_BACKGROUND = 2
"""Background / Unknown: neither benign ground truth nor an attack; kept out of both classes."""


@dataclass
class ConnChunk:
    """A batch of connection records in columns (one row per connection).

    Missing numeric values are 0 (DESIGN.md). ``addresses`` holds canonical address text
    (``ipaddress`` compressed form), and ``orig_idx``/``resp_idx`` index into it.
    """

    source: str
    """Where the rows came from (file path or stream name), for messages."""
    ts: np.ndarray  # float64 seconds since the epoch (or relative, as the file has it)
    duration: np.ndarray  # float64 seconds
    orig_idx: np.ndarray  # int32 into addresses
    resp_idx: np.ndarray  # int32 into addresses
    resp_p: np.ndarray  # int32 responder port (ICMP: code, as Zeek writes it)
    proto: np.ndarray  # uint8, schema.PROTO_CODE
    state: np.ndarray  # uint8, schema.STATE_CODE
    service: np.ndarray  # uint8 flags, schema.SERVICE_*
    orig_pkts: np.ndarray  # float64
    resp_pkts: np.ndarray  # float64
    orig_ip_bytes: np.ndarray  # float64
    resp_ip_bytes: np.ndarray  # float64
    addresses: Sequence[str]
    label: np.ndarray | None = None  # int8 LABEL_*, or None when the input has no labels
    detailed_label: np.ndarray | None = None  # object array of str ("" when none)
    uid: np.ndarray | None = None  # object array of str, where the input has uids
    line: np.ndarray | None = None  # int64 source line numbers, for messages
    meta: dict = field(default_factory=dict)
    address_keys: np.ndarray | None = None
    """int64 key of each ``addresses`` entry, stable across the chunks of one reader that
    share ``address_space``: consumers may cache per-address work by key."""
    address_space: object | None = None
    """Identity of the key space (a reader's address book until it starts afresh)."""

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    def take(self, index: np.ndarray) -> ConnChunk:
        """Rows selected by a boolean mask or index array (addresses table shared)."""

        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[index]

        return ConnChunk(
            source=self.source,
            ts=self.ts[index],
            duration=self.duration[index],
            orig_idx=self.orig_idx[index],
            resp_idx=self.resp_idx[index],
            resp_p=self.resp_p[index],
            proto=self.proto[index],
            state=self.state[index],
            service=self.service[index],
            orig_pkts=self.orig_pkts[index],
            resp_pkts=self.resp_pkts[index],
            orig_ip_bytes=self.orig_ip_bytes[index],
            resp_ip_bytes=self.resp_ip_bytes[index],
            addresses=self.addresses,
            label=pick(self.label),
            detailed_label=pick(self.detailed_label),
            uid=pick(self.uid),
            line=pick(self.line),
            meta=dict(self.meta),
            address_keys=self.address_keys,
            address_space=self.address_space,
        )

    def orig_h(self) -> np.ndarray:
        """Originator addresses as an object array of str (for messages and tests)."""
        return np.asarray(self.addresses, dtype=object)[self.orig_idx]

    def resp_h(self) -> np.ndarray:
        """Responder addresses as an object array of str."""
        return np.asarray(self.addresses, dtype=object)[self.resp_idx]


def chunk_from_rows(rows: Sequence[dict], source: str = "<rows>") -> ConnChunk:
    """Build a chunk from dicts with conn.log field names (tests, the live tail's small batches).

    Keys: ts, duration, id.orig_h, id.resp_h, id.resp_p, proto, service, conn_state,
    orig_pkts, resp_pkts, orig_ip_bytes, resp_ip_bytes, and optionally label,
    detailed_label, uid. Missing values are 0 / empty.
    """
    from seqwatch.sidecar.addresses import canonical_address
    from seqwatch.sidecar.schema import PROTO_CODE, STATE_CODE

    table: dict[str, int] = {}

    def code(addr: str) -> int:
        addr = canonical_address(addr)
        if addr not in table:
            table[addr] = len(table)
        return table[addr]

    def num(row: dict, key: str) -> float:
        value = row.get(key)
        if value in (None, "-", "", "(empty)"):
            return 0.0
        return float(value)

    n = len(rows)
    labels = [row.get("label") for row in rows]
    has_label = any(v is not None for v in labels)
    return ConnChunk(
        source=source,
        ts=np.array([num(r, "ts") for r in rows], dtype=np.float64),
        duration=np.array([num(r, "duration") for r in rows], dtype=np.float64),
        orig_idx=np.array([code(r["id.orig_h"]) for r in rows], dtype=np.int32),
        resp_idx=np.array([code(r["id.resp_h"]) for r in rows], dtype=np.int32),
        resp_p=np.array([int(num(r, "id.resp_p")) for r in rows], dtype=np.int32),
        proto=np.array([PROTO_CODE.get(str(r.get("proto", "")), 0) for r in rows], dtype=np.uint8),
        state=np.array(
            [STATE_CODE.get(str(r.get("conn_state", "")), 0) for r in rows], dtype=np.uint8
        ),
        service=np.array([service_flags(r.get("service")) for r in rows], dtype=np.uint8),
        orig_pkts=np.array([num(r, "orig_pkts") for r in rows], dtype=np.float64),
        resp_pkts=np.array([num(r, "resp_pkts") for r in rows], dtype=np.float64),
        orig_ip_bytes=np.array([num(r, "orig_ip_bytes") for r in rows], dtype=np.float64),
        resp_ip_bytes=np.array([num(r, "resp_ip_bytes") for r in rows], dtype=np.float64),
        addresses=list(table),
        label=np.array([label_code(v) for v in labels], dtype=np.int8) if has_label else None,
        detailed_label=np.array([str(r.get("detailed_label") or "") for r in rows], dtype=object)
        if has_label
        else None,
        uid=np.array([str(r.get("uid", "")) for r in rows], dtype=object) if n else None,
    )


def service_flags(service: str | Sequence[str] | None) -> int:
    """Flags for Zeek's ``service`` field (comma-separated text or a list)."""
    from seqwatch.sidecar.schema import LONG_TIMEOUT_SERVICES, SERVICE_DNS, SERVICE_LONG_TIMEOUT

    if not service or service in ("-", "(empty)"):
        return 0
    names = service.split(",") if isinstance(service, str) else list(service)
    flags = 0
    for name in names:
        name = name.strip().lower()
        if name == "dns":
            flags |= SERVICE_DNS
        elif name in LONG_TIMEOUT_SERVICES:
            flags |= SERVICE_LONG_TIMEOUT
    return flags


_BENIGN = {"benign", "normal"}
_MALICIOUS = {"malicious", "malware", "attack"}


def label_code(label: str | None) -> int:
    """Map a label string (Stratosphere / IoT-23 vocabulary) to a LABEL_* class."""
    if label is None:
        return LABEL_NONE
    text = str(label).strip().lower()
    if text in _BENIGN:
        return LABEL_BENIGN
    if text in _MALICIOUS or text.startswith("malicious"):
        return LABEL_MALICIOUS
    return LABEL_BACKGROUND
