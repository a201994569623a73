"""What went wrong while reading input: a per-kind tally of skipped rows, and the fatal error.

Readers skip a malformed line and keep going, because one bad line in a year of conn.log
must not stop training; an operator still needs to know how many lines were dropped and
where to look. :class:`ProblemReport` keeps one counter per kind of problem and the first
place (``file:line``) and text it was seen at. Problems that make a whole input unusable
(unknown format, truncated gzip, missing required column) raise :class:`InputError`.
"""

from __future__ import annotations

from dataclasses import dataclass

ERROR = "error"
"""A row was skipped."""
WARNING = "warning"
"""Rows were kept, but something was assumed (e.g. a missing optional column read as 0)."""
IGNORED = "ignored"
"""Input that is valid but not for us (e.g. EVE events other than flows): counted, not a fault."""

_EXCERPT_CHARS = 120


class InputError(ValueError):
    """Input that cannot be read at all, or (strict mode) the first malformed line.

    The message names the file (and line, where there is one) so that it can be shown to
    the operator as it is, without a traceback.
    """

    def __init__(self, message: str, *, where: str | None = None, kind: str | None = None):
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where
        self.kind = kind
        self.reason = message


def where(source: str, line: int | None) -> str:
    """``file:line`` text for messages (just the file when the line is unknown)."""
    return source if line is None else f"{source}:{line}"


def excerpt(text: str | bytes) -> str:
    """A short printable form of an offending line."""
    if isinstance(text, bytes | bytearray | memoryview):
        text = bytes(text).decode("utf-8", errors="backslashreplace")
    text = text.rstrip("\r\n").replace("\t", "\\t")
    return text if len(text) <= _EXCERPT_CHARS else text[: _EXCERPT_CHARS - 3] + "..."


@dataclass
class Problem:
    """One kind of problem: how often it happened and where it was first seen."""

    kind: str
    severity: str
    count: int
    first_where: str
    reason: str
    excerpt: str = ""


class ProblemReport:
    """Counts problems per kind and remembers the first occurrence of each.

    One report can be shared by every file of a run; :meth:`summary` gives the text for
    the operator. Severity is fixed by the first occurrence of a kind.
    """

    def __init__(self) -> None:
        self.problems: dict[str, Problem] = {}

    def add(
        self,
        kind: str,
        where: str,
        reason: str,
        excerpt: str = "",
        *,
        count: int = 1,
        severity: str = ERROR,
    ) -> None:
        """Record ``count`` occurrences of ``kind``, the first of them at ``where``."""
        if count <= 0:
            return
        problem = self.problems.get(kind)
        if problem is None:
            self.problems[kind] = Problem(kind, severity, count, where, reason, excerpt)
        else:
            problem.count += count

    def count(self, kind: str) -> int:
        """How often ``kind`` was recorded (0 if never)."""
        problem = self.problems.get(kind)
        return problem.count if problem else 0

    def first(self, kind: str) -> Problem | None:
        """The record of ``kind``, or None."""
        return self.problems.get(kind)

    @property
    def skipped_rows(self) -> int:
        """Rows dropped because they were malformed (problems of severity error)."""
        return sum(p.count for p in self.problems.values() if p.severity == ERROR)

    def __bool__(self) -> bool:
        return bool(self.problems)

    def summary(self) -> str:
        """Human text: one line per kind, errors first, with the first place and excerpt."""
        if not self.problems:
            return "no input problems"
        order = {ERROR: 0, WARNING: 1, IGNORED: 2}
        lines = []
        skipped = self.skipped_rows
        if skipped:
            lines.append(f"{skipped} malformed line(s) skipped")
        for p in sorted(self.problems.values(), key=lambda p: (order.get(p.severity, 3), p.kind)):
            text = f"{p.severity} {p.kind}: {p.count} x, first at {p.first_where}: {p.reason}"
            if p.excerpt:
                text += f" [{p.excerpt}]"
            lines.append(text)
        return "\n".join(lines)


@dataclass
class Finding:
    """A problem found while decoding one block, before it is reported or raised."""

    kind: str
    line: int | None
    reason: str
    text: str | bytes = ""
    count: int = 1
    severity: str = ERROR


def settle(findings: list[Finding], report: ProblemReport, source: str, strict: bool) -> None:
    """Report a block's findings in line order, or in strict mode raise the earliest error.

    A block is decoded column by column, so its problems are found out of line order;
    sorting here keeps "first occurrence" and strict mode's "first problem" true to the file.
    """
    if not findings:
        return
    findings = sorted(findings, key=lambda f: -1 if f.line is None else f.line)
    if strict:
        for f in findings:
            if f.severity == ERROR:
                text = excerpt(f.text)
                reason = f"{f.reason} [{text}]" if text else f.reason
                raise InputError(reason, where=where(source, f.line), kind=f.kind)
    for f in findings:
        report.add(
            f.kind,
            where(source, f.line),
            f.reason,
            excerpt(f.text),
            count=f.count,
            severity=f.severity,
        )
