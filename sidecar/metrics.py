"""Prometheus metrics of the sidecar, on a registry of its own (never the global one).

Counters that the pipeline and the spool already keep are *read at scrape time* by a
custom collector instead of being mirrored, so there is one source of truth and the
no-I/O core stays free of metrics code. What only an adapter knows (scoring latency,
verdicts sent to Zeek, reconnects) is observed directly on this object.

Exposed (all prefixed ``seqwatch_``): ``messages_total``, ``messages_rejected_total{reason}``,
``intervals_scored_total``, ``host_intervals_scored_total``, ``intervals_dropped_total{why}``
(``old``, ``incomplete``), ``late_connections_total``, ``hosts_tracked``,
``host_evictions_total``, ``hosts_expired_total``, ``verdicts_total``,
``verdicts_suppressed_total{rule}``, ``model_swaps_total``, ``model_info{...}``,
``spool_pending``, ``scoring_seconds`` (histogram per batch), ``verdicts_sent_total``,
``zeek_connected``, ``zeek_reconnects_total``, ``model_reloads_total{result}``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

from seqwatch.sidecar.scoring import Scorer, Scores

# Batches of a few thousand windows take milliseconds to a second or so.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The sidecar's metrics; ``bind`` the pipeline and spool, then ``serve`` or ``render``."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.pipeline = None
        self.spool = None
        r = self.registry
        self.scoring_seconds = Histogram(
            "seqwatch_scoring_seconds",
            "Time to score one batch of windows",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.verdicts_sent = Counter(
            "seqwatch_verdicts_sent", "Verdicts written to Zeek's WebSocket", registry=r
        )
        self.zeek_connected = Gauge(
            "seqwatch_zeek_connected", "1 while connected to Zeek's WebSocket API", registry=r
        )
        self.zeek_reconnects = Counter(
            "seqwatch_zeek_reconnects", "Connection attempts to Zeek after the first", registry=r
        )
        self.model_reloads = Counter(
            "seqwatch_model_reloads", "Model hot reloads", ["result"], registry=r
        )
        for result in ("ok", "refused"):
            self.model_reloads.labels(result)
        self._server = None
        r.register(_StateCollector(self))

    def bind(self, pipeline=None, spool=None) -> Metrics:
        """Report this pipeline's and spool's counters (either may be None)."""
        if pipeline is not None:
            self.pipeline = pipeline
        if spool is not None:
            self.spool = spool
        return self

    def timed(self, scorer: Scorer) -> TimedScorer:
        """Wrap ``scorer`` so each batch's latency lands in ``seqwatch_scoring_seconds``."""
        return TimedScorer(scorer, self.scoring_seconds)

    def render(self) -> bytes:
        """The exposition text (what a scrape returns)."""
        return generate_latest(self.registry)

    def serve(self, addr: str, port: int) -> int:
        """Start the HTTP exposition server in a daemon thread; return the bound port."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        """Stop the HTTP server, if one runs."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class TimedScorer:
    """A scorer that times each batch of the scorer it wraps."""

    def __init__(self, inner: Scorer, histogram: Histogram):
        self.inner = inner
        self._histogram = histogram

    def score(self, windows) -> Scores:
        start = time.perf_counter()
        try:
            return self.inner.score(windows)
        finally:
            self._histogram.observe(time.perf_counter() - start)

    def score_batches(self, batches: Iterable) -> Iterator[Scores]:
        # With workers several batches are in flight: the time between two results is the
        # throughput-relevant latency seen by the pipeline.
        last = time.perf_counter()
        for result in self.inner.score_batches(batches):
            now = time.perf_counter()
            self._histogram.observe(now - last)
            last = now
            yield result

    def set_model(self, model) -> None:
        self.inner.set_model(model)

    def close(self) -> None:
        self.inner.close()


class _StateCollector:
    """Reads the pipeline's and spool's counters when Prometheus scrapes."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def describe(self):
        return []

    def collect(self):
        pipeline = self._metrics.pipeline
        if pipeline is not None:
            yield from _pipeline_families(pipeline)
        spool = self._metrics.spool
        if spool is not None:
            yield GaugeMetricFamily(
                "seqwatch_spool_pending",
                "Verdicts spooled but not yet acknowledged as sent to Zeek",
                value=spool.pending_count,
            )


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _pipeline_families(pipeline):
    s = pipeline.stats
    yield _counter("seqwatch_messages", "Feature messages received", s.messages)
    rejected = CounterMetricFamily(
        "seqwatch_messages_rejected", "Feature messages refused", labels=["reason"]
    )
    for reason, count in sorted(dict(s.rejected).items()):
        rejected.add_metric([reason], count)
    yield rejected
    yield _counter("seqwatch_intervals_scored", "Intervals scored", s.intervals)
    yield _counter("seqwatch_host_intervals_scored", "Host windows scored", s.host_intervals)
    dropped = CounterMetricFamily(
        "seqwatch_intervals_dropped",
        "Messages of intervals older than the newest (old) and intervals scored with chunks"
        " missing (incomplete)",
        labels=["why"],
    )
    dropped.add_metric(["old"], s.dropped_old)
    dropped.add_metric(["incomplete"], s.incomplete)
    yield dropped
    yield _counter(
        "seqwatch_late_connections",
        "Connections Zeek added to a later interval than estimated",
        s.late_connections,
    )
    yield GaugeMetricFamily("seqwatch_hosts_tracked", "Hosts with a window", value=s.hosts_tracked)
    yield _counter("seqwatch_host_evictions", "Hosts evicted at max_hosts", s.evictions)
    yield _counter("seqwatch_hosts_expired", "Hosts dropped after T idle intervals", s.expired)
    yield _counter("seqwatch_verdicts", "Verdicts produced", s.verdicts)
    suppressed = CounterMetricFamily(
        "seqwatch_verdicts_suppressed", "Exceedances held back by the policy", labels=["rule"]
    )
    suppressed.add_metric(["k_of_n"], s.suppressed_k_of_n)
    suppressed.add_metric(["cooldown"], s.suppressed_cooldown)
    yield suppressed
    yield _counter("seqwatch_model_swaps", "Models swapped in while running", s.model_swaps)
    info = pipeline.info
    family = InfoMetricFamily("seqwatch_model", "The model in use")
    family.add_metric(
        [],
        {
            "model_id": str(info.model_id),
            "architecture": str(info.architecture),
            "window": str(info.window),
            "interval": f"{float(info.interval):g}",
            "threshold": f"{pipeline.threshold:.6g}",
        },
    )
    yield family
