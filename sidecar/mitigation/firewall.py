"""Running firewall programs: the ``Firewall`` abstraction and the real, subprocess-backed one.

Everything above this layer builds argument vectors (``["ipset", "add", ...]``) and hands
them to a ``Firewall``; nothing is ever passed through a shell, and the only values that
reach those vectors are validated names from the configuration and addresses already
parsed by ``ipaddress``. Swapping the runner for ``SimulatedFirewall`` makes the policy and
the command building testable without root, and gives dry-run mode its in-memory state.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

# Programs seqwatch may run. ``ip`` reads the host's addresses and enters namespaces.
PROGRAMS = ("ip", "ipset", "iptables", "ip6tables")
# Root's usual sbin directories are searched too, because service managers and sudo often
# hand a PATH without them to the sidecar.
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
CAP_NET_ADMIN = 12
# A firewall program that takes longer than this is stuck (e.g. on the xtables lock).
COMMAND_TIMEOUT = 30.0

Argv = tuple[str, ...]
"""One command as an argument vector, program name first."""


class MitigationUnavailable(RuntimeError):
    """Enforcement cannot work here: a program, a privilege or the namespace is missing."""


class FirewallError(RuntimeError):
    """A firewall command failed; carries the argument vector and the program's stderr."""

    def __init__(self, result: RunResult) -> None:
        self.result = result
        detail = result.stderr.strip() or result.stdout.strip() or "no output"
        super().__init__(f"{' '.join(result.argv)} failed (exit {result.returncode}): {detail}")


@dataclass(frozen=True)
class RunResult:
    """Outcome of one command."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def check(self) -> RunResult:
        """Return self, or raise FirewallError when the command failed."""
        if not self.ok:
            raise FirewallError(self)
        return self


class Firewall(Protocol):
    """Runs firewall programs. Argument vectors start with a name from ``PROGRAMS``."""

    def run(self, argv: Sequence[str]) -> RunResult:
        """Run one command and return its result; never raises for a non-zero exit."""
        ...

    def missing_programs(self, names: Iterable[str]) -> list[str]:
        """The names among ``names`` that cannot be run."""
        ...

    def has_net_admin(self) -> bool:
        """Whether this process may change the firewall (CAP_NET_ADMIN)."""
        ...


def find_program(name: str) -> str | None:
    """Absolute path of a program on PATH or in the sbin directories, or None."""
    search = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN])
    return shutil.which(name, path=search)


def effective_capabilities(status_path: str = "/proc/self/status") -> int:
    """The effective capability mask of this process (0 when it cannot be read)."""
    try:
        with open(status_path, encoding="ascii") as handle:
            for line in handle:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return 0


class SubprocessFirewall:
    """The real runner: executes the programs directly, optionally inside a network namespace.

    With ``netns`` every command becomes ``ip netns exec NETNS PROGRAM ...``, which is how the
    tests confine their firewall changes to a namespace they created.
    """

    def __init__(self, netns: str | None = None, timeout: float = COMMAND_TIMEOUT) -> None:
        self.netns = netns
        self.timeout = timeout
        self._paths: dict[str, str | None] = {}

    def _path(self, name: str) -> str | None:
        if name not in self._paths:
            self._paths[name] = find_program(name)
        return self._paths[name]

    def missing_programs(self, names: Iterable[str]) -> list[str]:
        needed = list(names)
        if self.netns is not None and "ip" not in needed:
            needed.append("ip")
        return [name for name in needed if self._path(name) is None]

    def has_net_admin(self) -> bool:
        return bool(effective_capabilities() & (1 << CAP_NET_ADMIN))

    def run(self, argv: Sequence[str]) -> RunResult:
        if not argv or argv[0] not in PROGRAMS:
            # A programming error, not an operational one: only known programs are run.
            raise ValueError(f"not a firewall program: {argv[:1]!r}")
        program = self._path(argv[0])
        if program is None:
            raise MitigationUnavailable(f"{argv[0]} not found on PATH or in {', '.join(_SBIN)}")
        full = [program, *argv[1:]]
        if self.netns is not None:
            ip = self._path("ip")
            if ip is None:
                raise MitigationUnavailable("ip (iproute2) not found; needed for netns")
            full = [ip, "netns", "exec", self.netns, *full]
        try:
            done = subprocess.run(
                full,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
                # The C locale keeps the programs' messages parseable and in English.
                env={**os.environ, "LC_ALL": "C"},
            )
        except subprocess.TimeoutExpired:
            return RunResult(tuple(argv), 124, "", f"timed out after {self.timeout:g} s")
        except OSError as exc:
            raise MitigationUnavailable(f"cannot run {argv[0]}: {exc.strerror}") from None
        return RunResult(tuple(argv), done.returncode, done.stdout, done.stderr)
