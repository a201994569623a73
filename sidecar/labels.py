"""Ground-truth labels kept beside the logs: host/time ranges and per-connection uids.

Two kinds of file are recognized from their header line (TSV or CSV):

- **range files**: one row per attack, columns ``host`` (or ``attacker_ip``, ``src``,
  ``src_ip``, ``orig_h``), ``start``/``start_ts``, ``end``/``end_ts`` (epoch seconds or
  ISO 8601; naive times are UTC), ``label`` or ``kind``, optionally ``victim``/``peer``
  (``+``-separated addresses or CIDR networks) and ``detailed_label``. A connection
  matches when its ts lies in [start, end] and either, without peers, its *originator*
  is the host (or in the host's network), or, with peers, it runs between the host and
  one of the peers in either direction (a victim's ICMP errors belong to the scan).
- **uid files**: columns ``uid`` and ``kind`` or ``label`` (like lab2's
  ``attack_uids.tsv``): exactly those connections.

A label text of ``benign``/``normal`` means benign, ``background``/``unknown`` means
background, anything else (an attack kind such as ``slow_syn_scan``) malicious; the
text itself becomes the detailed label unless a ``detailed_label`` column gives one.

:meth:`LabelSet.apply` sets ``label``/``detailed_label`` of a chunk: uid matches first,
then ranges in file order (the first match wins). Rows that match nothing keep the
labels the input already had; if the input had none, they become LABEL_BENIGN when the
set says ``others="benign"`` (the default: a list of every attack, like lab2's, implies
that everything else is normal) and LABEL_NONE with ``others="none"``.

Rows whose host is not an address (lab2's ``spoofed`` SYN flood) cannot be matched by
host and are listed in :attr:`LabelSet.skipped`; load the uid file as well, e.g.
``LabelSet.load([labels.tsv, attack_uids.tsv])``, to cover them. A range file labels
every connection of the host in the window, including its ordinary traffic; a uid file
is exact. Do not load lab2's ``events.tsv``: its rows are benign oddities, not attacks.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqwatch.sidecar.addresses import canonical_address
from seqwatch.sidecar.problems import InputError
from seqwatch.sidecar.records import (
    LABEL_BACKGROUND,
    LABEL_BENIGN,
    LABEL_MALICIOUS,
    LABEL_NONE,
    ConnChunk,
)

HOST_COLUMNS = ("host", "attacker_ip", "attacker", "src", "src_ip", "orig_h", "id.orig_h")
START_COLUMNS = ("start", "start_ts", "start_time")
END_COLUMNS = ("end", "end_ts", "end_time")
LABEL_COLUMNS = ("label", "kind")
DETAILED_COLUMNS = ("detailed_label", "detailedlabel", "detailed-label")
PEER_COLUMNS = ("victim", "peer", "peers", "dst", "dest_ip", "resp_h", "id.resp_h")
OTHERS = ("benign", "none")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def label_class(text: str) -> int:
    """LABEL_* class of a label text in a labels file (see the module docstring)."""
    word = text.strip().lower()
    if word in ("benign", "normal"):
        return LABEL_BENIGN
    if word in ("background", "unknown"):
        return LABEL_BACKGROUND
    return LABEL_MALICIOUS


@dataclass(frozen=True)
class LabelRange:
    """Connections from ``host`` between ``start`` and ``end`` (to ``peers``, if given)."""

    host: Network
    start: float
    end: float
    label: int
    detailed: str
    peers: tuple[Network, ...] = ()


def _network(text: str) -> Network:
    text = text.strip()
    if "/" in text:
        return ipaddress.ip_network(text, strict=False)
    return ipaddress.ip_network(canonical_address(text))


def _time(text: str) -> float:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _pick(columns: Sequence[str], names: Sequence[str]) -> str | None:
    return next((name for name in names if name in columns), None)


class LabelSet:
    """Labels from one or more files, applied to chunks column-wise."""

    def __init__(
        self,
        ranges: Iterable[LabelRange] = (),
        uids: dict[str, tuple[int, str]] | None = None,
        *,
        others: str = "benign",
        skipped: Iterable[str] = (),
    ) -> None:
        if others not in OTHERS:
            raise ValueError(f"others must be one of {OTHERS}, got {others!r}")
        self.ranges = list(ranges)
        self.uids = dict(uids or {})
        self.others = others
        self.skipped = list(skipped)
        """Rows that could not be used (e.g. a host that is not an address), as messages."""
        self._uid_values = pa.array(list(self.uids), pa.string())
        self._uid_label = np.array([v[0] for v in self.uids.values()], dtype=np.int8)
        self._uid_detail = np.array([v[1] for v in self.uids.values()], dtype=object)

    def __len__(self) -> int:
        return len(self.ranges) + len(self.uids)

    @classmethod
    def load(cls, paths: str | os.PathLike | Iterable, *, others: str = "benign") -> LabelSet:
        """Read one or more label files (kind detected per file) into one set."""
        if isinstance(paths, str | os.PathLike):
            paths = [paths]
        ranges: list[LabelRange] = []
        uids: dict[str, tuple[int, str]] = {}
        skipped: list[str] = []
        for path in paths:
            file_ranges, file_uids, file_skipped = _read_label_file(os.fspath(path))
            ranges += file_ranges
            for uid, value in file_uids.items():
                uids.setdefault(uid, value)
            skipped += file_skipped
        return cls(ranges, uids, others=others, skipped=skipped)

    def apply(self, chunk: ConnChunk) -> ConnChunk:
        """The chunk with ``label``/``detailed_label`` set (a new chunk; columns shared)."""
        n = len(chunk)
        if chunk.label is not None:
            label = chunk.label.astype(np.int8, copy=True)
            detailed = (
                np.full(n, "", dtype=object)
                if chunk.detailed_label is None
                else chunk.detailed_label.copy()
            )
        else:
            fill = LABEL_BENIGN if self.others == "benign" else LABEL_NONE
            label = np.full(n, fill, dtype=np.int8)
            detailed = np.full(n, "", dtype=object)
        matched = np.zeros(n, dtype=bool)
        if self.uids and chunk.uid is not None and n:
            where = pc.index_in(pa.array(chunk.uid, pa.string()), value_set=self._uid_values)
            where = pc.fill_null(where, -1).to_numpy(zero_copy_only=False)
            hit = where >= 0
            label[hit] = self._uid_label[where[hit]]
            detailed[hit] = self._uid_detail[where[hit]]
            matched |= hit
        if self.ranges and n:
            self._apply_ranges(chunk, label, detailed, matched)
        return replace(chunk, label=label, detailed_label=detailed)

    def _apply_ranges(self, chunk, label, detailed, matched) -> None:
        ts = chunk.ts
        first, last = float(ts.min()), float(ts.max())
        codes = _AddressCodes(chunk.addresses)
        for r in self.ranges:
            if r.end < first or r.start > last:
                continue
            hosts = codes.within(r.host)
            if not hosts.size:
                continue
            window = (ts >= r.start) & (ts <= r.end) & ~matched
            if r.peers:
                # Between host and peers, in either direction: a victim's replies that
                # open their own "connection" (ICMP errors, callbacks) belong to the attack.
                peers = np.concatenate([codes.within(p) for p in r.peers])
                forward = np.isin(chunk.orig_idx, hosts) & np.isin(chunk.resp_idx, peers)
                backward = np.isin(chunk.orig_idx, peers) & np.isin(chunk.resp_idx, hosts)
                mask = window & (forward | backward)
            else:
                mask = window & np.isin(chunk.orig_idx, hosts)
            label[mask] = r.label
            detailed[mask] = r.detailed
            matched |= mask


class _AddressCodes:
    """Which codes of a chunk's address table fall in a network (parsed lazily, once)."""

    def __init__(self, addresses: Sequence[str]) -> None:
        self.addresses = addresses
        self._index: dict[str, int] | None = None
        self._parsed: list | None = None

    def within(self, network: Network) -> np.ndarray:
        if network.num_addresses == 1:
            if self._index is None:
                self._index = {a: i for i, a in enumerate(self.addresses)}
            code = self._index.get(str(network.network_address))
            return np.array([] if code is None else [code], dtype=np.int64)
        if self._parsed is None:
            self._parsed = [ipaddress.ip_address(a) for a in self.addresses]
        return np.array(
            [
                i
                for i, a in enumerate(self._parsed)
                if a.version == network.version and a in network
            ],
            dtype=np.int64,
        )


def _read_label_file(path: str) -> tuple[list[LabelRange], dict[str, tuple[int, str]], list[str]]:
    from seqwatch.sidecar.archives import read_bytes

    text = b"".join(read_bytes(path)).decode("utf-8-sig", errors="replace")
    lines = [
        (number, line)
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        raise InputError("empty labels file", where=path)
    header_line, header = lines[0]
    tsv = "\t" in header
    reader = csv.reader(
        io.StringIO("\n".join(line for _, line in lines)),
        delimiter="\t" if tsv else ",",
        quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL,
    )
    rows = list(reader)
    columns = [c.strip().lower() for c in rows[0]]
    body = list(zip((number for number, _ in lines[1:]), rows[1:], strict=True))
    label_col = _pick(columns, LABEL_COLUMNS)
    if label_col is None:
        raise InputError(
            f"labels file needs a 'label' or 'kind' column; it has {', '.join(columns)}",
            where=f"{path}:{header_line}",
        )
    if "uid" in columns:
        return [], _read_uids(path, columns, body, label_col), []
    host, start, end = (
        _pick(columns, HOST_COLUMNS),
        _pick(columns, START_COLUMNS),
        _pick(columns, END_COLUMNS),
    )
    if not (host and start and end):
        raise InputError(
            "labels file needs either a 'uid' column or host ('host'/'attacker_ip'/'src'), "
            f"'start' and 'end' columns; it has {', '.join(columns)}",
            where=f"{path}:{header_line}",
        )
    return _read_ranges(path, columns, body, host, start, end, label_col)


def _cells(path: str, columns: list[str], number: int, row: list[str]) -> dict[str, str]:
    if len(row) != len(columns):
        raise InputError(
            f"{len(row)} fields where the header has {len(columns)}", where=f"{path}:{number}"
        )
    return dict(zip(columns, (cell.strip() for cell in row), strict=True))


def _label_of(cells: dict[str, str], label_col: str) -> tuple[int, str]:
    text = cells[label_col]
    detailed_col = _pick(list(cells), DETAILED_COLUMNS)
    detail = cells[detailed_col] if detailed_col and cells[detailed_col] not in ("", "-") else text
    return label_class(text), detail


def _read_uids(path, columns, body, label_col) -> dict[str, tuple[int, str]]:
    uids: dict[str, tuple[int, str]] = {}
    for number, row in body:
        cells = _cells(path, columns, number, row)
        if cells["uid"]:
            uids.setdefault(cells["uid"], _label_of(cells, label_col))
    return uids


def _read_ranges(path, columns, body, host_col, start_col, end_col, label_col):
    peer_col = _pick(columns, PEER_COLUMNS)
    ranges: list[LabelRange] = []
    skipped: list[str] = []
    for number, row in body:
        cells = _cells(path, columns, number, row)
        where = f"{path}:{number}"
        try:
            start, end = _time(cells[start_col]), _time(cells[end_col])
        except ValueError:
            raise InputError(
                f"start/end not a time: {cells[start_col]!r}, {cells[end_col]!r}", where=where
            ) from None
        try:
            host = _network(cells[host_col])
        except ValueError:
            skipped.append(f"{where}: host {cells[host_col]!r} is not an address; row not used")
            continue
        peers: tuple[Network, ...] = ()
        if peer_col and cells[peer_col] not in ("", "-", "*"):
            try:
                peers = tuple(_network(p) for p in cells[peer_col].split("+") if p.strip())
            except ValueError:
                raise InputError(
                    f"{peer_col} is not a '+'-separated list of addresses or networks: "
                    f"{cells[peer_col]!r}",
                    where=where,
                ) from None
        label, detail = _label_of(cells, label_col)
        ranges.append(LabelRange(host, start, end, label, detail, peers))
    return ranges, {}, skipped
