"""The sidecar's core: feature intervals in, verdicts out. No I/O, no clocks, no threads.

Every way of running seqwatch is a thin adapter around one :class:`Pipeline`:

- live (``sidecar/live.py``): decodes Zeek's WebSocket frames into
  :class:`~seqwatch.sidecar.messages.FeatureMessage` chunks, calls :meth:`Pipeline.on_features`,
  spools and sends the verdicts it returns;
- tail (``sidecar/tail.py``): conn.log / eve.json bytes -> parser -> FeatureAggregator ->
  :class:`~seqwatch.sidecar.features.IntervalFeatures` -> :meth:`Pipeline.on_features`;
- replay (``sidecar/replay.py``): archives -> the same, as fast as possible.

So replay yields exactly the live verdicts for the same intervals, and the core is
tested without sockets or clocks. The only notion of time is the interval index
(``bin = start / Δ``) carried by the input.

Usage::

    pipeline = Pipeline(OnnxModel.load("model.onnx"), VerdictPolicy(PolicyConfig(cooldown=5)))
    for message in messages:                 # FeatureMessage chunks or IntervalFeatures
        for verdict in pipeline.on_features(message):
            ...                              # spool, send, notice, enforce
    for verdict in pipeline.flush():         # end of input: score the open interval
        ...

Contract of :meth:`Pipeline.on_features`:

- A :class:`FeatureMessage` is chunk ``chunk`` of ``chunks`` of one interval from one node
  (Zeek splits big intervals). Chunks are fed into the host windows as they arrive; the
  interval is scored once it is *complete*: every chunk announced by every node that
  sent one has arrived, or a later interval begins (then it is scored with what arrived
  and counted in ``stats.incomplete``). An :class:`IntervalFeatures` is a complete interval.
- An interval older than the newest one seen, or the same as one already scored, is
  dropped and counted in ``stats.dropped_old`` (its windows would rewrite history).
- Messages that do not fit the model are refused, counted in ``stats.rejected[reason]``
  and logged (a warning the first time a reason occurs, debug afterwards, so a
  misconfigured Zeek does not flood the log): ``schema`` (schema id differs from the
  model's), ``interval`` (width differs from the model's Δ), ``misaligned`` (start not a
  multiple of Δ), ``shape`` (values not ``[hosts, d]``), ``values`` (NaN, infinite or
  negative features), ``chunk`` (chunk index out of range), ``duplicate_chunk``,
  ``too_many_hosts`` (more hosts in one interval than ``max_hosts``).
- Hosts are scored as their chunks arrive, whenever ``EAGER_BATCH`` of them are waiting,
  so that an interval's last message leaves only its own hosts to score; the policy
  judges all hosts together once the interval is complete (a host named again in a later
  chunk is scored again with its last vector).
- Scoring runs in batches of ``batch_size`` windows through the scorer (in-process by
  default, or :class:`~seqwatch.sidecar.workers.WorkerPool`); the verdict policy then
  decides which hosts get a verdict. Verdicts come in the order the hosts arrived.
- Each :class:`~seqwatch.sidecar.messages.Verdict` carries the host, the interval (start,
  Δ), the error, the θ in force, the model id and the three features with the largest
  absolute standardized residual (names and signed residuals, largest first; ties go to
  the earlier feature). Error and residuals are rounded to 6 decimals.

Warm-up: right after start (or a window reset) every host's history is zeros, so its
first windows look like a host that just appeared and the model's error is high. With
``warmup=w`` the first ``w`` intervals after start or reset only fill the windows; they
are neither scored nor judged (``stats.warmup_intervals``). Default 0: score from the
first interval, as training and evaluation do; ``seqwatch run`` defaults to T.

Hot reload (:meth:`Pipeline.swap_model`): a model with the same schema, feature names
and Δ is accepted. With the same T as well, windows and policy state carry over and
every interval completed after the swap (the open one included) is scored with the new
model. With another T the windows are reset
(their ring length is T+1) -- the open interval is first scored with the old model,
then history starts afresh and the warm-up runs again. A different schema, feature
list or Δ is refused with :class:`ModelMismatch` (the old model stays): Zeek would still
send the old features, so such a change needs a restart together with Zeek's settings.

Thread safety: a pipeline belongs to one thread (the adapter's loop).
:meth:`Pipeline.request_swap` is the one method other threads may call (the reload
watcher); the swap then happens at the start of the next ``on_features``/``flush``
call, between intervals' messages, never in the middle of scoring.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from seqwatch.sidecar.features import IntervalFeatures
from seqwatch.sidecar.messages import FeatureMessage, Verdict
from seqwatch.sidecar.policy import VerdictPolicy
from seqwatch.sidecar.schema import SCHEMA_ID, FeatureConfig, RemovalDelays
from seqwatch.sidecar.scoring import LocalScorer, Scorer
from seqwatch.sidecar.windows import HostWindows

log = logging.getLogger(__name__)

EAGER_BATCH = 1024
"""Hosts of an interval still arriving are scored once this many wait (see ``_Open``)."""
TOP_FEATURES = 3
"""How many deviating features a verdict names."""
VALUE_DECIMALS = 6
"""Decimals kept of a verdict's error and residuals."""

REJECT_REASONS = (
    "schema",
    "interval",
    "misaligned",
    "shape",
    "values",
    "chunk",
    "duplicate_chunk",
    "too_many_hosts",
)
"""Every reason :attr:`PipelineStats.rejected` may count (metrics pre-declare them)."""


class ModelMismatch(ValueError):
    """A model cannot replace the running one (different schema, features or Δ)."""


@dataclass
class PipelineStats:
    """Counters of one pipeline (monotonic except ``hosts_tracked``)."""

    messages: int = 0
    """Messages given to :meth:`Pipeline.on_features` (chunks and whole intervals)."""
    intervals: int = 0
    """Intervals scored (complete or not)."""
    host_intervals: int = 0
    """(host, interval) windows scored."""
    verdicts: int = 0
    dropped_old: int = 0
    """Messages dropped because their interval was older than the newest (or already scored)."""
    incomplete: int = 0
    """Intervals scored with chunks missing (a later interval began, or flush)."""
    warmup_intervals: int = 0
    """Intervals only recorded, not scored, during warm-up."""
    evictions: int = 0
    """Hosts dropped to stay under ``max_hosts``."""
    expired: int = 0
    """Hosts dropped after T idle intervals."""
    hosts_tracked: int = 0
    model_swaps: int = 0
    window_resets: int = 0
    rejected: Counter = field(default_factory=lambda: Counter(dict.fromkeys(REJECT_REASONS, 0)))
    """Refused messages by reason; every reason of :data:`REJECT_REASONS` is present."""
    late_connections: int = 0
    """Sum of the messages' ``late`` counts (connections Zeek removed after their bin)."""
    overflow: int = 0
    """Sum of the messages' ``overflow`` counts (hosts the sender could not fit)."""
    suppressed_k_of_n: int = 0
    suppressed_cooldown: int = 0

    def as_dict(self) -> dict:
        """Plain dict (for JSON status output and tests)."""
        out = {k: v for k, v in self.__dict__.items() if k != "rejected"}
        out["rejected"] = dict(self.rejected)
        return out


@dataclass
class _Open:
    """The interval being assembled: which chunks arrived, which hosts they named."""

    bin: int
    hosts: dict[str, None] = field(default_factory=dict)  # ordered set
    seen: set[tuple[str, int]] = field(default_factory=set)  # (node, chunk index)
    expected: dict[str, int] = field(default_factory=dict)  # node -> chunks announced
    received: Counter = field(default_factory=Counter)  # node -> distinct chunks received
    unscored: dict[str, None] = field(default_factory=dict)  # ordered set
    scores: dict[str, tuple[float, np.ndarray]] = field(default_factory=dict)

    def add(self, node: str, chunk: int, chunks: int, hosts: list[str]) -> None:
        self.seen.add((node, chunk))
        self.received[node] += 1
        self.expected[node] = max(self.expected.get(node, 0), chunks)
        # A host named in two chunks is scored once, with the last vector given: a score
        # taken before the second chunk is stale and the host waits to be scored again.
        self.hosts.update(dict.fromkeys(hosts))
        for host in hosts:
            self.scores.pop(host, None)
        self.unscored.update(dict.fromkeys(hosts))

    def complete(self) -> bool:
        return all(self.received[node] >= total for node, total in self.expected.items())


class Pipeline:
    """Assembles feature intervals into per-host windows, scores them, applies the policy.

    ``model`` is a loaded :class:`~seqwatch.sidecar.modelfile.OnnxModel` (anything with
    ``.info`` and ``.score``). ``policy`` defaults to the plain ``error > θ`` rule.
    ``max_hosts`` bounds the tracked hosts (LRU eviction, counted); ``batch_size`` is the
    number of windows per scoring call; ``scorer`` defaults to in-process scoring with the
    model; ``warmup`` is the number of intervals after start or reset that are recorded
    but not scored.
    """

    def __init__(
        self,
        model,
        policy: VerdictPolicy | None = None,
        *,
        max_hosts: int = 1_000_000,
        batch_size: int = 4096,
        scorer: Scorer | None = None,
        warmup: int = 0,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0 intervals, got {warmup}")
        self.model = model
        self.policy = policy if policy is not None else VerdictPolicy()
        self.max_hosts = max_hosts
        self.batch_size = batch_size
        self.scorer: Scorer = scorer if scorer is not None else LocalScorer(model, batch_size)
        # Hosts of an unfinished interval are scored once this many are waiting.
        self.eager_batch = min(batch_size, EAGER_BATCH)
        self.warmup = warmup
        self.stats = PipelineStats()
        self._windows = self._new_windows(model)
        self._open: _Open | None = None
        self._last_scored: int | None = None  # newest bin scored or skipped
        self._since_reset = 0  # intervals recorded since start or the last reset
        self._pending_model = None
        self._warned: set[str] = set()
        # Totals of window buffers replaced by a reset, so the counters stay monotonic.
        self._evictions_base = 0
        self._expired_base = 0

    # -- public API ---------------------------------------------------------------------
    @property
    def info(self):
        """The running model's :class:`~seqwatch.sidecar.modelfile.ModelInfo`."""
        return self.model.info

    @property
    def threshold(self) -> float:
        """θ in force (the policy's override or the model's)."""
        return self.policy.threshold(self.model.info.threshold)

    @property
    def hosts_tracked(self) -> int:
        return len(self._windows)

    def on_features(self, msg: FeatureMessage | IntervalFeatures) -> list[Verdict]:
        """Take one interval chunk (or a whole interval); return the verdicts now due."""
        verdicts = self._apply_pending_swap()
        self.stats.messages += 1
        parsed = self._validate(msg)
        if parsed is None:
            return verdicts
        bin_, node, chunk, chunks, hosts, values = parsed
        newest = self._open.bin if self._open else self._last_scored
        if newest is not None and (
            bin_ < newest or (self._open is None and bin_ == self._last_scored)
        ):
            self.stats.dropped_old += 1
            log.debug("dropped a message for interval %d: interval %d is newer", bin_, newest)
            return verdicts
        if self._open is not None and bin_ > self._open.bin:
            verdicts += self._close_open(complete=False)
        if self._open is not None and (node, chunk) in self._open.seen:
            self._reject("duplicate_chunk", f"chunk {chunk} of interval {bin_} from {node!r}")
            return verdicts
        if not self._record(bin_, hosts, values):
            return verdicts
        if self._open is None:
            self._open = _Open(bin_)
            self._on_new_bin(bin_)
        self.stats.late_connections += int(getattr(msg, "late", 0) or 0)
        self.stats.overflow += int(getattr(msg, "overflow", 0) or 0)
        self._open.add(node, chunk, chunks, hosts)
        if self._open.complete():
            verdicts += self._close_open(complete=True)
        elif len(self._open.unscored) >= self.eager_batch and not self._warming_up():
            # Score while the rest of the interval is on its way, so that the last
            # message only leaves its own hosts to score (latency), in full batches.
            self._score_unscored(self._open)
        return verdicts

    def flush(self) -> list[Verdict]:
        """Score the interval being assembled, even if chunks are missing (end of input)."""
        verdicts = self._apply_pending_swap()
        if self._open is not None:
            verdicts += self._close_open(complete=self._open.complete())
        return verdicts

    def swap_model(self, model) -> list[Verdict]:
        """Replace the model now; return verdicts of the open interval if windows reset.

        Raises :class:`ModelMismatch` (and keeps the old model) when the schema, the
        feature names or Δ differ. See the module docstring for what carries over.
        """
        self._check_compatible(model)
        verdicts: list[Verdict] = []
        old_info, new_info = self.model.info, model.info
        reset = int(new_info.window) != int(old_info.window)
        if reset:
            # The open interval was gathered for the old T: finish it with the old model.
            if self._open is not None:
                verdicts = self._close_open(complete=self._open.complete())
            self._count_window_drops()
            self._windows = self._new_windows(model)
            self._sync_window_counters()
            self.policy.reset()
            self._since_reset = 0
            self.stats.window_resets += 1
        elif self._open is not None:
            # Hosts scored early in the open interval are scored again by the new model, so
            # that every verdict's model id names the model that produced its error.
            self._open.unscored.update(dict.fromkeys(self._open.scores))
            self._open.scores.clear()
        self.model = model
        self.scorer.set_model(model)
        self.stats.model_swaps += 1
        log.info(
            "model %s replaced by %s%s",
            old_info.model_id,
            new_info.model_id,
            " (window length changed: history reset)" if reset else "",
        )
        return verdicts

    def request_swap(self, model) -> None:
        """Ask for :meth:`swap_model` at the next call (safe from another thread).

        Compatibility is checked here, so the caller learns of a refusal at once.
        """
        self._check_compatible(model)
        self._pending_model = model  # one reference assignment: atomic under the GIL

    def close(self) -> None:
        """Release the scorer (worker processes, sockets)."""
        self.scorer.close()

    # -- validation -----------------------------------------------------------------------
    def _validate(self, msg) -> tuple[int, str, int, int, list[str], np.ndarray] | None:
        info = self.model.info
        delta = float(info.interval)
        if isinstance(msg, IntervalFeatures):
            schema, width, start = SCHEMA_ID, float(msg.interval), float(msg.start)
            node, chunk, chunks = msg.node or "", 0, 1
        else:
            schema, width, start = msg.schema, float(msg.width), float(msg.start)
            node, chunk, chunks = msg.node or "", int(msg.chunk), int(msg.chunks)
        where = f"interval starting {start} from {node or 'local'!r}"
        if schema != info.schema:
            self._reject("schema", f"{where}: schema {schema!r}, model expects {info.schema!r}")
            return None
        if not math.isclose(width, delta, rel_tol=1e-9, abs_tol=1e-6):
            self._reject("interval", f"{where}: width {width:g} s, model expects Δ={delta:g} s")
            return None
        bin_f = start / delta
        bin_ = round(bin_f)
        if abs(bin_f - bin_) > 1e-6:
            self._reject("misaligned", f"{where}: start is not a multiple of Δ={delta:g} s")
            return None
        if not (chunks >= 1 and 0 <= chunk < chunks):
            self._reject("chunk", f"{where}: chunk {chunk} of {chunks}")
            return None
        hosts = list(msg.hosts)
        values = np.asarray(msg.values, dtype=np.float32)
        d = len(info.feature_names)
        if len(hosts) == 0 and values.size == 0:
            values = values.reshape(0, d)
        if values.shape != (len(hosts), d):
            self._reject(
                "shape", f"{where}: values of shape {values.shape} for {len(hosts)} hosts, d={d}"
            )
            return None
        if values.size and not (np.isfinite(values).all() and (values >= 0).all()):
            self._reject("values", f"{where}: NaN, infinite or negative feature values")
            return None
        return bin_, node, chunk, chunks, hosts, values

    def _reject(self, reason: str, detail: str) -> None:
        self.stats.rejected[reason] += 1
        level = logging.DEBUG if reason in self._warned else logging.WARNING
        self._warned.add(reason)
        log.log(level, "refused a feature message (%s): %s", reason, detail)

    def _check_compatible(self, model) -> None:
        old, new = self.model.info, model.info
        problems = []
        if new.schema != old.schema:
            problems.append(f"schema {new.schema!r} != {old.schema!r}")
        if tuple(new.feature_names) != tuple(old.feature_names):
            problems.append("feature names differ")
        if not math.isclose(float(new.interval), float(old.interval)):
            problems.append(f"Δ {float(new.interval):g} s != {float(old.interval):g} s")
        if problems:
            raise ModelMismatch(
                f"model {new.model_id} cannot replace {old.model_id} while running: "
                + "; ".join(problems)
                + " (restart with matching Zeek settings instead)"
            )

    def _apply_pending_swap(self) -> list[Verdict]:
        model, self._pending_model = self._pending_model, None
        if model is None:
            return []
        try:
            return self.swap_model(model)
        except ModelMismatch as exc:  # the running model changed since request_swap
            log.error("%s", exc)
            return []

    # -- windows ----------------------------------------------------------------------------
    def _new_windows(self, model) -> HostWindows:
        info = model.info
        return HostWindows(
            window=int(info.window),
            n_features=len(info.feature_names),
            max_hosts=self.max_hosts,
            initial_capacity=min(self.max_hosts, 4096),
        )

    def _record(self, bin_: int, hosts: list[str], values: np.ndarray) -> bool:
        try:
            # Windows are gathered later, in bounded batches, when the hosts are scored.
            self._windows.record(bin_, hosts, values)
        except OverflowError as exc:
            self._reject("too_many_hosts", str(exc))
            return False
        finally:
            self._sync_window_counters()
        return True

    def _on_new_bin(self, bin_: int) -> None:
        self._since_reset += 1
        self.policy.expire(bin_)
        if len(self.policy):
            tracked = self._windows
            self.policy.forget(lambda host: host in tracked)

    def _sync_window_counters(self) -> None:
        w = self._windows
        self.stats.evictions = self._evictions_base + w.evictions
        self.stats.expired = self._expired_base + w.expired
        self.stats.hosts_tracked = len(w)

    def _count_window_drops(self) -> None:
        # Counters survive a window reset: fold the old buffer's totals into the base.
        self._evictions_base += self._windows.evictions
        self._expired_base += self._windows.expired

    # -- scoring ------------------------------------------------------------------------------
    def _close_open(self, complete: bool) -> list[Verdict]:
        open_, self._open = self._open, None
        assert open_ is not None
        self._last_scored = open_.bin
        if not complete:
            self.stats.incomplete += 1
        if self._warming_up():
            self.stats.warmup_intervals += 1
            return []
        hosts = list(open_.hosts)
        self.stats.intervals += 1
        self.stats.host_intervals += len(hosts)
        if not hosts:
            return []
        verdicts = self._judge(open_, hosts)
        self.stats.verdicts += len(verdicts)
        self.stats.suppressed_k_of_n = self.policy.suppressed_k_of_n
        self.stats.suppressed_cooldown = self.policy.suppressed_cooldown
        return verdicts

    def _warming_up(self) -> bool:
        return self._since_reset <= self.warmup

    def _batches(self, bin_: int, hosts: list[str]) -> Iterator[np.ndarray]:
        for i in range(0, len(hosts), self.batch_size):
            yield self._windows.windows(bin_, hosts[i : i + self.batch_size])

    def _score_unscored(self, open_: _Open) -> None:
        hosts = list(open_.unscored)
        open_.unscored.clear()
        results = self.scorer.score_batches(self._batches(open_.bin, hosts))
        for i, (error, residual) in enumerate(results):
            batch_hosts = hosts[i * self.batch_size : (i + 1) * self.batch_size]
            for j, host in enumerate(batch_hosts):
                open_.scores[host] = (float(error[j]), residual[j])

    def _judge(self, open_: _Open, hosts: list[str]) -> list[Verdict]:
        """Score what is left, then let the policy judge every host in arrival order."""
        if open_.unscored:
            self._score_unscored(open_)
        info = self.model.info
        theta = self.threshold
        names = list(info.feature_names)
        start = open_.bin * float(info.interval)
        scores = open_.scores
        error = np.fromiter((scores[h][0] for h in hosts), dtype=np.float64, count=len(hosts))
        fire = self.policy.decide(open_.bin, hosts, error, theta)
        return [
            self._verdict(hosts[j], start, error[j], scores[hosts[j]][1], theta, names)
            for j in np.flatnonzero(fire)
        ]

    def _verdict(self, host, start, error, residual, theta, names) -> Verdict:
        top = _top_features(residual, TOP_FEATURES)
        # Rounded to 6 decimals (far below the model's float32 noise) so that every text
        # form -- notice.log, the spool, JSON -- is short and parses back identically.
        return Verdict(
            host=host,
            start=start,
            width=float(self.model.info.interval),
            error=round(float(error), VALUE_DECIMALS),
            threshold=float(theta),
            model_id=str(self.model.info.model_id),
            top_features=tuple(names[k] for k in top),
            top_residuals=tuple(round(float(residual[k]), VALUE_DECIMALS) for k in top),
        )


def feature_config(info) -> FeatureConfig:
    """The featurizer settings a model was trained with (Δ, distinct cap, removal delays).

    The file tail and replay featurize connections themselves and must match the model.
    """
    return FeatureConfig(
        interval=float(info.interval),
        distinct_cap=int(info.distinct_cap),
        delays=RemovalDelays.from_dict(dict(info.removal_delays)),
    )


def _top_features(residual: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest ``|residual|``, largest first (ties: lower index first)."""
    order = np.argsort(-np.abs(residual), kind="stable")
    return order[:k]
