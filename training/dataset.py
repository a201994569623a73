"""Connection archives -> labelled sequence windows, in bounded memory.

The same path the sidecar runs, offline: archives (+ optional label files) are read in
chunks by :func:`seqwatch.sidecar.archives.read_connections`, binned into per-host
intervals by :func:`seqwatch.sidecar.features.featurize` and turned into windows of T+1
intervals by :func:`seqwatch.sidecar.windows.iter_windows`. Only the windows are kept,
never the connection rows, so memory grows with the number of (host, interval) windows.

Each DATA argument is one capture (a file or a rotated tree) and its own stream: captures
of different days or sites must not be merged into one timeline. Its *source tag* (the
capture's folder name for ``conn.log``-like files, else the file name) travels with every
window so results can be reported per capture.

Ground truth per window comes from :class:`~seqwatch.sidecar.features.IntervalFeatures`'s
``labels``: 1 when the host originated a malicious connection in the window's last
interval, 0 when it took part in labelled traffic but originated nothing malicious, -1
when everything it did was Background/Unknown or unlabelled.

"Normal" training windows (:meth:`WindowSet.normal_mask`) are, where a capture carries
labels, the windows labelled 0; optionally also without the windows of hosts that were
the *target* of a malicious connection within the window (a scanned server's window is
labelled 0 -- it originated nothing malicious -- but is not normal traffic). Captures
without labels contribute all their windows, and the log says so.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from seqwatch.sidecar.features import (
    DEFAULT_LATENESS,
    HOST_EXCLUDED,
    HOST_NEGATIVE,
    HOST_POSITIVE,
    bin_of,
    estimate_removal,
    featurize,
)
from seqwatch.sidecar.records import LABEL_MALICIOUS, ConnChunk
from seqwatch.sidecar.schema import DEFAULT_WINDOW, N_FEATURES, FeatureConfig
from seqwatch.sidecar.zeeklog import DEFAULT_CHUNK_ROWS

log = logging.getLogger(__name__)


@dataclass
class WindowSet:
    """Windows of one or more captures, with per-window ground truth and provenance."""

    windows: np.ndarray
    """float32 ``[n, T+1, d]``: raw feature vectors, oldest interval first."""
    times: np.ndarray
    """float64 ``[n]``: start (epoch s) of each window's last interval (the predicted one)."""
    hosts: np.ndarray
    """object ``[n]``: the host address."""
    labels: np.ndarray
    """int8 ``[n]``: 1 positive, 0 negative, -1 excluded (Background/Unknown/unlabelled)."""
    detailed: np.ndarray
    """object ``[n]``: detailed label of positive windows ("" otherwise)."""
    attacked: np.ndarray
    """bool ``[n]``: the host was an endpoint of a malicious connection within the window."""
    sources: np.ndarray
    """object ``[n]``: source tag of the capture the window comes from."""
    config: FeatureConfig = field(default_factory=FeatureConfig)
    window: int = DEFAULT_WINDOW
    """T: windows hold T+1 intervals."""
    stats: dict[str, dict] = field(default_factory=dict)
    """Per source tag: connections, intervals, late, labelled, problems (see :func:`build`)."""

    def __len__(self) -> int:
        return int(self.times.shape[0])

    @property
    def interval(self) -> float:
        return self.config.interval

    @property
    def labelled(self) -> bool:
        """True when any window carries a positive or negative label."""
        return bool(np.any(self.labels != HOST_EXCLUDED))

    def normal_mask(self, exclude_attacked: bool = False) -> np.ndarray:
        """Windows to train on: see the module docstring.

        Per source: a labelled capture contributes its label-0 windows, an unlabelled one
        all of its windows. ``exclude_attacked`` also drops label-0 windows of hosts that
        were the target of a malicious connection within the window (a scanned server):
        right for a lab whose attacks are deliberate events, wrong where "malicious" marks
        every unsolicited inbound connection of an Internet-facing host (Stratosphere's
        External-Attack-to-Device), which is that host's everyday normal.
        """
        mask = np.zeros(len(self), dtype=bool)
        for tag in np.unique(self.sources):
            mine = self.sources == tag
            if self.stats.get(str(tag), {}).get("labelled", True):
                clean = ~self.attacked if exclude_attacked else True
                mask |= mine & (self.labels == HOST_NEGATIVE) & clean
            else:
                mask |= mine
        return mask

    def select(self, mask: np.ndarray) -> WindowSet:
        """The windows where ``mask`` (bool or index array) selects."""
        return replace(
            self,
            windows=self.windows[mask],
            times=self.times[mask],
            hosts=self.hosts[mask],
            labels=self.labels[mask],
            detailed=self.detailed[mask],
            attacked=self.attacked[mask],
            sources=self.sources[mask],
        )

    def span(self) -> tuple[float, float] | None:
        """(first, last) predicted interval start, or None when empty."""
        if not len(self):
            return None
        return float(self.times.min()), float(self.times.max())

    def counts(self) -> dict[str, int]:
        """Windows, hosts, intervals and class counts (for logs and reports)."""
        return {
            "windows": len(self),
            "hosts": int(np.unique(self.hosts).size),
            "intervals": int(np.unique(self.times).size),
            "positive": int(np.sum(self.labels == HOST_POSITIVE)),
            "negative": int(np.sum(self.labels == HOST_NEGATIVE)),
            "excluded": int(np.sum(self.labels == HOST_EXCLUDED)),
            "attacked_negative": int(np.sum((self.labels == HOST_NEGATIVE) & self.attacked)),
        }

    @classmethod
    def concat(cls, parts: Sequence[WindowSet]) -> WindowSet:
        """Join window sets built with the same feature settings and T."""
        if not parts:
            raise ValueError("nothing to concatenate")
        first = parts[0]
        for p in parts[1:]:
            if p.config != first.config or p.window != first.window:
                raise ValueError("window sets differ in feature settings or T")
        stats: dict[str, dict] = {}
        for p in parts:
            stats.update(p.stats)
        return cls(
            windows=np.concatenate([p.windows for p in parts]),
            times=np.concatenate([p.times for p in parts]),
            hosts=np.concatenate([p.hosts for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
            detailed=np.concatenate([p.detailed for p in parts]),
            attacked=np.concatenate([p.attacked for p in parts]),
            sources=np.concatenate([p.sources for p in parts]),
            config=first.config,
            window=first.window,
            stats=stats,
        )

    @classmethod
    def empty(cls, config: FeatureConfig, window: int) -> WindowSet:
        return cls(
            windows=np.zeros((0, window + 1, N_FEATURES), np.float32),
            times=np.zeros(0, np.float64),
            hosts=np.zeros(0, object),
            labels=np.zeros(0, np.int8),
            detailed=np.zeros(0, object),
            attacked=np.zeros(0, bool),
            sources=np.zeros(0, object),
            config=config,
            window=window,
        )


_GENERIC_NAMES = {"conn", "labeled-conn", "conn-labeled", "eve"}
_SUFFIXES = (".gz", ".labeled", ".json", ".log", ".tsv")


def source_tag(path: str | Path) -> str:
    """A short name for a capture: its folder when the file has a generic name.

    ``.../lab2/conn.log`` -> ``lab2``; ``.../008-zeek-mixed/conn.log.labeled.gz`` ->
    ``008-zeek-mixed``; ``.../horizontal.conn.log`` -> ``horizontal.conn.log``; a
    directory (a rotated tree) -> its own name.
    """
    path = Path(path).resolve()
    if path.is_dir():
        return path.name
    stem = path.name.lower()
    while stem.endswith(_SUFFIXES):
        stem = stem[: stem.rindex(".")]
    return path.parent.name if stem in _GENERIC_NAMES else path.name


class _AttackLog:
    """Which (host, bin) pairs were an endpoint of a malicious connection, either direction.

    Fed the chunks as they stream into the featurizer, binned with the featurizer's own
    removal estimate so the bins agree; pruned once the windows have moved past them, so
    it holds only recent attack intervals.
    """

    def __init__(self, config: FeatureConfig):
        self.config = config
        self.bins: dict[str, set[int]] = {}

    def observe(self, chunk: ConnChunk) -> ConnChunk:
        if chunk.label is None:
            return chunk
        bad = np.flatnonzero(chunk.label == LABEL_MALICIOUS)
        if bad.size:
            rows = chunk.take(bad)
            bins = bin_of(estimate_removal(rows, self.config.delays), self.config.interval)
            # A flood repeats the same (host, bin) thousands of times: dedupe in numpy first.
            idx = np.concatenate([rows.orig_idx, rows.resp_idx]).astype(np.int64)
            pairs = np.unique(np.stack([idx, np.concatenate([bins, bins])]), axis=1)
            addresses = chunk.addresses
            for a, b in pairs.T.tolist():
                self.bins.setdefault(addresses[a], set()).add(b)
        return chunk

    def attacked(self, hosts: Sequence[str], last_bin: int, window: int) -> np.ndarray:
        out = np.zeros(len(hosts), dtype=bool)
        if not self.bins:
            return out
        first = last_bin - window
        for i, host in enumerate(hosts):
            bins = self.bins.get(host)
            if bins and any(first <= b <= last_bin for b in bins):
                out[i] = True
        return out

    def prune(self, before_bin: int) -> None:
        for host in list(self.bins):
            kept = {b for b in self.bins[host] if b >= before_bin}
            if kept:
                self.bins[host] = kept
            else:
                del self.bins[host]


def _count_rows(chunks: Iterable[ConnChunk], stats: dict, bar) -> Iterator[ConnChunk]:
    """Pass chunks through, counting rows and noting whether any carried labels."""
    for chunk in chunks:
        stats["connections"] += len(chunk)
        if chunk.label is not None:
            stats["labelled"] = True
        bar.update(len(chunk))
        yield chunk


def build_source(
    path: str | Path,
    *,
    config: FeatureConfig | None = None,
    window: int = DEFAULT_WINDOW,
    labels=None,
    strict: bool = False,
    tag: str | None = None,
    progress: bool = True,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> WindowSet:
    """Windows of one capture (a file or a rotated tree).

    ``labels`` is a :class:`seqwatch.sidecar.labels.LabelSet` applied to every chunk.
    Memory holds the windows made so far and the featurizer's open intervals, never the
    connection rows. Malformed lines are counted and summarized (``strict`` raises
    :class:`seqwatch.sidecar.problems.InputError` instead).
    """
    from tqdm.auto import tqdm

    from seqwatch.sidecar.archives import read_connections
    from seqwatch.sidecar.problems import ProblemReport
    from seqwatch.sidecar.windows import iter_windows

    config = config or FeatureConfig()
    tag = tag or source_tag(path)
    report = ProblemReport()
    stats: dict = {"connections": 0, "labelled": False, "intervals": 0, "late": 0}
    attacks = _AttackLog(config)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in _FIELDS}
    bar = tqdm(desc=f"reading {tag}", unit=" conn", disable=not progress, leave=False)
    chunks = read_connections(
        [path], chunk_rows=chunk_rows, strict=strict, report=report, labels=labels
    )
    try:
        chunks = (attacks.observe(c) for c in _count_rows(chunks, stats, bar))
        for interval, wins in iter_windows(featurize(chunks, config, DEFAULT_LATENESS), window):
            stats["intervals"] += 1
            stats["late"] += interval.late
            n = len(interval)
            times = np.full(n, interval.start, dtype=np.float64)
            if interval.labels is None:
                lab = np.full(n, HOST_EXCLUDED, dtype=np.int8)
                det = np.full(n, "", dtype=object)
            else:
                lab = interval.labels.astype(np.int8)
                det = interval.detailed.astype(object)
            parts["windows"].append(wins)
            parts["times"].append(times)
            parts["hosts"].append(np.asarray(interval.hosts, dtype=object))
            parts["labels"].append(lab)
            parts["detailed"].append(det)
            parts["attacked"].append(attacks.attacked(interval.hosts, interval.bin, window))
            if stats["intervals"] % 256 == 0:
                attacks.prune(interval.bin - window - _lag_bins(config))
    finally:
        bar.close()
    stats["problems"] = report.summary()
    if report:
        log.warning("%s: %s", tag, report.summary())
    if not stats["labelled"]:
        log.info("%s: no labels; all of its windows count as normal for training", tag)
    result = WindowSet.empty(config, window)
    if parts["times"]:
        result = replace(result, **{k: np.concatenate(v) for k, v in parts.items()}, stats={})
    result.sources = np.full(len(result), tag, dtype=object)
    result.stats = {tag: stats | {"path": str(path), "windows": len(result)}}
    log.info(
        "%s: %d connections -> %d intervals -> %d windows (%s)",
        tag,
        stats["connections"],
        stats["intervals"],
        len(result),
        ", ".join(f"{k} {v}" for k, v in result.counts().items() if k != "windows"),
    )
    return result


_FIELDS = ("windows", "times", "hosts", "labels", "detailed", "attacked")


def _lag_bins(config: FeatureConfig) -> int:
    # Malicious rows are observed before the featurizer emits their interval: up to the
    # featurizer's lateness plus the longest removal delay ahead. Keep that much.
    return math.ceil((DEFAULT_LATENESS + config.delays.max_delay) / config.interval) + 1


def build(
    paths: Sequence[str | Path],
    *,
    config: FeatureConfig | None = None,
    window: int = DEFAULT_WINDOW,
    label_files: Sequence[str | Path] = (),
    strict: bool = False,
    progress: bool = True,
) -> WindowSet:
    """Windows of several captures, each its own stream (see :func:`build_source`).

    ``label_files`` are loaded once with :meth:`seqwatch.sidecar.labels.LabelSet.load` and
    applied to every capture. Connections they do not name keep the capture's own label
    columns, or count as benign where the capture has none (a list of every attack, like
    lab2's, implies that everything else is normal): give label files only together with
    the captures they describe.
    """
    config = config or FeatureConfig()
    labels = None
    if label_files:
        from seqwatch.sidecar.labels import LabelSet

        labels = LabelSet.load([str(p) for p in label_files])
        for message in labels.skipped:
            log.info("labels: %s", message)
        log.info(
            "labels from %s; in captures without label columns every connection they do "
            "not name counts as benign",
            ", ".join(str(p) for p in label_files),
        )
    tags = [source_tag(p) for p in paths]
    # Two captures with the same folder name would be merged in per-source reports.
    seen: dict[str, int] = {}
    for i, t in enumerate(tags):
        seen[t] = seen.get(t, 0) + 1
        if seen[t] > 1:
            tags[i] = f"{t}#{seen[t]}"
    parts = [
        build_source(
            p,
            config=config,
            window=window,
            labels=labels,
            strict=strict,
            tag=t,
            progress=progress,
        )
        for p, t in zip(paths, tags, strict=True)
    ]
    return WindowSet.concat(parts) if parts else WindowSet.empty(config, window)


# --- time selection ------------------------------------------------------------------

_RELATIVE = re.compile(r"\+(\d+(?:\.\d*)?)([smh]?)")
_UNIT = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_time(text: str) -> tuple[float, bool]:
    """A split time: ``(seconds, relative)``.

    Accepts epoch seconds (``1796418040``), ISO 8601 (``2026-12-04T21:00:40Z``) or an
    offset from each capture's first interval (``+540``, ``+9m``, ``+2h``).
    """
    text = text.strip()
    match = _RELATIVE.fullmatch(text)
    if match:
        return float(match.group(1)) * _UNIT[match.group(2)], True
    try:
        return float(text), False
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (epoch seconds, ISO 8601, or +N[s|m|h] from the start)"
        ) from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp(), False


def time_mask(data: WindowSet, since: str | None = None, until: str | None = None) -> np.ndarray:
    """Windows whose predicted interval starts in ``[since, until)``.

    Relative times count from each source's first window, so ``until="+9m"`` takes the
    first nine minutes of every capture.
    """
    mask = np.ones(len(data), dtype=bool)
    for text, lower in ((since, True), (until, False)):
        if text is None:
            continue
        seconds, relative = parse_time(text)
        bound = np.full(len(data), seconds)
        if relative:
            for tag in np.unique(data.sources):
                mine = data.sources == tag
                bound[mine] = data.times[mine].min() + seconds
        mask &= (data.times >= bound) if lower else (data.times < bound)
    return mask


def describe_split(data: WindowSet) -> dict[str, dict]:
    """Per source: window counts and the UTC span, for logs and reports."""
    out = {}
    for tag in np.unique(data.sources):
        part = data.select(data.sources == tag)
        span = part.span()
        out[str(tag)] = part.counts() | {
            "first": _iso(span[0]) if span else None,
            "last": _iso(span[1]) if span else None,
        }
    return out


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
