"""``seqwatch replay``: push archives through the live pipeline, as fast as possible.

Backtesting: conn.log / eve.json archives are read (:mod:`seqwatch.sidecar.archives`),
featurized with the model's own settings (Δ, distinct cap, removal delays) and fed,
interval by interval, to the same :class:`~seqwatch.sidecar.pipeline.Pipeline` the live
sidecar runs, with the same policy. The verdicts are therefore the ones the live sidecar
would have raised for the same intervals; ``tests/test_replay.py`` checks this against
the live path's form, the intervals cut into ``FeatureMessage`` chunks.

Interval completion offline uses the featurizer's ``lateness`` (60 s by default, as
training and ``seqwatch evaluate`` do: archives may be merged from several writers); set
``--lateness 5`` to mimic the live file tail exactly.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TextIO

import numpy as np

from seqwatch.sidecar.features import DEFAULT_LATENESS, IntervalFeatures, featurize
from seqwatch.sidecar.messages import FeatureMessage, Verdict
from seqwatch.sidecar.pipeline import Pipeline, feature_config
from seqwatch.sidecar.problems import ProblemReport
from seqwatch.sidecar.schema import SCHEMA_ID

HOSTS_PER_MESSAGE = 1000
"""Chunk size of :func:`as_feature_messages` (the Zeek script's default)."""


def replay_intervals(
    intervals: Iterable[IntervalFeatures], pipeline: Pipeline
) -> Iterator[Verdict]:
    """Verdicts of a stream of intervals, the open interval flushed at the end."""
    for interval in intervals:
        yield from pipeline.on_features(interval)
    yield from pipeline.flush()


def replay_files(
    paths,
    pipeline: Pipeline,
    *,
    lateness: float = DEFAULT_LATENESS,
    report: ProblemReport | None = None,
    strict: bool = False,
) -> Iterator[Verdict]:
    """Verdicts of the connections in ``paths`` (files or directories, any supported format)."""
    from seqwatch.sidecar.archives import read_connections

    chunks = read_connections(paths, strict=strict, report=report)
    intervals = featurize(chunks, feature_config(pipeline.info), lateness)
    yield from replay_intervals(intervals, pipeline)


def as_feature_messages(
    interval: IntervalFeatures, hosts_per_message: int = HOSTS_PER_MESSAGE, node: str = "replay"
) -> list[FeatureMessage]:
    """An interval cut into ``SeqWatch::interval_features`` chunks, as Zeek sends it."""
    if hosts_per_message < 1:
        raise ValueError(f"hosts_per_message must be >= 1, got {hosts_per_message}")
    n = len(interval.hosts)
    chunks = max(1, -(-n // hosts_per_message))
    values = np.asarray(interval.values, dtype=np.float64)
    return [
        FeatureMessage(
            node=node,
            start=float(interval.start),
            width=float(interval.interval),
            schema=SCHEMA_ID,
            chunk=i,
            chunks=chunks,
            late=int(interval.late),
            overflow=int(interval.overflow),
            hosts=tuple(interval.hosts[i * hosts_per_message : (i + 1) * hosts_per_message]),
            values=values[i * hosts_per_message : (i + 1) * hosts_per_message],
        )
        for i in range(chunks)
    ]


def format_verdict(v: Verdict) -> str:
    """One human-readable line per verdict (the replay command's stdout)."""
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(v.start, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f"{when} +{v.width:g}s  {v.host:<15}  error {v.error:.3f} > {v.threshold:.3f}  "
        f"{v.explanation()}"
    )


def print_verdicts(verdicts: Iterable[Verdict], out: TextIO = sys.stdout) -> int:
    """Print verdicts as they come; return how many there were."""
    count = 0
    for v in verdicts:
        print(format_verdict(v), file=out)
        count += 1
    return count
