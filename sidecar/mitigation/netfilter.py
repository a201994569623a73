"""The netfilter objects seqwatch owns, and the exact commands that create, read and remove them.

Per IP family seqwatch owns one ipset (``hash:ip`` with per-entry timeouts and comments),
one chain in the filter table whose rules drop packets matching the set, and one jump to
that chain at the top of each configured built-in chain::

    ipset create seqwatch4 hash:ip family inet timeout 600 maxelem 65536 comment
    iptables -w -N SEQWATCH
    iptables -w -A SEQWATCH -m set --match-set seqwatch4 src -j DROP
    iptables -w -I INPUT 1 -m comment --comment seqwatch -j SEQWATCH

Blocking and unblocking only touch set entries, so the rules never change at run time and
an entry's timeout is enforced by the kernel even if the sidecar dies. Everything here is
identified by the configured names, which is what lets ``flush`` remove exactly what
seqwatch created and nothing else.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise

from seqwatch.sidecar.mitigation.allowlist import IPAddress, parse_address
from seqwatch.sidecar.mitigation.config import IPSET_MAXELEM, MitigationConfig
from seqwatch.sidecar.mitigation.firewall import (
    Argv,
    Firewall,
    MitigationUnavailable,
    RunResult,
)

BUILTIN_CHAINS = ("INPUT", "FORWARD", "OUTPUT")
JUMP_COMMENT = "seqwatch"
# ipset limits a comment to 255 bytes. Double quotes and backslashes are left out so that
# `ipset save` output always splits back cleanly (it wraps comments in double quotes).
COMMENT_MAX_BYTES = 200
_COMMENT_BANNED = frozenset('"\\')


def clean_comment(text: str) -> str:
    """A set-entry comment from free text: printable, one line, at most 200 UTF-8 bytes."""
    cleaned = "".join(ch if ch.isprintable() and ch not in _COMMENT_BANNED else " " for ch in text)
    cleaned = " ".join(cleaned.split())
    # Cut on a character boundary: never leave half of a multi-byte character.
    return cleaned.encode()[:COMMENT_MAX_BYTES].decode(errors="ignore")


@dataclass(frozen=True)
class SetEntry:
    """One address in one of seqwatch's sets, as the kernel reports it."""

    address: IPAddress
    remaining: int | None  # seconds until the kernel removes it; None = no timeout
    comment: str = ""


@dataclass(frozen=True)
class SetHeader:
    """The ``create`` line of ``ipset save``: type, family and the extensions in use."""

    name: str
    kind: str
    family: str
    options: frozenset[str] = field(default_factory=frozenset)


def _family_name(version: int) -> str:
    return "inet" if version == 4 else "inet6"


class Netfilter:
    """Builds and runs the ipset/iptables commands for one configuration."""

    def __init__(self, firewall: Firewall, config: MitigationConfig) -> None:
        self.firewall = firewall
        self.config = config

    # -- command helpers ----------------------------------------------------------------

    def _run(self, argv: list[str], log: list[Argv] | None = None) -> RunResult:
        result = self.firewall.run(argv).check()
        if log is not None:
            log.append(tuple(argv))
        return result

    @staticmethod
    def _iptables(version: int) -> list[str]:
        # -w waits for the xtables lock instead of failing when another tool holds it.
        return ["iptables" if version == 4 else "ip6tables", "-w"]

    def jump_spec(self) -> list[str]:
        """The rule spec of the jump from a built-in chain to seqwatch's chain."""
        return ["-m", "comment", "--comment", JUMP_COMMENT, "-j", self.config.chain]

    def drop_specs(self, version: int) -> list[list[str]]:
        """The rule specs inside seqwatch's chain: one DROP per matched direction."""
        name = self.config.set_name(version)
        return [
            ["-m", "set", "--match-set", name, direction, "-j", "DROP"]
            for direction in self.config.directions
        ]

    # -- reading ------------------------------------------------------------------------

    def set_names(self) -> set[str]:
        """Names of all ipsets that exist (in the namespace, if one is configured)."""
        return set(self._run(["ipset", "list", "-n"]).stdout.split())

    def set_header(self, name: str) -> SetHeader | None:
        """The header of set ``name``, or None when it does not exist."""
        if name not in self.set_names():
            return None
        for line in self._run(["ipset", "save", name]).stdout.splitlines():
            tokens = line.split()
            if tokens[:2] == ["create", name] and len(tokens) >= 3:
                opts = _options(tokens[3:], _HEADER_VALUED)
                return SetHeader(name, tokens[2], opts.get("family", ""), frozenset(opts))
        return None

    def entries(self, version: int) -> list[SetEntry]:
        """Current entries of the set for ``version`` (empty when the set does not exist)."""
        name = self.config.set_name(version)
        result = self.firewall.run(["ipset", "save", name])
        if not result.ok and "does not exist" in result.stderr:
            return []
        return list(parse_save(result.check().stdout, name))

    def chain_rules(self, version: int, chain: str) -> list[list[str]] | None:
        """Rule specs (without ``-A CHAIN``) of ``chain``, or None when it does not exist."""
        result = self.firewall.run([*self._iptables(version), "-S", chain])
        if not result.ok:
            return None
        rules = []
        for line in result.stdout.splitlines():
            try:
                tokens = shlex.split(line)
            except ValueError:
                continue  # a rule we cannot parse is not one of ours
            if tokens[:2] == ["-A", chain]:
                rules.append(tokens[2:])
        return rules

    def _has_rule(self, version: int, chain: str, spec: list[str]) -> bool:
        return self.firewall.run([*self._iptables(version), "-C", chain, *spec]).ok

    def _jumps_to_ours(self, rules: list[list[str]]) -> list[list[str]]:
        target = self.config.chain
        return [
            spec
            for spec in rules
            if any(a in ("-j", "-g") and b == target for a, b in pairwise(spec))
        ]

    # -- creating -----------------------------------------------------------------------

    def ensure(self) -> list[Argv]:
        """Create what is missing (sets, chain, rules, jumps); return the commands run.

        Existing objects are kept: a set with entries from an earlier run survives, and a
        rule is added only when ``iptables -C`` says it is missing.
        """
        done: list[Argv] = []
        for version in self.config.families:
            self._ensure_set(version, done)
            self._ensure_chain(version, done)
            self._ensure_jumps(version, done)
        return done

    def _ensure_set(self, version: int, done: list[Argv]) -> None:
        name = self.config.set_name(version)
        header = self.set_header(name)
        family = _family_name(version)
        if header is None:
            options = ["timeout", str(self.config.ttl), "maxelem", str(IPSET_MAXELEM), "comment"]
            self._run(["ipset", "create", name, "hash:ip", "family", family, *options], done)
            return
        problems = []
        if header.kind != "hash:ip":
            problems.append(f"type {header.kind} instead of hash:ip")
        if header.family != family:
            problems.append(f"family {header.family} instead of {family}")
        problems += [
            f"no {ext} support" for ext in ("timeout", "comment") if ext not in header.options
        ]
        if problems:
            raise MitigationUnavailable(
                f"ipset {name!r} exists but does not fit ({'; '.join(problems)}); "
                f"configure other set names or remove it (seqwatch mitigation flush)"
            )

    def _ensure_chain(self, version: int, done: list[Argv]) -> None:
        chain = self.config.chain
        ipt = self._iptables(version)
        current = self.chain_rules(version, chain)
        if current is None:
            self._run([*ipt, "-N", chain], done)
            current = []
        wanted = self.drop_specs(version)
        # Rules in our own chain that the configuration no longer asks for (e.g. a direction
        # that was switched off) are ours to remove.
        for spec in current:
            if spec not in wanted:
                self._run([*ipt, "-D", chain, *spec], done)
        for spec in wanted:
            if not self._has_rule(version, chain, spec):
                self._run([*ipt, "-A", chain, *spec], done)

    def _ensure_jumps(self, version: int, done: list[Argv]) -> None:
        ipt = self._iptables(version)
        jump = self.jump_spec()
        for hook in BUILTIN_CHAINS:
            if hook in self.config.chains:
                if not self._has_rule(version, hook, jump):
                    # First position: the block must win over earlier ACCEPT rules such as
                    # "ESTABLISHED,RELATED", or an offender's open sessions would survive.
                    self._run([*ipt, "-I", hook, "1", *jump], done)
            else:
                for spec in self._jumps_to_ours(self.chain_rules(version, hook) or []):
                    self._run([*ipt, "-D", hook, *spec], done)

    # -- entries ------------------------------------------------------------------------

    def add(self, address: IPAddress, ttl: int, comment: str) -> Argv:
        """Put ``address`` into its set for ``ttl`` seconds (replacing any earlier timeout)."""
        address = parse_address(address)
        name = self.config.set_name(address.version)
        argv = ["ipset", "add", "-exist", name, address.compressed, "timeout", str(int(ttl))]
        if comment := clean_comment(comment):
            argv += ["comment", comment]
        self._run(argv)
        return tuple(argv)

    def delete(self, address: IPAddress) -> Argv:
        """Remove ``address`` from its set; no error when it is not there."""
        address = parse_address(address)
        argv = ["ipset", "del", "-exist", self.config.set_name(address.version), address.compressed]
        self._run(argv)
        return tuple(argv)

    # -- removing everything ------------------------------------------------------------

    def flush(self) -> list[Argv]:
        """Remove every jump, chain and set seqwatch created, in both families.

        Both families are cleaned whatever ``ip6`` says now, because an earlier run may have
        had it on. Objects that do not exist are skipped; nothing else is touched.
        """
        done: list[Argv] = []
        programs = {4: "iptables", 6: "ip6tables"}
        for version in (4, 6):
            if self.firewall.missing_programs([programs[version]]):
                continue
            ipt = self._iptables(version)
            for hook in BUILTIN_CHAINS:
                for spec in self._jumps_to_ours(self.chain_rules(version, hook) or []):
                    self._run([*ipt, "-D", hook, *spec], done)
            if self.chain_rules(version, self.config.chain) is not None:
                self._run([*ipt, "-F", self.config.chain], done)
                self._run([*ipt, "-X", self.config.chain], done)
        existing = self.set_names()
        for name in (self.config.set4, self.config.set6):
            if name in existing:
                self._run(["ipset", "destroy", name], done)
        return done


# Options that take a value on `ipset save` lines; every other word is a flag.
_HEADER_VALUED = {"family", "hashsize", "maxelem", "timeout", "bucketsize", "initval", "netmask"}
_ENTRY_VALUED = {"timeout", "comment", "packets", "bytes", "skbmark", "skbprio", "skbqueue"}


def _options(tokens: list[str], valued: set[str]) -> dict[str, str]:
    """Options of an ipset line: ``timeout 60 comment`` -> {timeout: 60, comment: ''}."""
    options: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        key = tokens[i]
        if key in valued and i + 1 < len(tokens):
            options[key] = tokens[i + 1]
            i += 2
        else:
            options[key] = ""
            i += 1
    return options


def parse_save(text: str, name: str) -> Iterator[SetEntry]:
    """Entries of set ``name`` from ``ipset save`` output."""
    for line in text.splitlines():
        if not line.startswith(f"add {name} "):
            continue
        try:
            tokens = shlex.split(line)
        except ValueError:
            tokens = line.split()  # an unbalanced quote in a foreign comment
        try:
            address = parse_address(tokens[2])
        except (IndexError, ValueError):
            continue
        options = _options(tokens[3:], _ENTRY_VALUED)
        timeout = options.get("timeout")
        remaining = int(timeout) if timeout and timeout.isdigit() else None
        # ipset reports "timeout 0" for an entry added without one to a timeout set.
        yield SetEntry(address, remaining if remaining else None, options.get("comment", ""))
