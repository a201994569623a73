"""Per-host sequence windows (DESIGN.md, "Sequences"): the one implementation.

For every host active in interval t the window is that host's vectors for the T+1
intervals ending at t, zeros where it had no traffic. Training builds its windows with
:class:`HostWindows` and so does the sidecar, so the model sees the same thing in both.

Storage is a ring of T+1 slots per host in one numpy array, plus the interval index that
each slot holds; gathering a window masks slots that hold an older interval, so gaps
need no clearing. Memory is bounded: a host idle for T intervals is dropped (its next
window could not contain any of its history), and past ``max_hosts`` the least recently
active hosts are evicted and counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from seqwatch.sidecar.features import IntervalFeatures
from seqwatch.sidecar.schema import DEFAULT_WINDOW, N_FEATURES

_EMPTY = np.iinfo(np.int64).min


class IntervalOrderError(ValueError):
    """An interval arrived after a later one had been taken (it is too old to use)."""


class HostWindows:
    """Ring buffers of the last T+1 interval vectors of every tracked host."""

    def __init__(
        self,
        window: int = DEFAULT_WINDOW,
        n_features: int = N_FEATURES,
        max_hosts: int = 1_000_000,
        initial_capacity: int = 1024,
    ):
        if window < 1:
            raise ValueError(f"window must be >= 1 interval, got {window}")
        if max_hosts < 1:
            raise ValueError(f"max_hosts must be >= 1, got {max_hosts}")
        self.window = window
        self.length = window + 1
        self.n_features = n_features
        self.max_hosts = max_hosts
        capacity = max(1, min(initial_capacity, max_hosts))
        self._buf = np.zeros((capacity, self.length, n_features), dtype=np.float32)
        self._held = np.full((capacity, self.length), _EMPTY, dtype=np.int64)
        self._last = np.full(capacity, _EMPTY, dtype=np.int64)
        self._host_of = np.full(capacity, None, dtype=object)
        self._slot: dict[str, int] = {}
        self._free: list[int] = list(range(capacity - 1, -1, -1))
        self.current_bin: int | None = None
        self.evictions = 0
        """Hosts dropped to stay under ``max_hosts`` (a flood of new sources)."""
        self.expired = 0
        """Hosts dropped after T idle intervals."""

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, host: str) -> bool:
        return host in self._slot

    @property
    def capacity(self) -> int:
        return self._buf.shape[0]

    def nbytes(self) -> int:
        """Bytes held by the ring arrays (the per-host cost, without the dict)."""
        return self._buf.nbytes + self._held.nbytes + self._last.nbytes + self._host_of.nbytes

    def update(self, bin_: int, hosts: Sequence[str], values: np.ndarray) -> np.ndarray:
        """Record interval ``bin_``'s vectors and return these hosts' windows.

        Returns float32 ``[len(hosts), T+1, d]``, oldest interval first. An interval may be
        given in several parts (chunks of hosts); an interval older than the newest one
        taken raises :class:`IntervalOrderError`.
        """
        return self._gather(self._put(bin_, hosts, values), bin_)

    def record(self, bin_: int, hosts: Sequence[str], values: np.ndarray) -> None:
        """Like :meth:`update`, without gathering windows (the sidecar scores later)."""
        self._put(bin_, hosts, values)

    def windows(self, bin_: int, hosts: Sequence[str]) -> np.ndarray:
        """Windows ending at ``bin_`` for tracked hosts, without recording anything."""
        slots = np.array([self._slot[h] for h in hosts], dtype=np.int64)
        return self._gather(slots, bin_)

    # -- internals --------------------------------------------------------------------
    def _put(self, bin_: int, hosts: Sequence[str], values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float32)
        if values.shape != (len(hosts), self.n_features):
            raise ValueError(
                f"expected values of shape ({len(hosts)}, {self.n_features}), got {values.shape}"
            )
        if self.current_bin is not None and bin_ < self.current_bin:
            raise IntervalOrderError(
                f"interval {bin_} arrived after interval {self.current_bin} was taken"
            )
        if self.current_bin is None or bin_ > self.current_bin:
            self.current_bin = bin_
            self._expire(bin_)
        slots = self._slots_for(hosts, bin_)
        pos = bin_ % self.length
        self._buf[slots, pos] = values
        self._held[slots, pos] = bin_
        self._last[slots] = bin_
        return slots

    def _gather(self, slots: np.ndarray, bin_: int) -> np.ndarray:
        wanted = bin_ - self.window + np.arange(self.length, dtype=np.int64)
        positions = wanted % self.length
        out = self._buf[slots[:, None], positions[None, :]]
        stale = self._held[slots[:, None], positions[None, :]] != wanted[None, :]
        out[stale] = 0.0
        return out

    def _expire(self, bin_: int) -> None:
        if not self._slot:
            return
        idle = np.flatnonzero((self._last != _EMPTY) & (self._last < bin_ - self.window))
        for slot in idle:
            self._release(int(slot))
        self.expired += len(idle)

    def _release(self, slot: int) -> None:
        del self._slot[self._host_of[slot]]
        self._host_of[slot] = None
        self._last[slot] = _EMPTY
        self._held[slot] = _EMPTY
        self._free.append(slot)

    def _slots_for(self, hosts: Sequence[str], bin_: int) -> np.ndarray:
        get = self._slot.get
        slots = np.fromiter((get(h, -1) for h in hosts), dtype=np.int64, count=len(hosts))
        new = np.flatnonzero(slots < 0)
        if len(new):
            self._make_room(len(new), bin_)
            for i in new:
                host = hosts[i]
                slot = self._slot.get(host)  # the same host twice in one call
                if slot is None:
                    slot = self._free.pop()
                    self._slot[host] = slot
                    self._host_of[slot] = host
                    self._held[slot] = _EMPTY
                slots[i] = slot
        return slots

    def _make_room(self, needed: int, bin_: int) -> None:
        if len(self._free) >= needed:
            return
        if self.capacity < self.max_hosts:
            self._grow(min(self.max_hosts, max(self.capacity * 2, len(self._slot) + needed)))
        short = needed - len(self._free)
        if short > 0:
            # Evict the least recently active hosts, but never one active in this interval.
            candidates = np.flatnonzero((self._last != _EMPTY) & (self._last < bin_))
            if len(candidates) < short:
                raise OverflowError(
                    f"more than max_hosts={self.max_hosts} hosts active in interval {bin_}"
                )
            order = np.argpartition(self._last[candidates], short - 1)[:short]
            for slot in candidates[order]:
                self._release(int(slot))
            self.evictions += short

    def _grow(self, capacity: int) -> None:
        old = self.capacity
        extra = capacity - old
        self._buf = np.concatenate(
            [self._buf, np.zeros((extra, self.length, self.n_features), np.float32)]
        )
        self._held = np.concatenate([self._held, np.full((extra, self.length), _EMPTY, np.int64)])
        self._last = np.concatenate([self._last, np.full(extra, _EMPTY, np.int64)])
        self._host_of = np.concatenate([self._host_of, np.full(extra, None, dtype=object)])
        self._free.extend(range(capacity - 1, old - 1, -1))


def iter_windows(
    intervals: Iterable[IntervalFeatures],
    window: int = DEFAULT_WINDOW,
    max_hosts: int = 1_000_000,
) -> Iterator[tuple[IntervalFeatures, np.ndarray]]:
    """Pair each interval with its hosts' windows (the offline side of the sidecar's path)."""
    buffers = HostWindows(window=window, max_hosts=max_hosts)
    for interval in intervals:
        if len(interval):
            yield interval, buffers.update(interval.bin, interval.hosts, interval.values)
