"""Verdict policy: which scored hosts become verdicts (pure, no I/O, no clocks).

The paper's rule is "flag when ``E_t > θ``". Operators also want two classic alert
hygiene rules, both counted in *intervals* (the pipeline's only clock):

- **k of n**: a host is flagged at interval t only when its error exceeded θ in at least
  k of its last n intervals, t included. A verdict always fires on an exceeding interval
  (the verdict carries that interval's error, which must be above θ to make sense); the
  other k-1 exceedances may lie anywhere in the n-interval span. Intervals in which a
  host had no traffic count as not exceeding. k = n = 1 is the plain rule.
- **cooldown**: after a verdict at interval t the host gets no new verdict before
  interval t + cooldown + 1 (Zeek's ``suppress_for`` does the same on the notice side,
  but a cooldown here also spares the WebSocket and the enforcer).

State is kept only for hosts that exceeded θ recently or are cooling down, and every
entry expires by itself once it is older than ``max(n, cooldown)`` intervals; the
pipeline also calls :meth:`VerdictPolicy.forget` for hosts its windows dropped, so the
policy never holds more hosts than the windows do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PolicyConfig:
    """Settings of :class:`VerdictPolicy` (the ``[policy]`` config section)."""

    threshold: float | None = None
    """θ override; None uses the model's θ (μ_E + kσ_E of its training errors)."""
    k: int = 1
    """Exceedances needed within the last ``n`` intervals."""
    n: int = 1
    """Span of the k-of-n rule, in intervals."""
    cooldown: int = 0
    """Intervals after a verdict during which the host gets no new verdict."""

    def __post_init__(self) -> None:
        if self.threshold is not None and not (
            math.isfinite(self.threshold) and self.threshold > 0
        ):
            raise ValueError(f"threshold must be a finite number > 0, got {self.threshold}")
        if self.n < 1:
            raise ValueError(f"n (k_of_n) must be >= 1, got {self.n}")
        if not 1 <= self.k <= self.n:
            raise ValueError(f"k (k_of_n) must be between 1 and n={self.n}, got {self.k}")
        if self.cooldown < 0:
            raise ValueError(f"cooldown must be >= 0 intervals, got {self.cooldown}")


class VerdictPolicy:
    """Decides, per interval, which hosts get a verdict."""

    def __init__(self, config: PolicyConfig | None = None):
        self.config = config or PolicyConfig()
        # host -> bins (ascending) in which it exceeded θ, only the last n kept.
        self._exceeded: dict[str, list[int]] = {}
        # host -> bin of its last verdict, while it is cooling down.
        self._last_verdict: dict[str, int] = {}
        self.suppressed_k_of_n = 0
        """Exceedances that did not (yet) meet the k-of-n rule."""
        self.suppressed_cooldown = 0
        """Exceedances that met the rule but fell into a host's cooldown."""

    def threshold(self, model_threshold: float) -> float:
        """The θ in force: the configured override, or the model's."""
        override = self.config.threshold
        return float(model_threshold if override is None else override)

    def decide(
        self, bin_: int, hosts: Sequence[str], errors: np.ndarray, threshold: float
    ) -> np.ndarray:
        """Return a boolean mask over ``hosts``: True where a verdict fires at ``bin_``.

        ``threshold`` is the θ in force (see :meth:`threshold`). Bins must not decrease
        from one call to the next; several calls for the same bin are fine (batches).
        """
        errors = np.asarray(errors, dtype=np.float64)
        # NaN errors (a broken model) never exceed: comparisons with NaN are False.
        over = np.flatnonzero(errors > threshold)
        fire = np.zeros(len(hosts), dtype=bool)
        cfg = self.config
        if cfg.k == 1 and cfg.cooldown == 0:
            # The plain rule needs no state at all.
            fire[over] = True
            return fire
        for i in over:
            host = hosts[i]
            if cfg.k > 1:
                history = self._exceeded.setdefault(host, [])
                if not history or history[-1] != bin_:
                    history.append(bin_)
                # Keep only exceedances inside the n-interval span ending at bin_.
                while history and history[0] <= bin_ - cfg.n:
                    history.pop(0)
                if len(history) < cfg.k:
                    self.suppressed_k_of_n += 1
                    continue
            last = self._last_verdict.get(host)
            if last is not None and last != bin_ and bin_ - last <= cfg.cooldown:
                self.suppressed_cooldown += 1
                continue
            fire[i] = True
            if cfg.cooldown:
                self._last_verdict[host] = bin_
        return fire

    def expire(self, bin_: int) -> None:
        """Drop state that can no longer matter at ``bin_`` or later (call once per interval)."""
        cfg = self.config
        if self._exceeded:
            old = [h for h, bins in self._exceeded.items() if bins[-1] <= bin_ - cfg.n]
            for host in old:
                del self._exceeded[host]
        if self._last_verdict:
            done = [h for h, b in self._last_verdict.items() if bin_ - b > cfg.cooldown]
            for host in done:
                del self._last_verdict[host]

    def forget(self, keep: Callable[[str], bool]) -> int:
        """Drop every host for which ``keep(host)`` is false; return how many were dropped."""
        dropped = 0
        for table in (self._exceeded, self._last_verdict):
            gone = [h for h in table if not keep(h)]
            for host in gone:
                del table[host]
            dropped += len(gone)
        return dropped

    def reset(self) -> None:
        """Forget all hosts (the windows were reset)."""
        self._exceeded.clear()
        self._last_verdict.clear()

    def __len__(self) -> int:
        """Hosts with state (for metrics and the memory bound's tests)."""
        return len(self._exceeded.keys() | self._last_verdict.keys())
