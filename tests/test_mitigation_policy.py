"""The enforcer's safety policy against a simulated firewall and a fake clock (no root).

The property tests drive random sequences of block/unblock requests and clock jumps and
check the invariants an operator relies on, using an oracle written independently of the
enforcer's own allowlist code.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqwatch.sidecar.mitigation import (
    Enforcer,
    MitigationConfig,
    MitigationUnavailable,
    Outcome,
    SimulatedFirewall,
)
from seqwatch.sidecar.mitigation.policy import (
    OffenceHistory,
    SlidingWindowLimiter,
    escalated_ttl,
)


class Clock:
    """A settable clock for the enforcer and the simulated kernel timeouts."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


HOST = ["192.0.2.10/24", "2001:db8:1::10/64"]
GATEWAYS = ["192.0.2.1", "2001:db8:1::1"]


def make(clock: Clock, tmp_path: Path, **overrides) -> tuple[Enforcer, SimulatedFirewall]:
    settings_ = {"mode": "enforce", "audit_log": tmp_path / "audit.jsonl", "ttl": 60}
    settings_.update(overrides)
    firewall = SimulatedFirewall(clock, host_addresses=HOST, gateways=GATEWAYS)
    enforcer = Enforcer(MitigationConfig(**settings_), firewall, clock=clock)
    enforcer.start()
    return enforcer, firewall


def audit_lines(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]


# -- pure building blocks -------------------------------------------------------------------


def test_sliding_window_allows_exactly_limit_per_window() -> None:
    limiter = SlidingWindowLimiter(3, window=60)
    for t in (0, 10, 20):
        assert limiter.allowed(t)
        limiter.record(t)
    assert not limiter.allowed(59.9)
    assert limiter.retry_after(30) == pytest.approx(30)
    assert limiter.allowed(60)  # the event at 0 left the window (0, 60]


def test_escalation_doubles_and_caps() -> None:
    assert [escalated_ttl(60, 2.0, n, 1000) for n in range(6)] == [60, 120, 240, 480, 960, 1000]
    assert escalated_ttl(60, 1.0, 50, 1000) == 60
    # A history long enough to overflow a float power still yields the cap.
    assert escalated_ttl(60, 10.0, 10_000, 86_400) == 86_400


def test_offence_history_forgets_after_memory() -> None:
    history = OffenceHistory(memory=100)
    history.record("a", 0)
    history.record("a", 50)
    assert history.count("a", 99) == 2
    assert history.count("a", 120) == 1
    assert history.count("a", 151) == 0
    history.forget_expired(151)
    assert history.count("a", 151) == 0


# -- enforcer decisions ---------------------------------------------------------------------


def test_allowlist_covers_builtin_peers_configured_and_host(tmp_path: Path) -> None:
    clock = Clock()
    enforcer, firewall = make(clock, tmp_path, allowlist=["198.51.100.0/24"], peers=["203.0.113.5"])
    refused = {
        "127.0.0.1": "loopback",
        "::ffff:127.0.0.2": "loopback",  # IPv4-mapped IPv6 is folded to IPv4
        "::1": "loopback",
        "169.254.1.1": "link-local",
        "fe80::1": "link-local",
        "224.0.0.251": "multicast",
        "ff02::1": "multicast",
        "255.255.255.255": "broadcast",
        "0.0.0.0": "unspecified",
        "192.0.2.10": "host address",
        "2001:db8:1::10": "host address",
        "192.0.2.255": "broadcast address",
        "192.0.2.1": "default gateway",
        "2001:db8:1::1": "default gateway",
        "203.0.113.5": "peer",
        "198.51.100.77": "configured allowlist",
    }
    for address, why in refused.items():
        decision = enforcer.block(address, "test")
        assert decision.outcome is Outcome.REFUSED_ALLOWLISTED, address
        assert why in decision.message, (address, decision.message)
    assert not any(c[:2] == ("ipset", "add") for c in firewall.commands)
    assert enforcer.block("192.0.2.11", "test").outcome is Outcome.BLOCKED


def test_block_is_idempotent_and_extends_only_when_longer(tmp_path: Path) -> None:
    clock = Clock()
    enforcer, firewall = make(clock, tmp_path)
    first = enforcer.block("10.1.1.1", "scan")
    assert first.outcome is Outcome.BLOCKED and first.ttl == 60
    assert enforcer.block("10.1.1.1", "scan").outcome is Outcome.ALREADY_BLOCKED
    adds = [c for c in firewall.commands if c[:2] == ("ipset", "add")]
    assert len(adds) == 1 and adds[0][2] == "-exist"
    longer = enforcer.block("10.1.1.1", "netcontrol", ttl=600, source="netcontrol")
    assert longer.outcome is Outcome.EXTENDED and longer.ttl == 600
    assert firewall.members("seqwatch4")["10.1.1.1"] == pytest.approx(clock.now + 600)
    # A shorter request never shortens a block.
    assert enforcer.block("10.1.1.1", "x", ttl=30).outcome is Outcome.ALREADY_BLOCKED
    assert firewall.members("seqwatch4")["10.1.1.1"] == pytest.approx(clock.now + 600)


def test_repeat_offender_escalates_until_memory_expires(tmp_path: Path) -> None:
    clock = Clock()
    enforcer, _ = make(clock, tmp_path, ttl=60, max_ttl=300, offence_memory=3600)
    ttls = []
    for _ in range(5):
        decision = enforcer.block("10.2.2.2", "again")
        assert decision.outcome is Outcome.BLOCKED
        ttls.append(decision.ttl)
        clock.advance(decision.ttl + 1)  # let the block expire before the next offence
    assert ttls == [60, 120, 240, 300, 300]
    clock.advance(3600)
    assert enforcer.block("10.2.2.2", "after memory").ttl == 60


def test_repeat_request_while_blocked_refreshes_same_tier(tmp_path: Path) -> None:
    clock = Clock()
    enforcer, _ = make(clock, tmp_path, ttl=60)
    enforcer.block("10.3.3.3", "first")
    clock.advance(50)
    refresh = enforcer.block("10.3.3.3", "still scanning")
    assert refresh.outcome is Outcome.EXTENDED and refresh.ttl == 60  # not 120


def test_concurrent_cap_and_rate_limit_refuse_with_reason(tmp_path: Path) -> None:
    clock = Clock()
    enforcer, _ = make(clock, tmp_path, max_concurrent=3, max_per_minute=2, ttl=600)
    outcomes = [enforcer.block(f"10.4.0.{i}", "x").outcome for i in range(1, 4)]
    assert outcomes == [Outcome.BLOCKED, Outcome.BLOCKED, Outcome.REFUSED_RATE]
    clock.advance(60)
    assert enforcer.block("10.4.0.3", "x").outcome is Outcome.BLOCKED
    clock.advance(60)
    capped = enforcer.block("10.4.0.4", "x")
    assert capped.outcome is Outcome.REFUSED_CAP and "max_concurrent = 3" in capped.message
    enforcer.unblock("10.4.0.1")
    assert enforcer.block("10.4.0.4", "x").outcome is Outcome.BLOCKED


def test_every_decision_is_audited_once(tmp_path: Path) -> None:
    clock = Clock()
    enforcer, _ = make(clock, tmp_path, max_per_minute=1)
    decisions = [
        enforcer.block("10.5.0.1", "a"),
        enforcer.block("10.5.0.1", "a"),
        enforcer.block("10.5.0.2", "b"),
        enforcer.block("127.0.0.1", "c"),
        enforcer.block("not-an-address", "d"),
        enforcer.unblock("10.5.0.1"),
        enforcer.unblock("10.5.0.9"),
        enforcer.flush(),
    ]
    lines = audit_lines(tmp_path)
    assert [line["outcome"] for line in lines] == [d.outcome.value for d in decisions]
    assert lines[0]["commands"] == [
        [
            "ipset",
            "add",
            "-exist",
            "seqwatch4",
            "10.5.0.1",
            "timeout",
            "60",
            "comment",
            "verdict: a",
        ]
    ]
    assert "rate limit" in lines[2]["message"]
    assert all(line["mode"] == "enforce" for line in lines)


def test_dry_run_decides_like_enforce_without_a_firewall(tmp_path: Path) -> None:
    clock = Clock()
    config = MitigationConfig(mode="dry-run", audit_log=tmp_path / "audit.jsonl", ttl=60)
    enforcer = Enforcer(config, clock=clock)  # default firewall: simulated
    assert isinstance(enforcer.firewall, SimulatedFirewall)
    enforcer.start()
    first = enforcer.block("10.6.0.1", "x")
    assert first.outcome is Outcome.BLOCKED and first.dry_run
    assert first.message.startswith("dry-run: would block")
    assert enforcer.block("10.6.0.1", "x").outcome is Outcome.ALREADY_BLOCKED
    assert [e.address for e in enforcer.status()] == ["10.6.0.1"]
    assert all(line.get("dry_run") for line in audit_lines(tmp_path))


def test_off_mode_refuses_and_touches_nothing(tmp_path: Path) -> None:
    clock = Clock()
    firewall = SimulatedFirewall(clock)
    enforcer = Enforcer(MitigationConfig(), firewall, clock=clock)
    assert enforcer.start() == []
    assert enforcer.block("10.7.0.1", "x").outcome is Outcome.REFUSED_DISABLED
    assert firewall.commands == []


def test_ipv6_can_be_switched_off(tmp_path: Path) -> None:
    clock = Clock()
    enforcer, firewall = make(clock, tmp_path, ip6=False)
    assert enforcer.block("2001:db8::5", "x").outcome is Outcome.REFUSED_FAMILY
    assert not any(c[0] == "ip6tables" for c in firewall.mutations)


def test_missing_program_and_privilege_fail_at_start(tmp_path: Path) -> None:
    config = MitigationConfig(mode="enforce", audit_log=tmp_path / "a.jsonl")
    with pytest.raises(MitigationUnavailable, match="ipset, ip6tables"):
        Enforcer(config, SimulatedFirewall(missing=["ipset", "ip6tables"])).start()
    with pytest.raises(MitigationUnavailable, match="CAP_NET_ADMIN"):
        Enforcer(config, SimulatedFirewall(net_admin=False)).start()
    with pytest.raises(MitigationUnavailable, match="cannot open audit log"):
        bad = MitigationConfig(mode="enforce", audit_log=tmp_path / "missing-dir" / "a.jsonl")
        Enforcer(bad, SimulatedFirewall()).start()


def test_incompatible_existing_set_is_reported(tmp_path: Path) -> None:
    firewall = SimulatedFirewall()
    firewall.run(["ipset", "create", "seqwatch4", "hash:ip", "family", "inet"])
    config = MitigationConfig(mode="enforce", audit_log=tmp_path / "a.jsonl")
    with pytest.raises(MitigationUnavailable, match="no timeout support; no comment support"):
        Enforcer(config, firewall).start()


def test_reconcile_adopts_clamps_and_drops_allowlisted(tmp_path: Path) -> None:
    clock = Clock()
    enforcer, firewall = make(clock, tmp_path, max_ttl=1000)
    enforcer.block("10.8.0.1", "old")
    # Entries another tool (or an older configuration) left behind:
    firewall.run(["ipset", "add", "seqwatch4", "10.8.0.2", "timeout", "0"])
    firewall.run(["ipset", "add", "seqwatch4", "192.0.2.1", "timeout", "100"])  # the gateway
    restarted = Enforcer(enforcer.config, firewall, clock=clock)
    outcomes = {d.address: (d.outcome, d.ttl) for d in restarted.start()}
    assert outcomes == {
        "10.8.0.1": (Outcome.ADOPTED, 60),
        "10.8.0.2": (Outcome.ADOPTED, 1000),  # no timeout -> clamped to max_ttl
        "192.0.2.1": (Outcome.REMOVED, None),
    }
    assert set(firewall.members("seqwatch4")) == {"10.8.0.1", "10.8.0.2"}
    # Adopted blocks count as offences: the next block of 10.8.0.1 escalates.
    clock.advance(61)
    assert restarted.block("10.8.0.1", "again").ttl == 120


def test_reconcile_remove_empties_the_sets(tmp_path: Path) -> None:
    clock = Clock()
    enforcer, firewall = make(clock, tmp_path)
    enforcer.block("10.9.0.1", "old")
    enforcer.block("2001:db8:9::1", "old")
    config = MitigationConfig(**{**_fields(enforcer.config), "reconcile": "remove"})
    decisions = Enforcer(config, firewall, clock=clock).start()
    assert {d.outcome for d in decisions} == {Outcome.REMOVED}
    assert firewall.members("seqwatch4") == {} and firewall.members("seqwatch6") == {}


def test_restart_over_existing_objects_changes_nothing(tmp_path: Path) -> None:
    clock = Clock()
    enforcer, firewall = make(clock, tmp_path)
    before = len(firewall.mutations)
    Enforcer(enforcer.config, firewall, clock=clock).start()
    assert len(firewall.mutations) == before


def test_flush_removes_only_what_seqwatch_created(tmp_path: Path) -> None:
    clock = Clock()
    firewall = SimulatedFirewall(clock, host_addresses=HOST)
    firewall.run(["ipset", "create", "operator", "hash:ip", "family", "inet"])
    firewall.run(["iptables", "-w", "-N", "OPERATOR"])
    firewall.run(["iptables", "-w", "-A", "INPUT", "-p", "tcp", "-j", "OPERATOR"])
    firewall.run(
        [
            "iptables",
            "-w",
            "-A",
            "OPERATOR",
            "-m",
            "set",
            "--match-set",
            "operator",
            "src",
            "-j",
            "ACCEPT",
        ]
    )
    snapshot = (repr(firewall.sets), repr(firewall.chains))
    config = MitigationConfig(
        mode="enforce", audit_log=tmp_path / "a.jsonl", chains=["INPUT", "FORWARD", "OUTPUT"]
    )
    enforcer = Enforcer(config, firewall, clock=clock)
    enforcer.start()
    enforcer.block("10.10.0.1", "x")
    assert firewall.chains[4]["INPUT"][0][-1] == "SEQWATCH"  # our jump comes first
    assert enforcer.flush().outcome is Outcome.FLUSHED
    assert (repr(firewall.sets), repr(firewall.chains)) == snapshot
    assert enforcer.block("10.10.0.2", "x").outcome is Outcome.FAILED  # flushed: not started


def test_changed_configuration_removes_stale_rules_and_jumps(tmp_path: Path) -> None:
    clock = Clock()
    enforcer, firewall = make(clock, tmp_path, chains=["INPUT", "FORWARD"], directions=["src"])
    narrower = {**_fields(enforcer.config), "chains": ["INPUT"], "directions": ["src", "dst"]}
    Enforcer(MitigationConfig(**narrower), firewall, clock=clock).start()
    assert not any("SEQWATCH" in spec for spec in firewall.chains[4]["FORWARD"])
    assert [spec[-3] for spec in firewall.chains[4]["SEQWATCH"]] == ["src", "dst"]


def _fields(config: MitigationConfig) -> dict:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


# -- properties ---------------------------------------------------------------------------

CONFIGURED = [ipaddress.ip_network("10.0.0.0/28"), ipaddress.ip_network("2001:db8:2::/125")]
BUILTIN = [
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "224.0.0.0/3",
        "::/127",
        "fe80::/10",
        "ff00::/8",
    )
]
HOST_ADDRESSES = {"192.0.2.10", "192.0.2.255", "192.0.2.1", "2001:db8:1::10", "2001:db8:1::1"}


def protected(address: str) -> bool:
    """The oracle: written from the documented rules, not from the enforcer's code."""
    ip = ipaddress.ip_address(address)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.compressed in HOST_ADDRESSES:
        return True
    return any(ip.version == net.version and ip in net for net in CONFIGURED + BUILTIN)


# A small pool of addresses, so that sequences hit repeats, allowlisted ones and both families.
ADDRESS_POOL = st.one_of(
    st.integers(0, 40).map(lambda i: f"10.0.0.{i}"),  # 0-15 are allowlisted
    st.integers(0, 30).map(lambda i: f"2001:db8:2::{i:x}"),  # 0-7 are allowlisted
    st.sampled_from(sorted(HOST_ADDRESSES)),
    st.sampled_from(
        [
            "127.0.0.1",
            "::1",
            "fe80::1",
            "224.0.0.1",
            "255.255.255.255",
            "::ffff:10.0.0.3",
            "::ffff:10.0.0.19",
            "0.0.0.0",
            "ff02::1",
        ]
    ),
)
BLOCK = st.tuples(st.just("block"), ADDRESS_POOL, st.one_of(st.none(), st.integers(-5, 5000)))
# Blocks dominate and most waits are short, so that caps and rates are actually reached;
# the long waits let blocks expire and offences repeat.
STEP = st.one_of(
    BLOCK,
    BLOCK,
    BLOCK,
    st.tuples(st.just("unblock"), ADDRESS_POOL, st.none()),
    st.tuples(st.just("wait"), st.none(), st.integers(0, 20)),
    st.tuples(st.just("wait"), st.none(), st.integers(0, 400)),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(STEP, max_size=60),
    max_concurrent=st.integers(1, 6),
    max_per_minute=st.integers(1, 4),
    ttl=st.integers(1, 200),
    max_ttl=st.integers(200, 2000),
    escalation=st.floats(1.0, 4.0),
)
def test_policy_invariants_hold_for_any_request_sequence(
    tmp_path: Path,
    steps: list,
    max_concurrent: int,
    max_per_minute: int,
    ttl: int,
    max_ttl: int,
    escalation: float,
) -> None:
    clock = Clock()
    firewall = SimulatedFirewall(clock, host_addresses=HOST, gateways=GATEWAYS)
    config = MitigationConfig(
        mode="enforce",
        audit_log=tmp_path / "audit.jsonl",
        allowlist=[str(n) for n in CONFIGURED],
        ttl=ttl,
        max_ttl=max_ttl,
        escalation=escalation,
        max_concurrent=max_concurrent,
        max_per_minute=max_per_minute,
    )
    enforcer = Enforcer(config, firewall, clock=clock)
    enforcer.start()
    new_blocks: list[float] = []
    for action, address, value in steps:
        if action == "wait":
            clock.advance(value)
            continue
        live_before = set(firewall.members("seqwatch4")) | set(firewall.members("seqwatch6"))
        if action == "unblock":
            enforcer.unblock(address)
            continue
        decision = enforcer.block(address, "prop", ttl=value)
        if decision.outcome is Outcome.BLOCKED:
            assert decision.address not in live_before
            new_blocks.append(clock.now)
        if decision.ttl is not None and decision.outcome is not Outcome.ALREADY_BLOCKED:
            assert 1 <= decision.ttl <= max_ttl
        members = {**firewall.members("seqwatch4"), **firewall.members("seqwatch6")}
        # 1. nothing protected is ever in a set
        assert not any(protected(a) for a in members), members
        # 2. the concurrent cap holds
        assert len(members) <= max_concurrent
        # 3. no entry outlives max_ttl from now
        assert all(exp is not None and exp <= clock.now + max_ttl for exp in members.values())
    # 4. at most max_per_minute new blocks in any 60 s window
    for i, start in enumerate(new_blocks):
        in_window = [t for t in new_blocks[i:] if t < start + 60]
        assert len(in_window) <= max_per_minute
    # 5. every add command the firewall saw carried a timeout within max_ttl
    for command in firewall.commands:
        if command[:2] == ("ipset", "add"):
            assert 1 <= int(command[command.index("timeout") + 1]) <= max_ttl


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ttl=st.integers(1, 500),
    max_ttl=st.integers(500, 100_000),
    escalation=st.floats(1.0, 10.0),
    repeats=st.integers(1, 25),
    explicit=st.lists(st.one_of(st.none(), st.floats(-10, 1e7)), min_size=25, max_size=25),
)
def test_escalation_never_exceeds_max_ttl(
    tmp_path: Path,
    ttl: int,
    max_ttl: int,
    escalation: float,
    repeats: int,
    explicit: list,
) -> None:
    clock = Clock()
    # An offence memory longer than the whole run, so that every block counts.
    enforcer, firewall = make(
        clock,
        tmp_path,
        ttl=ttl,
        max_ttl=max_ttl,
        escalation=escalation,
        max_per_minute=1,
        offence_memory=10**9,
    )
    previous = 0
    for i in range(repeats):
        decision = enforcer.block("10.11.0.1", "repeat", ttl=explicit[i])
        assert decision.outcome is Outcome.BLOCKED
        assert 1 <= decision.ttl <= max_ttl
        if explicit[i] is None or explicit[i] <= 0:
            # The policy TTL grows with the offences and is exactly the documented formula.
            assert decision.ttl >= previous
            assert abs(decision.ttl - min(max_ttl, ttl * escalation**i)) <= 1
            previous = decision.ttl
        expiry = firewall.members("seqwatch4")["10.11.0.1"]
        assert expiry <= clock.now + max_ttl
        clock.advance(decision.ttl + 60)
