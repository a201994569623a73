"""The enforcer: turns block requests into ipset entries, under the safety policy.

Order of checks for a block request, each refusal audited with its reason:

1. mode ``off`` -> refused; malformed address -> refused; IPv6 with ``ip6 = false`` -> refused
2. allowlist (built-in ranges, peers, configured nets, the host's own addresses) -> refused
3. already blocked -> extended when the new block would last longer, else a no-op
4. concurrent cap, then the per-minute rate of *new* blocks -> refused
5. block for ``ttl * escalation ** prior_offences`` seconds, capped at ``max_ttl``

The kernel's sets are the source of truth for what is blocked (entries expire there even if
the sidecar dies, and ``seqwatch mitigation unblock`` acts from another process), so the
enforcer reads them before each decision instead of trusting a private copy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial

from seqwatch.sidecar.mitigation.allowlist import (
    AllowEntry,
    Allowlist,
    IPAddress,
    host_entries,
    parse_address,
)
from seqwatch.sidecar.mitigation.audit import AuditLog
from seqwatch.sidecar.mitigation.config import MitigationConfig, Mode, Reconcile
from seqwatch.sidecar.mitigation.decisions import (
    BlockEntry,
    Decision,
    Outcome,
    entry_comment,
    split_comment,
)
from seqwatch.sidecar.mitigation.firewall import (
    Argv,
    Firewall,
    FirewallError,
    MitigationUnavailable,
    SubprocessFirewall,
    find_program,
)
from seqwatch.sidecar.mitigation.netfilter import Netfilter, SetEntry
from seqwatch.sidecar.mitigation.policy import OffenceHistory, SlidingWindowLimiter, escalated_ttl
from seqwatch.sidecar.mitigation.simulated import SimulatedFirewall

log = logging.getLogger("seqwatch.mitigation")

# The host's addresses are re-read this often, so a DHCP renewal or a new interface is
# protected within a minute without running `ip` for every request.
HOST_REFRESH = 60.0
# A request that would lengthen a block by less than this is a no-op, so that duplicate
# requests do not rewrite the entry every time (ipset reports whole seconds, rounded down).
EXTEND_SLACK = 2


class Enforcer:
    """Applies, lifts and lists blocks; see the module docstring for the policy.

    ``firewall`` defaults to the real programs (optionally in ``config.netns``), or in
    dry-run mode to a :class:`SimulatedFirewall`. ``clock`` returns epoch seconds and drives
    TTL arithmetic, the rate limit and the offence memory.
    """

    def __init__(
        self,
        config: MitigationConfig,
        firewall: Firewall | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        if firewall is None:
            firewall = _default_firewall(config, clock)
        self.firewall = firewall
        self.netfilter = Netfilter(firewall, config)
        self.audit = AuditLog(config.audit_log)
        self.limiter = SlidingWindowLimiter(config.max_per_minute)
        self.history = OffenceHistory(config.offence_memory)
        self._static = Allowlist.build(config.allowlist, config.peers)
        self._allowlist = self._static
        self._host_read_at: float | None = None
        self._checked = False
        self._started = False
        self._lock = threading.RLock()

    @property
    def mode(self) -> Mode:
        return self.config.mode

    @property
    def dry_run(self) -> bool:
        return self.config.mode is Mode.DRY_RUN

    # -- start-up -----------------------------------------------------------------------

    def check(self) -> None:
        """Raise MitigationUnavailable naming what is missing: programs, privilege, kernel.

        Dry-run mode needs nothing (it never touches the real firewall).
        """
        if self._checked or self.dry_run:
            return
        needed = ["ipset", "iptables"]
        if self.config.ip6:
            needed.append("ip6tables")
        if self.config.protect_host or self.config.netns:
            needed.append("ip")
        missing = self.firewall.missing_programs(needed)
        if missing:
            raise MitigationUnavailable(
                f"mitigation needs {', '.join(missing)}, not found "
                "(install the iptables and ipset packages)"
            )
        if not self.firewall.has_net_admin():
            raise MitigationUnavailable(
                "mitigation needs the CAP_NET_ADMIN privilege: run the sidecar as root or grant "
                "it (systemd: AmbientCapabilities=CAP_NET_ADMIN)"
            )
        # The programs exist and we hold the privilege; the kernel may still lack ipset or
        # nf_tables support, or the namespace may not exist. One harmless read of each shows.
        probes = [["ipset", "list", "-n"], ["iptables", "-w", "-S", "INPUT"]]
        if self.config.ip6:
            probes.append(["ip6tables", "-w", "-S", "INPUT"])
        for argv in probes:
            result = self.firewall.run(argv)
            if not result.ok:
                where = f" in netns {self.config.netns}" if self.config.netns else ""
                detail = result.stderr.strip() or f"exit {result.returncode}"
                raise MitigationUnavailable(f"{argv[0]} does not work{where}: {detail}")
        self._checked = True

    def start(self) -> list[Decision]:
        """Check the host, open the audit log, create missing objects, reconcile old entries.

        Returns the reconcile decisions (also audited). Does nothing in mode ``off`` or
        when already started.
        Raises MitigationUnavailable with a message naming what is missing.
        """
        with self._lock:
            if self.mode is Mode.OFF or self._started:
                return []
            self.check()
            self.audit.open()
            self._refresh_host(self.clock(), strict=True)
            try:
                created = self.netfilter.ensure()
            except FirewallError as exc:
                raise MitigationUnavailable(f"cannot set up the firewall: {exc}") from None
            if created:
                log.info("created %d firewall objects", len(created))
            decisions = self._reconcile()
            self._started = True
            return decisions

    def _reconcile(self) -> list[Decision]:
        now = self.clock()
        decisions = []
        for version in self.config.families:
            for entry in self.netfilter.entries(version):
                decisions.append(self._reconcile_entry(entry, now))
        return decisions

    def _reconcile_entry(self, entry: SetEntry, now: float) -> Decision:
        address = entry.address.compressed
        source, reason = split_comment(entry.comment)
        common = {
            "action": "reconcile",
            "address": address,
            "source": source,
            "reason": reason,
            "ts": now,
        }
        protected = self._allowlist.match(entry.address)
        if protected is not None or self.config.reconcile is Reconcile.REMOVE:
            why = (
                f"removed: now allowlisted as {protected.describe()}"
                if protected is not None
                else "removed: reconcile = remove"
            )
            argv = self.netfilter.delete(entry.address)
            return self._record(Decision(Outcome.REMOVED, message=why, commands=(argv,), **common))
        commands: tuple[Argv, ...] = ()
        remaining = entry.remaining
        message = "adopted from an earlier run"
        if remaining is None or remaining > self.config.max_ttl:
            # No block outlives max_ttl, whoever created it.
            remaining = self.config.max_ttl
            commands = (self.netfilter.add(entry.address, remaining, entry.comment),)
            message += f"; timeout clamped to max_ttl ({remaining} s)"
        # An adopted block is an offence, so escalation carries across restarts.
        self.history.record(address, now)
        return self._record(
            Decision(
                Outcome.ADOPTED,
                message=message,
                ttl=remaining,
                expires=now + remaining,
                offences=self.history.count(address, now),
                commands=commands,
                **common,
            )
        )

    # -- blocking -----------------------------------------------------------------------

    def block(
        self, addr: object, reason: str, *, ttl: float | None = None, source: str = "verdict"
    ) -> Decision:
        """Block ``addr`` (text or ``ipaddress`` object) if the policy allows; never raises.

        ``ttl`` (seconds) overrides the escalated policy TTL, capped at ``max_ttl``; None or
        a value <= 0 means "use the policy". ``source`` and ``reason`` are stored in the
        audit log and as the set entry's comment.
        """
        with self._lock:
            return self._record(self._block(addr, reason, ttl, source))

    def _block(self, addr: object, reason: str, ttl: float | None, source: str) -> Decision:
        now = self.clock()
        decide = partial(Decision, action="block", source=source, reason=reason, ts=now)
        if self.mode is Mode.OFF:
            return decide(Outcome.REFUSED_DISABLED, address=str(addr), message="mode is off")
        try:
            address = parse_address(addr)
        except ValueError as exc:
            return decide(Outcome.REFUSED_INVALID, address=str(addr), message=str(exc))
        decide = partial(decide, address=address.compressed)
        if address.version == 6 and not self.config.ip6:
            return decide(Outcome.REFUSED_FAMILY, message="IPv6 enforcement is off (ip6 = false)")
        if not self._started:
            return decide(Outcome.FAILED, message="enforcer not started (or flushed)")
        protected = self._allowlist_at(now).match(address)
        if protected is not None:
            return decide(
                Outcome.REFUSED_ALLOWLISTED, message=f"never blocked: {protected.describe()}"
            )
        try:
            return self._apply_block(address, entry_comment(source, reason), ttl, now, decide)
        except (FirewallError, MitigationUnavailable) as exc:
            log.error("block of %s failed: %s", address, exc)
            return decide(Outcome.FAILED, message=str(exc))

    def _apply_block(
        self,
        address: IPAddress,
        comment: str,
        ttl: float | None,
        now: float,
        decide: Callable[..., Decision],
    ) -> Decision:
        """Steps 3-5 of the policy, for an address that passed the allowlist."""
        prior = self.history.count(address.compressed, now)
        entries = {e.address: e for v in self.config.families for e in self.netfilter.entries(v)}
        current = entries.get(address)
        decide = partial(decide, offences=prior, dry_run=self.dry_run)
        if current is not None:
            # The current block is the latest offence: a repeat request gets that tier's TTL
            # again (refreshing the block), not the next tier.
            want = self._ttl(ttl, max(prior - 1, 0))
            left = current.remaining
            if left is not None and want > left + EXTEND_SLACK:
                argv = self.netfilter.add(address, want, comment)
                return decide(
                    Outcome.EXTENDED,
                    ttl=want,
                    expires=now + want,
                    commands=(argv,),
                    message=f"already blocked for {left} s more; extended to {want} s",
                )
            return decide(
                Outcome.ALREADY_BLOCKED,
                ttl=left,
                expires=None if left is None else now + left,
                message="already blocked at least as long; nothing to do",
            )
        if len(entries) >= self.config.max_concurrent:
            return decide(
                Outcome.REFUSED_CAP,
                message=f"concurrent block cap reached ({len(entries)} blocked, "
                f"max_concurrent = {self.config.max_concurrent})",
            )
        if not self.limiter.allowed(now):
            return decide(
                Outcome.REFUSED_RATE,
                message=f"rate limit reached (max_per_minute = {self.config.max_per_minute}); "
                f"next slot in {self.limiter.retry_after(now):.0f} s",
            )
        want = self._ttl(ttl, prior)
        argv = self.netfilter.add(address, want, comment)
        self.limiter.record(now)
        self.history.record(address.compressed, now)
        verb = "dry-run: would block" if self.dry_run else "blocked"
        tier = f", offence {prior + 1} within offence_memory" if ttl is None or ttl <= 0 else ""
        return decide(
            Outcome.BLOCKED,
            ttl=want,
            expires=now + want,
            offences=prior + 1,
            commands=(argv,),
            message=f"{verb} for {want} s{tier}",
        )

    def _ttl(self, requested: float | None, prior: int) -> int:
        """The TTL for a block: the request's (capped) or the escalated policy TTL."""
        if requested is not None and requested > 0:
            return max(1, min(self.config.max_ttl, int(-(-requested // 1))))
        return escalated_ttl(self.config.ttl, self.config.escalation, prior, self.config.max_ttl)

    # -- the host's own addresses -------------------------------------------------------

    def _allowlist_at(self, now: float) -> Allowlist:
        if self._host_read_at is None or now - self._host_read_at >= HOST_REFRESH:
            self._refresh_host(now, strict=False)
        return self._allowlist

    def _refresh_host(self, now: float, *, strict: bool) -> None:
        if not self.config.protect_host:
            return
        try:
            host: list[AllowEntry] = host_entries(self.firewall)
        except (FirewallError, MitigationUnavailable, ValueError) as exc:
            if strict:
                raise MitigationUnavailable(f"cannot read this host's addresses: {exc}") from None
            # Keep the previous list: it protected the host a minute ago and is the best
            # knowledge we have; retry at the next refresh.
            log.warning("cannot re-read this host's addresses, keeping the old list: %s", exc)
            self._host_read_at = now
            return
        self._allowlist = Allowlist(list(self._static.entries) + host)
        self._host_read_at = now

    def protected(self) -> tuple[AllowEntry, ...]:
        """The allowlist currently in force (built-in, peers, configured, host)."""
        with self._lock:
            return self._allowlist_at(self.clock()).entries

    # -- unblock, status, flush ---------------------------------------------------------

    def unblock(self, addr: object, *, source: str = "operator", reason: str = "") -> Decision:
        """Remove ``addr`` from the sets (idempotent). Works in every mode, also ``off``."""
        with self._lock:
            return self._record(self._unblock(addr, source, reason))

    def _unblock(self, addr: object, source: str, reason: str) -> Decision:
        decide = partial(Decision, action="unblock", source=source, reason=reason, ts=self.clock())
        try:
            address = parse_address(addr)
        except ValueError as exc:
            return decide(Outcome.REFUSED_INVALID, address=str(addr), message=str(exc))
        decide = partial(decide, address=address.compressed, dry_run=self.dry_run)
        try:
            self.check()
            # Looked up even when ip6 is now off: the v6 set may hold an earlier run's entries.
            if address not in {e.address for e in self.netfilter.entries(address.version)}:
                return decide(Outcome.NOT_BLOCKED, message="was not blocked; nothing to do")
            argv = self.netfilter.delete(address)
        except (FirewallError, MitigationUnavailable) as exc:
            return decide(Outcome.FAILED, message=str(exc))
        verb = "dry-run: would unblock" if self.dry_run else "unblocked"
        return decide(Outcome.UNBLOCKED, commands=(argv,), message=verb)

    def status(self) -> list[BlockEntry]:
        """Current blocks with their remaining TTL, from the firewall itself, by address.

        Raises MitigationUnavailable or FirewallError when the firewall cannot be read.
        """
        with self._lock:
            self.check()
            now = self.clock()
            entries = []
            for version in (4, 6):
                for entry in self.netfilter.entries(version):
                    source, reason = split_comment(entry.comment)
                    expires = None if entry.remaining is None else now + entry.remaining
                    entries.append(
                        BlockEntry(
                            entry.address.compressed,
                            version,
                            entry.remaining,
                            expires,
                            source,
                            reason,
                        )
                    )
            return sorted(entries, key=lambda e: (e.version, parse_address(e.address)))

    def flush(self, *, source: str = "operator") -> Decision:
        """Remove every jump, chain and set seqwatch created; afterwards nothing is blocked.

        The enforcer stops blocking until ``start()`` is called again.
        """
        with self._lock:
            decide = partial(Decision, action="flush", address="*", source=source, ts=self.clock())
            try:
                self.check()
                commands = self.netfilter.flush()
            except (FirewallError, MitigationUnavailable) as exc:
                return self._record(decide(Outcome.FAILED, message=str(exc)))
            self._started = False
            return self._record(
                decide(
                    Outcome.FLUSHED,
                    commands=tuple(commands),
                    dry_run=self.dry_run,
                    message=f"removed seqwatch's rules, chains and sets ({len(commands)} commands)"
                    if commands
                    else "nothing to remove",
                )
            )

    def close(self) -> None:
        """Close the audit log. Blocks stay in place and expire on their own."""
        with self._lock:
            self.audit.close()

    def __enter__(self) -> Enforcer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- audit --------------------------------------------------------------------------

    def _record(self, decision: Decision) -> Decision:
        self.audit.write(decision.to_record(self.mode.value))
        if decision.outcome is Outcome.FAILED:
            log.warning("%s %s failed: %s", decision.action, decision.address, decision.message)
        return decision


def _default_firewall(config: MitigationConfig, clock: Callable[[], float]) -> Firewall:
    if config.mode is not Mode.DRY_RUN:
        return SubprocessFirewall(config.netns)
    # A dry run still protects the real host's addresses, read (only read) with `ip`.
    readonly = SubprocessFirewall(config.netns) if find_program("ip") else None
    return SimulatedFirewall(clock, readonly=readonly)
