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

from seqwatch.sidecar._groupsums import group_sums
from seqwatch.sidecar.records import LABEL_BACKGROUND, LABEL_MALICIOUS, LABEL_NONE, ConnChunk
from seqwatch.sidecar.schema import (
    CLOSED_STATES,
    CONN_STATES,
    FAILED_STATES,
    FEATURE_INDEX,
    LONG_TIMEOUT_PORTS,
    N_FEATURES,
    PROTO_CODE,
    PROTOCOLS,
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
_ICMP = PROTO_CODE["icmp"]
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
    delay, s0 = _delay_class(chunk, delays)
    # An S0 attempt's timer runs from the first SYN, whatever duration Zeek reports.
    base = np.where(s0, chunk.ts, chunk.ts + chunk.duration)
    return base + delay


_N_PROTOS = len(PROTOCOLS)
_N_STATES = len(CONN_STATES)
_LONG_PORT = np.zeros(65536, dtype=np.uint8)
_LONG_PORT[list(LONG_TIMEOUT_PORTS)] = 1


def _delay_table(delays: RemovalDelays) -> tuple[np.ndarray, np.ndarray]:
    """The design table as lookups indexed by (state, proto, service flags, long port).

    One gather per row replaces six masks and a select; the rows are ordered as the
    table so that the first matching class wins.
    """
    table = np.empty((_N_STATES, _N_PROTOS, 4, 2), dtype=np.float64)
    s0 = np.zeros(table.shape, dtype=bool)
    closed = {STATE_CODE[s] for s in CLOSED_STATES}
    for state in range(_N_STATES):
        for proto in range(_N_PROTOS):
            for service in range(4):
                for port in range(2):
                    tcp, udp = proto == _TCP, proto == _UDP
                    long_timeout = bool(service & SERVICE_LONG_TIMEOUT) or bool(port)
                    if tcp and state == _S0:
                        value = delays.tcp_attempt
                        s0[state, proto, service, port] = True
                    elif tcp and state in closed:
                        value = delays.tcp_close
                    elif tcp and long_timeout:
                        value = delays.long_inactivity
                    elif tcp:
                        value = delays.tcp_inactivity
                    elif udp and service & SERVICE_DNS:
                        value = delays.dns
                    elif udp:
                        value = delays.udp_inactivity
                    else:
                        value = delays.icmp_inactivity
                    table[state, proto, service, port] = value
    return table.ravel(), s0.ravel()


_DELAY_TABLES: dict[RemovalDelays, tuple[np.ndarray, np.ndarray]] = {}


def _delay_class(chunk: ConnChunk, delays: RemovalDelays) -> tuple[np.ndarray, np.ndarray]:
    """(removal delay, is a TCP S0 attempt) of each connection."""
    state, proto, port = chunk.state, chunk.proto, chunk.resp_p
    n = len(state)
    in_range = n == 0 or (
        int(state.max()) < _N_STATES
        and int(proto.max()) < _N_PROTOS
        and int(port.min()) >= 0
        and int(port.max()) < len(_LONG_PORT)
    )
    if not in_range:
        return _delay_select(chunk, delays)
    tables = _DELAY_TABLES.get(delays)
    if tables is None:
        tables = _DELAY_TABLES[delays] = _delay_table(delays)
    table, s0 = tables
    # Flat index ((state * P + proto) * 4 + service) * 2 + long_port, in int32.
    index = state.astype(np.int32) * (_N_PROTOS * 8)
    index += proto.astype(np.int32) * 8
    index += (chunk.service & 3).astype(np.int32) * 2
    index += np.take(_LONG_PORT, port)
    # np.take: fancy indexing with int32 indices first casts them to intp (slower).
    return np.take(table, index), np.take(s0, index)


def _delay_select(chunk: ConnChunk, delays: RemovalDelays) -> tuple[np.ndarray, np.ndarray]:
    """The same table with masks: for codes outside the schema's (hand-built chunks)."""
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
    return delay, s0


def bin_of(times: np.ndarray, interval: float) -> np.ndarray:
    """Interval index of each time: bins are aligned to multiples of Δ since the epoch."""
    return np.floor(np.asarray(times, dtype=np.float64) / interval).astype(np.int64)


# Per-connection columns summed into features: (column, out feature, in feature or None).
_COLS = (
    ("orig_ip_bytes", "out_bytes", "in_bytes"),
    ("resp_ip_bytes", "out_resp_bytes", None),
    ("orig_pkts", "out_pkts", None),
    ("resp_pkts", "out_resp_pkts", None),
    ("duration", "out_duration", None),
)
_OUT_CONNS = FEATURE_INDEX["out_conns"]
_OUT, _IN = 0, 1  # group_sums sides: the connection's originator group, its responder group


def _class_table(codes) -> np.ndarray:
    """A 256-entry lookup: 1.0 for the given codes (group_sums adds it per row)."""
    table = np.zeros(256, dtype=np.float64)
    table[np.asarray(codes, dtype=np.intp)] = 1.0
    return table


# (feature, side, code column, lookup): the connection classes counted per group.
_CLASS_TERMS = (
    ("out_failed", _OUT, "state", _class_table(_FAILED_CODES)),
    ("in_failed", _IN, "state", _class_table(_FAILED_CODES)),
    ("out_rejected", _OUT, "state", _class_table([_REJ])),
    ("out_udp", _OUT, "proto", _class_table([_UDP])),
    ("out_icmp", _OUT, "proto", _class_table([_ICMP])),
)


def _sum_terms(rows: dict[str, np.ndarray]) -> list[tuple]:
    """What group_sums adds per connection: counts, the _COLS sums and the class counts."""
    terms: list[tuple] = [
        (FEATURE_INDEX["out_conns"], _OUT, None),
        (FEATURE_INDEX["in_conns"], _IN, None),
    ]
    for column, out_name, in_name in _COLS:
        weights = np.ascontiguousarray(rows[column], dtype=np.float64)
        terms.append((FEATURE_INDEX[out_name], _OUT, weights))
        if in_name:
            terms.append((FEATURE_INDEX[in_name], _IN, weights))
    for name, side, column, table in _CLASS_TERMS:
        codes = rows[column]
        if codes.dtype == np.uint8:
            source = (np.ascontiguousarray(codes), table)
        else:  # hand-built chunks may carry other integer types, even codes past 255
            inside = (codes >= 0) & (codes < 256)
            source = np.where(inside, table[np.where(inside, codes, 0)], 0.0)
        terms.append((FEATURE_INDEX[name], side, source))
    return terms


class _Pending:
    """The connections of one chunk whose interval has not been emitted yet, in bin order.

    A conn.log is written in removal order, so a chunk's rows usually come sorted by bin
    already; otherwise they are sorted once, stably, so that the rows of one interval keep
    their order (and sums are taken in the same order). Emitting an interval then takes a
    prefix of views, without copying. The few rows with long removal delays (an hour for
    ssh) do not drag the chunk along: once they are at most half of the arrays they view,
    they are copied into their own.
    """

    __slots__ = ("_viewed", "bins", "cols")

    def __init__(self, bins: np.ndarray, cols: dict[str, np.ndarray]) -> None:
        if len(bins) > 1 and not (bins[1:] >= bins[:-1]).all():
            order = np.argsort(bins, kind="stable")
            bins = bins[order]
            cols = {name: column[order] for name, column in cols.items()}
        self.bins = bins  # int64 bin of each pending row, ascending
        self.cols = cols
        self._viewed = len(bins)  # rows of the arrays that cols view

    def __len__(self) -> int:
        return int(self.bins.shape[0])

    def take_through(self, last_bin: int) -> dict[str, np.ndarray] | None:
        """Remove and return the rows of intervals <= ``last_bin`` (None if there are none)."""
        bins = self.bins
        due = int(np.searchsorted(bins, last_bin, side="right"))
        if due == 0:
            return None
        head = {name: column[:due] for name, column in self.cols.items()}
        head["bin"] = bins[:due]
        self.bins = bins[due:]
        self.cols = {name: column[due:] for name, column in self.cols.items()}
        if 0 < 2 * len(self.bins) <= self._viewed:
            self.bins = self.bins.copy()
            self.cols = {name: column.copy() for name, column in self.cols.items()}
            self._viewed = len(self.bins)
        return head


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The rows of several pending pieces as one set of columns (labels filled in)."""
    if len(parts) == 1:
        return parts[0]
    labelled = any("label" in p for p in parts)
    out = {}
    for name in parts[0]:
        if name not in ("label", "detail"):
            out[name] = np.concatenate([p[name] for p in parts])
    if labelled:
        out["label"] = np.concatenate(
            [p.get("label", np.full(len(p["bin"]), LABEL_NONE, np.int8)) for p in parts]
        )
        out["detail"] = np.concatenate(
            [p.get("detail", np.full(len(p["bin"]), "", object)) for p in parts]
        )
    return out


class FeatureAggregator:
    """Streams :class:`ConnChunk` batches into :class:`IntervalFeatures`, in interval order.

    Memory holds the connections of intervals not yet emitted (about ``lateness + Δ``
    seconds of traffic, plus connections with long removal delays) and an id per
    address. The address table is compacted to the addresses of pending connections
    once it holds more than ``address_table_limit`` entries (and twice what the last
    compaction kept), so that a long-running tail under a spoofed-source flood stays
    bounded. The aggregator keeps references to the arrays of chunks
    whose rows are pending instead of copying them: chunks are not to be modified
    after they were added (the readers never do).
    """

    def __init__(
        self,
        config: FeatureConfig | None = None,
        lateness: float = DEFAULT_LATENESS,
        address_table_limit: int = 1 << 16,
    ):
        if lateness < 0:
            raise ValueError(f"lateness must be >= 0 seconds, got {lateness}")
        if address_table_limit < 1:
            raise ValueError(f"address_table_limit must be >= 1, got {address_table_limit}")
        self.config = config or FeatureConfig()
        self.lateness = float(lateness)
        self.address_table_limit = address_table_limit
        self._compact_at = address_table_limit
        self._ids: dict[str, int] = {}
        # Ids by the chunks' address keys (ConnChunk.address_keys), -1 where not known yet:
        # a reader's chunks share their keys, so each address is looked up in _ids once.
        self._key_space: object | None = None
        self._id_of_key = np.empty(0, dtype=np.int64)
        self._addresses: list[str] = []
        self._address_array = np.empty(0, dtype=object)  # _addresses, for fast gathers
        self._scratch = _Scratch()
        self._pending: list[_Pending] = []
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
        piece = self._piece(chunk)
        if self._next_bin is not None:
            late = piece.bins < self._next_bin
            n_late = int(np.count_nonzero(late))
            if n_late:
                piece.bins[late] = self._next_bin
                self.late += n_late
                self._late_pending[self._next_bin] = (
                    self._late_pending.get(self._next_bin, 0) + n_late
                )
        self._pending.append(piece)
        self._clock = max(self._clock, float(np.max(chunk.ts)))
        # Interval b is complete once the clock passes (b+1)·Δ + lateness.
        last_complete = int(np.floor((self._clock - self.lateness) / self.config.interval)) - 1
        return self._emit_through(last_complete)

    def flush(self) -> list[IntervalFeatures]:
        """Emit every interval still open (end of input)."""
        if not self._pending:
            return []
        last = max(int(p.bins.max()) for p in self._pending if len(p))
        return self._emit_through(last)

    # -- internals --------------------------------------------------------------------
    def _chunk_ids(self, chunk: ConnChunk) -> np.ndarray:
        """Global id of each entry of the chunk's address table."""
        keys, space = chunk.address_keys, chunk.address_space
        if keys is None or space is None:
            return self._global_ids(chunk.addresses)
        if space is not self._key_space:
            self._key_space = space
            self._id_of_key = np.full(1024, -1, dtype=np.int64)
        table = self._id_of_key
        if len(keys) and int(keys.max()) >= len(table):
            grown = np.full(max(2 * len(table), int(keys.max()) + 1), -1, dtype=np.int64)
            grown[: len(table)] = table
            self._id_of_key = table = grown
        gids = table[keys]
        missing = np.flatnonzero(gids < 0)
        if missing.size:
            addresses = chunk.addresses
            found = self._global_ids([addresses[i] for i in missing.tolist()])
            table[keys[missing]] = found
            gids[missing] = found
        return gids

    def _global_ids(self, addresses) -> np.ndarray:
        ids = self._ids
        known = len(ids)
        if ids.keys().isdisjoint(addresses):
            # All new, as in a flood of fresh sources: number them in bulk at C speed. A
            # chunk's table names each address once; should one not, take the slow path.
            ids.update(zip(addresses, range(known, known + len(addresses)), strict=True))
            if len(ids) == known + len(addresses):
                self._remember(list(addresses))
                return np.arange(known, len(ids), dtype=np.int64)
            for addr in addresses:
                ids.pop(addr, None)
        setdefault = ids.setdefault
        # setdefault evaluates len(ids) before inserting: a new address gets the next id.
        gids = np.array([setdefault(addr, len(ids)) for addr in addresses], dtype=np.int64)
        if len(ids) > known:
            self._remember([addresses[i] for i in np.flatnonzero(gids >= known).tolist()])
        return gids

    def _remember(self, new: list[str]) -> None:
        """Append the texts of newly numbered addresses (in id order)."""
        known = len(self._addresses)
        self._addresses += new
        array = self._address_array
        if len(array) < len(self._addresses):
            # Grow geometrically: host names are gathered from it per interval.
            grown = np.empty(max(2 * len(array), len(self._addresses)), dtype=object)
            grown[:known] = array[:known]
            self._address_array = array = grown
        array[known : len(self._addresses)] = new

    def _piece(self, chunk: ConnChunk) -> _Pending:
        gids = self._chunk_ids(chunk)
        cols = {
            "orig": np.take(gids, chunk.orig_idx),  # int32 indices: take, not gids[...]
            "resp": np.take(gids, chunk.resp_idx),
            # A (port, proto) pair as one integer for the distinct-port count.
            "port": chunk.resp_p.astype(np.int64) * 4 + chunk.proto,
            "state": chunk.state,
            "proto": chunk.proto,
        }
        for name, _, _ in _COLS:
            cols[name] = getattr(chunk, name)
        if chunk.label is not None:
            cols["label"] = chunk.label.astype(np.int8, copy=False)
            detail = chunk.detailed_label
            cols["detail"] = np.full(len(chunk), "", object) if detail is None else detail
        bins = bin_of(estimate_removal(chunk, self.config.delays), self.config.interval)
        return _Pending(bins, cols)

    def _emit_through(self, last_bin: int) -> list[IntervalFeatures]:
        done = []
        for piece in self._pending:
            head = piece.take_through(last_bin)
            if head is not None:
                done.append(head)
        if not done:
            return []
        self._pending = [p for p in self._pending if len(p)]
        self._next_bin = max(self._next_bin or last_bin + 1, last_bin + 1)
        out = self._aggregate(_concat(done))
        self.intervals_emitted += len(out)
        if len(self._addresses) > self._compact_at:
            self._compact_addresses()
        return out

    def _compact_addresses(self) -> None:
        """Keep only the addresses that pending connections refer to, renumbered densely.

        Emitted intervals carry address text, not ids, so ids of addresses with no pending
        connection are free to go.
        """
        pieces = [p for p in self._pending if p.cols]
        used = _distinct(
            np.concatenate(
                [np.empty(0, np.int64)]
                + [p.cols[side] for p in pieces for side in ("orig", "resp")]
            )
        )
        renumber = np.full(len(self._addresses), -1, dtype=np.int64)
        renumber[used] = np.arange(len(used))
        for p in pieces:
            for side in ("orig", "resp"):
                p.cols[side] = renumber[p.cols[side]]
        kept = self._address_array[used]
        self._addresses = kept.tolist()
        self._ids = {addr: i for i, addr in enumerate(self._addresses)}
        self._key_space = None  # the ids it cached are renumbered
        self._address_array = kept
        self._compact_at = max(self.address_table_limit, 2 * len(used))

    def _local_hosts(self, orig: np.ndarray, resp: np.ndarray) -> tuple[np.ndarray, ...]:
        """Dense local ids (in global id order) of the hosts in these rows, and the hosts."""
        n_known = len(self._addresses)
        if n_known <= _DENSE_FACTOR * len(orig) + _DENSE_MIN_SLOTS:
            # Mark the hosts in a table over every known id: linear, no sort.
            present = self._scratch.marks(n_known)
            present[orig] = True
            present[resp] = True
            hosts = np.flatnonzero(present)
            present[hosts] = False
        else:
            hosts = _distinct(np.concatenate([orig, resp]))
        slot = self._scratch.ids(n_known, "hosts")
        # Scatter then gather through a table indexed by global id: linear, no search.
        slot[hosts] = np.arange(len(hosts))
        return slot[orig], slot[resp], hosts

    def _aggregate(self, rows: dict[str, np.ndarray]) -> list[IntervalFeatures]:
        cap = self.config.distinct_cap
        bins = rows["bin"]
        b0 = int(bins.min())
        rel = bins - b0
        orig, resp, hosts = self._local_hosts(rows["orig"], rows["resp"])
        # (bin, local host) keys: the host in the low ``shift`` bits.
        shift = max(int(len(hosts) - 1).bit_length(), 1)
        host_bits = (1 << shift) - 1
        grouping = _Groups(rel, orig, resp, shift, self._scratch)
        out_g, in_g, keys = grouping.out_g, grouping.in_g, grouping.keys
        groups = len(keys)
        values = np.zeros((groups, N_FEATURES), dtype=np.float64)

        def put(name: str, column: np.ndarray) -> None:
            values[:, FEATURE_INDEX[name]] = column

        def capped_count(group_ids: np.ndarray) -> np.ndarray:
            return np.minimum(np.bincount(group_ids, minlength=groups), cap)

        # The distinct (originator group, responder) pairs are the distinct (bin,
        # originator, responder) triples: one sort counts the peers of both sides.
        pairs = _distinct((out_g << shift) | resp)
        pair_group = pairs >> shift
        put("out_hosts", capped_count(pair_group))
        pair_bin = keys[pair_group] & ~host_bits
        put("in_hosts", capped_count(grouping.lookup(pair_bin | (pairs & host_bits))))
        ports = _distinct((out_g << 32) | rows["port"])
        put("out_ports", capped_count(ports >> 32))
        group_sums(values, out_g, in_g, _sum_terms(rows))

        labels = detailed = None
        if "label" in rows:
            labels, detailed = self._host_labels(rows, out_g, in_g, groups)

        group_bin = (keys >> shift) + b0
        group_host = hosts[keys & host_bits]
        bounds = np.flatnonzero(np.diff(group_bin)) + 1
        starts = np.concatenate([[0], bounds]).tolist()
        ends = np.concatenate([bounds, [groups]]).tolist()
        names = self._address_array
        result = []
        for s, e in zip(starts, ends, strict=True):
            b = int(group_bin[s])
            result.append(
                IntervalFeatures(
                    bin=b,
                    interval=self.config.interval,
                    hosts=names[group_host[s:e]].tolist(),
                    values=values[s:e],
                    late=self._late_pending.pop(b, 0),
                    connections=int(values[s:e, _OUT_CONNS].sum()),  # each counts once
                    labels=None if labels is None else labels[s:e],
                    detailed=None if detailed is None else detailed[s:e],
                )
            )
        return result

    @staticmethod
    def _host_labels(rows: dict, out_g, in_g, groups) -> tuple[np.ndarray, np.ndarray]:
        label = rows["label"]
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
            detailed[first_groups] = rows["detail"][mal_rows[first_idx]]
        return labels.astype(np.int8), detailed


_DENSE_FACTOR = 8
"""Dense tables (marks over ids, or over (bin, host) keys) are used while they hold at
most this many slots per row (plus _DENSE_MIN_SLOTS); beyond that, sorting is cheaper."""
_DENSE_MIN_SLOTS = 4096


class _Scratch:
    """Tables reused by every aggregation, grown as needed and never shrunk.

    Fresh multi-megabyte arrays per batch would cost page faults (the allocator hands
    large blocks back to the system) that exceed the work done in them. ``marks`` must
    be all False between uses: whoever sets marks clears them again.
    """

    def __init__(self) -> None:
        self._marks = np.zeros(0, dtype=bool)
        self._ids: dict[str, np.ndarray] = {}

    def marks(self, n: int) -> np.ndarray:
        if len(self._marks) < n:
            self._marks = np.zeros(max(2 * len(self._marks), n), dtype=bool)
        return self._marks[:n]

    def ids(self, n: int, name: str) -> np.ndarray:
        """An int64 table of at least ``n`` entries, contents undefined."""
        table = self._ids.get(name)
        if table is None or len(table) < n:
            size = n if table is None else max(2 * len(table), n)
            table = self._ids[name] = np.empty(size, dtype=np.int64)
        return table


class _Groups:
    """Ids of the (bin, host) groups of each row's originator (``out_g``) and responder.

    ``keys`` (``bin << shift | local host``, ascending) names each group and the ids index
    into it. Both sides share one id space because a host's outbound and inbound
    features form one vector.
    """

    def __init__(
        self, rel: np.ndarray, orig: np.ndarray, resp: np.ndarray, shift: int, scratch: _Scratch
    ) -> None:
        base = rel << shift
        out_key = base | orig
        in_key = base | resp
        slots = (int(rel.max()) + 1) << shift
        self._number: np.ndarray | None = None
        if slots <= _DENSE_FACTOR * len(rel) + _DENSE_MIN_SLOTS:
            # Few bins: mark the keys present in a table and number them in order -- two
            # scatters and a scan instead of a sort of 2n keys.
            present = scratch.marks(slots)
            present[out_key] = True
            present[in_key] = True
            self.keys = np.flatnonzero(present)
            present[self.keys] = False
            number = self._number = scratch.ids(slots, "groups")
            number[self.keys] = np.arange(len(self.keys))
            self.out_g = number[out_key]
            self.in_g = number[in_key]
        else:
            self.keys, inverse = _unique_inverse(np.concatenate([out_key, in_key]))
            n = len(rel)
            self.out_g, self.in_g = inverse[:n], inverse[n:]

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Group ids of keys that name existing groups."""
        if self._number is not None:
            return self._number[keys]
        return np.searchsorted(self.keys, keys)


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


def _unique_inverse(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)`` through one (SIMD) argsort."""
    order = np.argsort(values)
    ordered = values[order]
    new = np.empty(len(ordered), dtype=bool)
    new[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    inverse = np.empty(len(values), dtype=np.int64)
    inverse[order] = np.cumsum(new) - 1
    return ordered[new], inverse


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
