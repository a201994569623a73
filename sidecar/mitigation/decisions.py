"""What the enforcer answers: decisions (one per request, each audited) and block entries."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from seqwatch.sidecar.mitigation.firewall import Argv


class Outcome(enum.StrEnum):
    """The result of one request; ``refused-*`` and ``failed`` mean nothing was changed."""

    BLOCKED = "blocked"
    EXTENDED = "extended"  # already blocked; the block now lasts longer
    ALREADY_BLOCKED = "already-blocked"  # already blocked at least as long: no-op
    UNBLOCKED = "unblocked"
    NOT_BLOCKED = "not-blocked"  # unblock of an address that was not blocked: no-op
    ADOPTED = "adopted"  # reconcile: an entry from an earlier run is kept
    REMOVED = "removed"  # reconcile: an entry from an earlier run is dropped
    FLUSHED = "flushed"
    REFUSED_DISABLED = "refused-disabled"
    REFUSED_INVALID = "refused-invalid"
    REFUSED_FAMILY = "refused-family"
    REFUSED_ALLOWLISTED = "refused-allowlisted"
    REFUSED_CAP = "refused-cap"
    REFUSED_RATE = "refused-rate-limited"
    FAILED = "failed"

    @property
    def ok(self) -> bool:
        """True unless the request was refused or failed."""
        return not (self.value.startswith("refused") or self is Outcome.FAILED)


@dataclass(frozen=True)
class Decision:
    """One enforcer decision: what was asked, what happened and why.

    ``commands`` lists the firewall commands run for it (in dry-run mode: the commands that
    would have been run, against the simulated firewall).
    """

    outcome: Outcome
    action: str  # block | unblock | reconcile | flush
    address: str
    message: str
    source: str = ""
    reason: str = ""
    ttl: int | None = None
    expires: float | None = None
    offences: int = 0
    dry_run: bool = False
    commands: tuple[Argv, ...] = ()
    ts: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return self.outcome.ok

    def to_record(self, mode: str) -> dict[str, Any]:
        """The audit-log line for this decision."""
        record: dict[str, Any] = {
            "ts": round(self.ts, 3),
            "mode": mode,
            "action": self.action,
            "outcome": self.outcome.value,
            "address": self.address,
            "message": self.message,
        }
        optional = {
            "source": self.source,
            "reason": self.reason,
            "ttl": self.ttl,
            "expires": None if self.expires is None else round(self.expires, 3),
            "offences": self.offences,
            "dry_run": self.dry_run,
            "commands": [list(c) for c in self.commands],
        }
        record.update({k: v for k, v in optional.items() if v not in (None, "", 0, False, [])})
        return record


@dataclass(frozen=True)
class BlockEntry:
    """One current block as the firewall reports it."""

    address: str
    version: int
    remaining: int | None  # seconds; None = the entry has no timeout (not created by seqwatch)
    expires: float | None
    source: str = ""
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "family": f"ipv{self.version}",
            "remaining": self.remaining,
            "expires": None if self.expires is None else round(self.expires, 3),
            "source": self.source,
            "reason": self.reason,
        }


def entry_comment(source: str, reason: str) -> str:
    """The ipset comment that remembers who asked for a block and why."""
    return f"{source}: {reason}" if reason else source


def split_comment(comment: str) -> tuple[str, str]:
    """Inverse of :func:`entry_comment` (as far as comment cleaning allows)."""
    source, sep, reason = comment.partition(": ")
    return (source, reason) if sep else (comment, "")


def format_remaining(seconds: int | None) -> str:
    """``1h02m03s`` style, for people."""
    if seconds is None:
        return "no timeout"
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def format_status(entries: list[BlockEntry]) -> str:
    """A fixed-width table of current blocks."""
    if not entries:
        return "no addresses blocked\n"
    rows = [("ADDRESS", "REMAINING", "EXPIRES (UTC)", "SOURCE", "REASON")]
    for e in entries:
        expires = (
            "-" if e.expires is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.expires))
        )
        rows.append((e.address, format_remaining(e.remaining), expires, e.source, e.reason))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(row[i].ljust(widths[i]) for i in range(4)) + "  " + row[4] for row in rows]
    return "\n".join(line.rstrip() for line in lines) + "\n"
