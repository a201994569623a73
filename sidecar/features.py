"""Feature schema v1: connections -> per-host, per-interval feature vectors.

The one implementation of the feature semantics (DESIGN.md, "Features, schema v1"), used
by training, replay, the file tail and the tests; the Zeek script implements the same
semantics for the live WebSocket path and a parity test holds them together.

Each connection is binned by its *estimated removal time* (when Zeek would have written
it to conn.log), contributes to its originator's ``out_*`` features and its responder's
``in_*`` features, and distinct counts are clipped at the cap C. Everything is vectorized
with numpy over whole chunks: there is no per-connection Python loop.

Streaming: :class:`FeatureAggregator` accepts chunks in arrival order and emits an
interval once the input's clock (the largest connection start seen) has passed the
interval's end plus ``lateness`` -- the offline analogue of the Zeek script's
"network time passed (b+1)·Δ + slack". A connection whose interval has already been
emitted is added to the earliest interval not yet emitted and counted as late, exactly
as the Zeek script does, so both sides stay comparable.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from seqwatch.sidecar.records import LABEL_BACKGROUND, LABEL_MALICIOUS, LABEL_NONE, ConnChunk
from seqwatch.sidecar.schema import (
    CLOSED_STATES,
    FAILED_STATES,
    FEATURE_INDEX,
    LONG_TIMEOUT_PORTS,
    N_FEATURES,
    PROTO_CODE,
    SERVICE_DNS,
    SERVICE_LONG_TIMEOUT,
    STATE_CODE,
    FeatureConfig,
    RemovalDelays,
)

DEFAULT_LATENESS = 60.0
"""Seconds the offline clock must pass an interval's end before the interval is emitted.

Conn.log is written in removal order and every estimate is at least its start time, so
a minute absorbs the small differences between real and estimated removal; memory holds
about ``lateness + Δ`` seconds of connections.
"""

_TCP = PROTO_CODE["tcp"]
_UDP = PROTO_CODE["udp"]
_S0 = STATE_CODE["S0"]
_REJ = STATE_CODE["REJ"]
_CLOSED_CODES = np.array(sorted(STATE_CODE[s] for s in CLOSED_STATES), dtype=np.uint8)
_FAILED_CODES = np.array(sorted(STATE_CODE[s] for s in FAILED_STATES), dtype=np.uint8)
_LONG_PORTS = np.array(LONG_TIMEOUT_PORTS, dtype=np.int32)

# Row label classes, aggregated per (host, interval).
HOST_POSITIVE = 1
HOST_NEGATIVE = 0
HOST_EXCLUDED = -1


@dataclass
class IntervalFeatures:
    """The feature vectors of every host active in one interval.

    ``labels`` (when the input was labelled) is per host: 1 when any connection the host
    originated in the interval is malicious, 0 when it is not but some connection it took
    part in carries a benign/malicious label, -1 when all of its connections are
    Background/Unknown or unlabelled (kept out of both classes).
    """

    bin: int
    interval: float
    hosts: list[str]
    values: np.ndarray  # float64 [len(hosts), N_FEATURES], raw
    late: int = 0
    overflow: int = 0
    node: str = ""
    connections: int = 0
    labels: np.ndarray | None = None  # int8 [len(hosts)]
    detailed: np.ndarray | None = None  # object [len(hosts)]: detailed label of positives

    @property
    def start(self) -> float:
        """Interval start, seconds since the epoch."""
        return self.bin * self.interval

    def __len__(self) -> int:
        return len(self.hosts)

    def host_values(self, host: str) -> np.ndarray:
        """The vector of one host (tests and debugging)."""
        return self.values[self.hosts.index(host)]


def estimate_removal(chunk: ConnChunk, delays: RemovalDelays) -> np.ndarray:
    """Estimated time at which Zeek removed each connection (the DESIGN.md table)."""
    tcp = chunk.proto == _TCP
    udp = chunk.proto == _UDP
    s0 = tcp & (chunk.state == _S0)
    closed = tcp & np.isin(chunk.state, _CLOSED_CODES)
    long_timeout = ((chunk.service & SERVICE_LONG_TIMEOUT) != 0) | np.isin(
        chunk.resp_p, _LONG_PORTS
    )
    dns = (chunk.service & SERVICE_DNS) != 0
    # Order matters: the first matching class wins, as in the table.
    delay = np.select(
        [s0, closed, tcp & long_timeout, tcp, udp & dns, udp],
        [
            delays.tcp_attempt,
            delays.tcp_close,
            delays.long_inactivity,
            delays.tcp_inactivity,
            delays.dns,
            delays.udp_inactivity,
        ],
        default=delays.icmp_inactivity,
    )
    # An S0 attempt's timer runs from the first SYN, whatever duration Zeek reports.
    base = np.where(s0, chunk.ts, chunk.ts + chunk.duration)
    return base + delay


def bin_of(times: np.ndarray, interval: float) -> np.ndarray:
    """Interval index of each time: bins are aligned to multiples of Δ since the epoch."""
    return np.floor(np.asarray(times, dtype=np.float64) / interval).astype(np.int64)


class _Rows:
    """Pending connections, sorted by interval, in the columns aggregation needs.

    Sorting once per chunk makes "the rows of intervals <= b" a prefix, so emitting an
    interval slices views instead of copying every pending row through boolean masks.
    """

    __slots__ = ("bin", "cols", "detail", "label", "orig", "port", "resp")

    def __init__(self, bin_, orig, resp, port, cols, label, detail):
        self.bin = bin_
        self.orig = orig
        self.resp = resp
        self.port = port
        self.cols = cols  # float64 [9, n]: see _COLS (one row per column: cheap slicing)
        self.label = label
        self.detail = detail

    def __len__(self) -> int:
        return int(self.bin.shape[0])

    def sorted_by_bin(self) -> _Rows:
        order = np.argsort(self.bin, kind="stable")
        return self._take(order)

    def split_after(self, last_bin: int) -> tuple[_Rows, _Rows]:
        """(rows of intervals <= last_bin, the rest), as views."""
        cut = int(np.searchsorted(self.bin, last_bin, side="right"))
        return self._take(slice(0, cut)), self._take(slice(cut, None))

    def _take(self, index) -> _Rows:
        return _Rows(
            self.bin[index],
            self.orig[index],
            self.resp[index],
            self.port[index],
            self.cols[:, index],
            None if self.label is None else self.label[index],
            None if self.detail is None else self.detail[index],
        )

    @staticmethod
    def concat(parts: list[_Rows]) -> _Rows:
        if len(parts) == 1:
            return parts[0]
        labelled = any(p.label is not None for p in parts)

        def labels(p: _Rows) -> np.ndarray:
            return p.label if p.label is not None else np.full(len(p), LABEL_NONE, np.int8)

        def details(p: _Rows) -> np.ndarray:
            return p.detail if p.detail is not None else np.full(len(p), "", object)

        return _Rows(
            np.concatenate([p.bin for p in parts]),
            np.concatenate([p.orig for p in parts]),
            np.concatenate([p.resp for p in parts]),
            np.concatenate([p.port for p in parts]),
            np.concatenate([p.cols for p in parts], axis=1),
            np.concatenate([labels(p) for p in parts]) if labelled else None,
            np.concatenate([details(p) for p in parts]) if labelled else None,
        )


# Per-connection columns summed into features: (column, out feature, in feature or None).
_COLS = (
    ("orig_ip_bytes", "out_bytes", "in_bytes"),
    ("resp_ip_bytes", "out_resp_bytes", None),
    ("orig_pkts", "out_pkts", None),
    ("resp_pkts", "out_resp_pkts", None),
    ("duration", "out_duration", None),
    ("failed", "out_failed", "in_failed"),
    ("rejected", "out_rejected", None),
    ("udp", "out_udp", None),
    ("icmp", "out_icmp", None),
)


class FeatureAggregator:
    """Streams :class:`ConnChunk` batches into :class:`IntervalFeatures`, in interval order.

    Memory holds the connections of intervals not yet emitted (about ``lateness + Δ``
    seconds of traffic) and one id per distinct address seen.
    """

    def __init__(self, config: FeatureConfig | None = None, lateness: float = DEFAULT_LATENESS):
        if lateness < 0:
            raise ValueError(f"lateness must be >= 0 seconds, got {lateness}")
        self.config = config or FeatureConfig()
        self.lateness = float(lateness)
        self._ids: dict[str, int] = {}
        self._addresses: list[str] = []
        self._pending: list[_Rows] = []
        self._next_bin: int | None = None  # earliest bin not yet emitted
        self._clock = -np.inf
        self.late = 0
        """Connections whose own interval had been emitted already (moved forward)."""
        self.rows = 0
        self.intervals_emitted = 0
        self._late_pending: dict[int, int] = {}

    # -- public -----------------------------------------------------------------------
    def add(self, chunk: ConnChunk) -> list[IntervalFeatures]:
        """Take a chunk; return the intervals that are complete now (ascending)."""
        if len(chunk) == 0:
            return []
        self.rows += len(chunk)
        rows = self._rows(chunk)
        if self._next_bin is not None:
            late = rows.bin < self._next_bin
            n_late = int(late.sum())
            if n_late:
                rows.bin[late] = self._next_bin
                self.late += n_late
                self._late_pending[self._next_bin] = (
                    self._late_pending.get(self._next_bin, 0) + n_late
                )
        self._pending.append(rows)
        self._clock = max(self._clock, float(np.max(chunk.ts)))
        # Interval b is complete once the clock passes (b+1)·Δ + lateness.
        last_complete = int(np.floor((self._clock - self.lateness) / self.config.interval)) - 1
        return self._emit_through(last_complete)

    def flush(self) -> list[IntervalFeatures]:
        """Emit every interval still open (end of input)."""
        if not self._pending:
            return []
        last = max(int(p.bin.max()) for p in self._pending if len(p))
        return self._emit_through(last)

    @property
    def addresses_known(self) -> int:
        return len(self._addresses)

    # -- internals --------------------------------------------------------------------
    def _global_ids(self, addresses) -> np.ndarray:
        ids = self._ids
        out = np.empty(len(addresses), dtype=np.int64)
        for i, addr in enumerate(addresses):
            gid = ids.get(addr)
            if gid is None:
                gid = ids[addr] = len(self._addresses)
                self._addresses.append(addr)
            out[i] = gid
        return out

    def _rows(self, chunk: ConnChunk) -> _Rows:
        gids = self._global_ids(chunk.addresses)
        est = estimate_removal(chunk, self.config.delays)
        failed = np.isin(chunk.state, _FAILED_CODES)
        cols = np.stack(
            [
                chunk.orig_ip_bytes,
                chunk.resp_ip_bytes,
                chunk.orig_pkts,
                chunk.resp_pkts,
                chunk.duration,
                failed,
                chunk.state == _REJ,
                chunk.proto == _UDP,
                chunk.proto == PROTO_CODE["icmp"],
            ]
        ).astype(np.float64, copy=False)
        # A (port, proto) pair as one integer for the distinct-port count.
        port = chunk.resp_p.astype(np.int64) * 4 + chunk.proto.astype(np.int64)
        return _Rows(
            bin_of(est, self.config.interval),
            gids[chunk.orig_idx],
            gids[chunk.resp_idx],
            port,
            cols,
            None if chunk.label is None else chunk.label.astype(np.int8),
            chunk.detailed_label,
        ).sorted_by_bin()

    def _emit_through(self, last_bin: int) -> list[IntervalFeatures]:
        done, rest = [], []
        for piece in self._pending:
            head, tail = piece.split_after(last_bin)
            if len(head):
                done.append(head)
            if len(tail):
                rest.append(tail)
        if not done:
            return []
        self._pending = rest
        self._next_bin = max(self._next_bin or last_bin + 1, last_bin + 1)
        out = self._aggregate(_Rows.concat(done))
        self.intervals_emitted += len(out)
        return out

    def _aggregate(self, rows: _Rows) -> list[IntervalFeatures]:
        cap = self.config.distinct_cap
        b0 = int(rows.bin.min())
        rel = (rows.bin - b0).astype(np.int64)
        # (bin, host) as one integer key; host ids stay below 2**32.
        out_key = (rel << 32) | rows.orig
        in_key = (rel << 32) | rows.resp
        keys, inv = np.unique(np.concatenate([out_key, in_key]), return_inverse=True)
        n = len(rows)
        out_g, in_g = inv[:n], inv[n:]
        groups = len(keys)
        values = np.zeros((groups, N_FEATURES), dtype=np.float64)

        def count_distinct(group: np.ndarray, other: np.ndarray) -> np.ndarray:
            pairs = _distinct((group.astype(np.int64) << 32) | other)
            return np.minimum(np.bincount(pairs >> 32, minlength=groups), cap)

        values[:, FEATURE_INDEX["out_conns"]] = np.bincount(out_g, minlength=groups)
        values[:, FEATURE_INDEX["in_conns"]] = np.bincount(in_g, minlength=groups)
        values[:, FEATURE_INDEX["out_hosts"]] = count_distinct(out_g, rows.resp)
        values[:, FEATURE_INDEX["out_ports"]] = count_distinct(out_g, rows.port)
        values[:, FEATURE_INDEX["in_hosts"]] = count_distinct(in_g, rows.orig)
        for j, (_, out_name, in_name) in enumerate(_COLS):
            col = rows.cols[j]
            values[:, FEATURE_INDEX[out_name]] = np.bincount(out_g, weights=col, minlength=groups)
            if in_name:
                values[:, FEATURE_INDEX[in_name]] = np.bincount(in_g, weights=col, minlength=groups)

        labels = detailed = None
        if rows.label is not None:
            labels, detailed = self._host_labels(rows, out_g, in_g, groups)

        group_bin = (keys >> 32) + b0
        group_host = keys & 0xFFFFFFFF
        conns_per_bin = np.bincount(rows.bin - b0)
        bounds = np.flatnonzero(np.diff(group_bin)) + 1
        starts = np.concatenate([[0], bounds])
        ends = np.concatenate([bounds, [groups]])
        result = []
        for s, e in zip(starts, ends, strict=True):
            b = int(group_bin[s])
            result.append(
                IntervalFeatures(
                    bin=b,
                    interval=self.config.interval,
                    hosts=[self._addresses[h] for h in group_host[s:e]],
                    values=values[s:e],
                    late=self._late_pending.pop(b, 0),
                    connections=int(conns_per_bin[b - b0]),
                    labels=None if labels is None else labels[s:e],
                    detailed=None if detailed is None else detailed[s:e],
                )
            )
        return result

    @staticmethod
    def _host_labels(rows: _Rows, out_g, in_g, groups) -> tuple[np.ndarray, np.ndarray]:
        label = rows.label
        malicious = label == LABEL_MALICIOUS
        known = (label != LABEL_NONE) & (label != LABEL_BACKGROUND)
        positive = np.bincount(out_g, weights=malicious, minlength=groups) > 0
        involved = (np.bincount(out_g, weights=known, minlength=groups) > 0) | (
            np.bincount(in_g, weights=known, minlength=groups) > 0
        )
        labels = np.where(positive, HOST_POSITIVE, np.where(involved, HOST_NEGATIVE, HOST_EXCLUDED))
        detailed = np.full(groups, "", dtype=object)
        mal_rows = np.flatnonzero(malicious)
        if len(mal_rows):
            first_groups, first_idx = np.unique(out_g[mal_rows], return_index=True)
            detailed[first_groups] = rows.detail[mal_rows[first_idx]]
        return labels.astype(np.int8), detailed


def _distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values. numpy's hash-based ``np.unique`` is ~50x slower than a sort
    on a million int64 keys (numpy 2.4), and this is the featurizer's hot spot."""
    if len(values) == 0:
        return values
    ordered = np.sort(values)
    keep = np.empty(len(ordered), dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def featurize(
    chunks: Iterable[ConnChunk],
    config: FeatureConfig | None = None,
    lateness: float = DEFAULT_LATENESS,
) -> Iterator[IntervalFeatures]:
    """Yield the intervals of a stream of chunks in ascending order (flushes at the end)."""
    aggregator = FeatureAggregator(config, lateness)
    for chunk in chunks:
        yield from aggregator.add(chunk)
    yield from aggregator.flush()
