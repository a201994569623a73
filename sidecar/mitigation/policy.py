"""The pure parts of the safety policy: rate limiting and escalation. No I/O, no clock.

Every function takes ``now`` from the caller, so the enforcer's injected clock drives them
and tests can replay any timeline exactly.
"""

from __future__ import annotations

from collections import deque

# A minute, the window of ``max_per_minute``.
RATE_WINDOW = 60.0


class SlidingWindowLimiter:
    """At most ``limit`` events in any window of ``window`` seconds.

    A log of event times rather than a token bucket: the guarantee an operator reads in the
    configuration ("at most N new blocks per minute") then holds for *every* 60 s span, not
    only on average, and the time until the next slot frees is exact.
    """

    def __init__(self, limit: int, window: float = RATE_WINDOW) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("limit and window must be positive")
        self.limit = limit
        self.window = window
        self._events: deque[float] = deque()

    def _prune(self, now: float) -> None:
        while self._events and self._events[0] <= now - self.window:
            self._events.popleft()

    def allowed(self, now: float) -> bool:
        """Whether an event at ``now`` stays within the limit (does not record it)."""
        self._prune(now)
        return len(self._events) < self.limit

    def record(self, now: float) -> None:
        self._events.append(now)

    def retry_after(self, now: float) -> float:
        """Seconds until ``allowed`` becomes true (0 when it already is)."""
        self._prune(now)
        if len(self._events) < self.limit:
            return 0.0
        return max(0.0, self._events[0] + self.window - now)


class OffenceHistory:
    """When each address was blocked, remembered for ``memory`` seconds.

    Only applied blocks are recorded, and those are rate limited, so the history is bounded
    by ``max_per_minute * memory / 60`` entries without any extra cap.
    """

    def __init__(self, memory: float) -> None:
        self.memory = memory
        self._times: dict[str, deque[float]] = {}

    def _prune(self, key: str, now: float) -> deque[float] | None:
        times = self._times.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.memory:
            times.popleft()
        if not times:
            del self._times[key]
            return None
        return times

    def count(self, key: str, now: float) -> int:
        """Offences of ``key`` within the memory period before ``now``."""
        times = self._prune(key, now)
        return 0 if times is None else len(times)

    def record(self, key: str, now: float) -> None:
        self._prune(key, now)
        self._times.setdefault(key, deque()).append(now)

    def forget_expired(self, now: float) -> None:
        """Drop every address whose offences all lie outside the memory period."""
        for key in list(self._times):
            self._prune(key, now)


def escalated_ttl(base: int, factor: float, prior: int, max_ttl: int) -> int:
    """``base * factor**prior`` whole seconds, never more than ``max_ttl`` (nor less than 1).

    Computed stepwise and stopped at the cap, because a long offence history would
    overflow a float power.
    """
    ttl = float(base)
    for _ in range(prior):
        if ttl >= max_ttl:
            break
        ttl *= factor
    return max(1, min(max_ttl, int(-(-ttl // 1))))
