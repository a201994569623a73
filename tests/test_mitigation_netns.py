"""The enforcer against the real iptables/ip6tables/ipset, inside network namespaces.

Each test builds its own pair of namespaces joined by a veth pair (IPv4 and IPv6), runs a
small TCP listener in the receiving one and connects from the sending one. The enforcer
works in the receiving namespace only; the host's own firewall is never touched. Tests
are skipped, with the reason, when not root or when the tools or namespaces are missing.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from seqwatch.sidecar.mitigation import (
    Enforcer,
    MitigationConfig,
    MitigationUnavailable,
    Outcome,
    RunResult,
    SubprocessFirewall,
)
from seqwatch.sidecar.mitigation import firewall as firewall_module
from seqwatch.sidecar.mitigation.firewall import find_program
from seqwatch.sidecar.mitigation.simulated import is_read_only

pytestmark = pytest.mark.netns

TOOLS = ("ip", "iptables", "ip6tables", "ipset", "iptables-save", "ip6tables-save")
SENDER4, RECEIVER4 = "10.200.0.1", "10.200.0.2"
SENDER6, RECEIVER6 = "fd00:200::1", "fd00:200::2"
PORT = 8080
_serial = itertools.count()

LISTENER = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1])))
s.listen(64)
print("ready", flush=True)
while True:
    conn, _ = s.accept()
    conn.sendall(b"ok")
    conn.close()
"""

PROBE = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.0) as conn:
        sys.exit(0 if conn.recv(2) == b"ok" else 2)
except OSError:
    sys.exit(1)
"""


def run(argv: Sequence[str], ns: str | None = None, check: bool = True) -> str:
    full = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    done = subprocess.run(full, capture_output=True, text=True, timeout=60, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(full)} failed: {done.stderr.strip()}")
    return done.stdout


def missing_requirements() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces and netfilter)"
    missing = [tool for tool in TOOLS if find_program(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} (apt-get install iptables ipset iproute2)"
    return None


@dataclass
class NetPair:
    """Two namespaces on one veth link; the receiver runs a listener on PORT."""

    sender: str
    receiver: str

    def reaches(self, address: str) -> bool:
        """Whether a TCP connection from the sender to ``address`` gets the listener's ok."""
        probe = [sys.executable, "-c", PROBE, address, str(PORT)]
        done = subprocess.run(
            ["ip", "netns", "exec", self.sender, *probe], capture_output=True, timeout=30
        )
        return done.returncode == 0

    def config(self, tmp_path: Path, **overrides: object) -> MitigationConfig:
        values: dict = {
            "mode": "enforce",
            "netns": self.receiver,
            "audit_log": tmp_path / "audit.jsonl",
            "ttl": 300,
        }
        values.update(overrides)
        return MitigationConfig(**values)

    def snapshot(self) -> dict[str, str]:
        """The receiver's whole firewall state, without timestamps and counters."""

        def clean(text: str) -> str:
            lines = [line for line in text.splitlines() if not line.startswith("#")]
            return "\n".join(re.sub(r"\[\d+:\d+\]", "[0:0]", line) for line in lines)

        return {
            "iptables": clean(run(["iptables-save"], self.receiver)),
            "ip6tables": clean(run(["ip6tables-save"], self.receiver)),
            "ipset": run(["ipset", "list"], self.receiver),
        }


@pytest.fixture
def pair() -> Iterator[NetPair]:
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    tag = f"{os.getpid() % 10000}x{next(_serial)}"
    sender, receiver = f"swS{tag}", f"swR{tag}"
    try:
        run(["ip", "netns", "add", sender])
    except RuntimeError as exc:
        pytest.skip(f"cannot create a network namespace: {exc}")
    listener = None
    try:
        run(["ip", "netns", "add", receiver])
        veth = f"vS{tag} netns {sender} type veth peer name vR{tag} netns {receiver}"
        run(["ip", "link", "add", *veth.split()])  # test-made names: splitting is safe
        for ns, dev, v4, v6 in (
            (sender, f"vS{tag}", SENDER4, SENDER6),
            (receiver, f"vR{tag}", RECEIVER4, RECEIVER6),
        ):
            run(["ip", "link", "set", "lo", "up"], ns)
            run(["ip", "addr", "add", f"{v4}/24", "dev", dev], ns)
            # nodad: the address is usable at once instead of after duplicate detection.
            run(["ip", "-6", "addr", "add", f"{v6}/64", "dev", dev, "nodad"], ns)
            run(["ip", "link", "set", dev, "up"], ns)
        listener = subprocess.Popen(
            ["ip", "netns", "exec", receiver, sys.executable, "-c", LISTENER, str(PORT)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        net = NetPair(sender, receiver)
        deadline = time.monotonic() + 10
        while not (net.reaches(RECEIVER4) and net.reaches(RECEIVER6)):
            if time.monotonic() > deadline:
                pytest.skip("the veth pair did not come up within 10 s")
            time.sleep(0.1)
        yield net
    finally:
        if listener is not None:
            listener.kill()
            listener.wait()
        # Deleting a namespace removes its veth end, its sets and its rules with it.
        for ns in (sender, receiver):
            run(["ip", "netns", "del", ns], check=False)


class Recording:
    """A real runner that also remembers every command, to see what a start changed."""

    def __init__(self, inner: SubprocessFirewall) -> None:
        self.inner = inner
        self.commands: list[tuple[str, ...]] = []

    def run(self, argv: Sequence[str]) -> RunResult:
        self.commands.append(tuple(argv))
        return self.inner.run(argv)

    def missing_programs(self, names) -> list[str]:
        return self.inner.missing_programs(names)

    def has_net_admin(self) -> bool:
        return self.inner.has_net_admin()

    @property
    def mutations(self) -> list[tuple[str, ...]]:
        return [c for c in self.commands if not is_read_only(c)]


def cli(*args: str, prefix: Sequence[str] = ()) -> subprocess.CompletedProcess:
    command = [*prefix, sys.executable, "-m", "seqwatch.sidecar.cli", "mitigation", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


# -- tests --------------------------------------------------------------------------------


def test_block_drops_until_ttl_or_unblock(pair: NetPair, tmp_path: Path) -> None:
    enforcer = Enforcer(pair.config(tmp_path, ttl=4))
    enforcer.start()
    assert pair.reaches(RECEIVER4) and pair.reaches(RECEIVER6)

    assert enforcer.block(SENDER4, "test").outcome is Outcome.BLOCKED
    assert not pair.reaches(RECEIVER4)
    assert pair.reaches(RECEIVER6)  # only the IPv4 address is blocked so far
    assert enforcer.block(SENDER6, "test").outcome is Outcome.BLOCKED
    remaining = {e.address: e.remaining for e in enforcer.status()}
    assert remaining.keys() == {SENDER4, SENDER6}
    assert all(0 <= left <= 4 for left in remaining.values())
    assert not pair.reaches(RECEIVER6)

    # The kernel ends the block by itself after the 4 s timeout.
    assert wait_until(lambda: pair.reaches(RECEIVER4) and pair.reaches(RECEIVER6), 10)
    assert enforcer.status() == []

    for sender, receiver in ((SENDER4, RECEIVER4), (SENDER6, RECEIVER6)):
        assert enforcer.block(sender, "again", ttl=120).outcome is Outcome.BLOCKED
        assert not pair.reaches(receiver)
        assert enforcer.unblock(sender).outcome is Outcome.UNBLOCKED
        assert pair.reaches(receiver)
    # The receiver's own addresses are never blocked, whoever asks.
    assert enforcer.block(RECEIVER4, "x").outcome is Outcome.REFUSED_ALLOWLISTED
    assert enforcer.block(RECEIVER6, "x").outcome is Outcome.REFUSED_ALLOWLISTED
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert len(lines) == 8  # every decision, refusals included
    enforcer.flush()


def test_flush_restores_the_exact_firewall_state(pair: NetPair, tmp_path: Path) -> None:
    # The operator's own rules and set, which seqwatch must leave alone.
    for tool in ("iptables", "ip6tables"):
        run([tool, "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"], pair.receiver)
    run(["ipset", "create", "operator", "hash:net"], pair.receiver)
    run(["ipset", "add", "operator", "192.0.2.0/24"], pair.receiver)
    run(
        ["iptables", "-A", "INPUT", "-m", "set", "--match-set", "operator", "src", "-j", "ACCEPT"],
        pair.receiver,
    )
    before = pair.snapshot()

    config_file = tmp_path / "seqwatch.toml"
    config_file.write_text(
        f'[mitigation]\nmode = "enforce"\naudit_log = "{tmp_path / "audit.jsonl"}"\n'
        f'chains = ["INPUT", "FORWARD", "OUTPUT"]\ndirections = ["src", "dst"]\n'
    )
    config = MitigationConfig(
        mode="enforce",
        netns=pair.receiver,
        audit_log=tmp_path / "audit.jsonl",
        chains=["INPUT", "FORWARD", "OUTPUT"],
        directions=["src", "dst"],
    )
    enforcer = Enforcer(config)
    enforcer.start()
    enforcer.block(SENDER4, "flush test")
    enforcer.block(SENDER6, "flush test")
    assert not pair.reaches(RECEIVER4)
    during = pair.snapshot()
    assert during != before
    # Our jump is the first rule of INPUT, ahead of the operator's ACCEPT rules.
    assert run(["iptables", "-S", "INPUT"], pair.receiver).splitlines()[1] == (
        "-A INPUT -m comment --comment seqwatch -j SEQWATCH"
    )

    status = cli("status", "--config", str(config_file), "--netns", pair.receiver, "--json")
    assert status.returncode == 0, status.stderr
    assert {e["address"] for e in json.loads(status.stdout)} == {SENDER4, SENDER6}

    flushed = cli("flush", "--config", str(config_file), "--netns", pair.receiver)
    assert flushed.returncode == 0, flushed.stderr
    assert pair.snapshot() == before
    assert pair.reaches(RECEIVER4) and pair.reaches(RECEIVER6)
    # A second flush finds nothing of ours and still changes nothing.
    assert enforcer.flush().message == "nothing to remove"
    assert pair.snapshot() == before


def test_restart_adopts_or_removes_earlier_entries(pair: NetPair, tmp_path: Path) -> None:
    first = Enforcer(pair.config(tmp_path))
    first.start()
    first.block(SENDER4, "before restart")
    first.block("10.200.0.77", "before restart")
    first.close()
    # A jump lost meanwhile (e.g. an operator's iptables-restore) is put back; nothing else
    # is recreated, because everything else is still there.
    run(
        ["iptables", "-D", "INPUT", "-m", "comment", "--comment", "seqwatch", "-j", "SEQWATCH"],
        pair.receiver,
    )
    assert pair.reaches(RECEIVER4)

    recording = Recording(SubprocessFirewall(pair.receiver))
    second = Enforcer(pair.config(tmp_path), recording)
    adopted = second.start()
    assert {(d.address, d.outcome) for d in adopted} == {
        (SENDER4, Outcome.ADOPTED),
        ("10.200.0.77", Outcome.ADOPTED),
    }
    assert recording.mutations == [
        (
            "iptables",
            "-w",
            "-I",
            "INPUT",
            "1",
            "-m",
            "comment",
            "--comment",
            "seqwatch",
            "-j",
            "SEQWATCH",
        ),
    ]
    assert not pair.reaches(RECEIVER4)  # the adopted block is in force again
    # The adopted entry is known as a block: a shorter request changes nothing.
    assert second.block(SENDER4, "again", ttl=10).outcome is Outcome.ALREADY_BLOCKED

    third = Enforcer(pair.config(tmp_path, reconcile="remove"))
    removed = third.start()
    assert {(d.address, d.outcome) for d in removed} == {
        (SENDER4, Outcome.REMOVED),
        ("10.200.0.77", Outcome.REMOVED),
    }
    assert third.status() == []
    assert pair.reaches(RECEIVER4)
    third.flush()


def test_cli_unblock_and_status(pair: NetPair, tmp_path: Path) -> None:
    enforcer = Enforcer(pair.config(tmp_path))
    enforcer.start()
    enforcer.block(SENDER6, "cli test")
    assert not pair.reaches(RECEIVER6)
    defaults = tmp_path / "empty.toml"  # no [mitigation] table: default names, mode off
    defaults.write_text("")
    common = ("--config", str(defaults), "--netns", pair.receiver)
    status = cli("status", *common)
    assert status.returncode == 0 and SENDER6 in status.stdout and "cli test" in status.stdout
    done = cli("unblock", SENDER6, *common)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{SENDER6}: unblocked"
    assert pair.reaches(RECEIVER6)
    assert cli("status", *common).stdout == "no addresses blocked\n"
    bad = cli("unblock", "not-an-address", *common)
    assert bad.returncode == 1 and "not an IP address" in bad.stderr
    enforcer.flush()


def test_missing_namespace_is_a_clear_error(tmp_path: Path) -> None:
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    config = MitigationConfig(mode="enforce", netns="swNoSuchNs", audit_log=tmp_path / "a")
    with pytest.raises(MitigationUnavailable, match="does not work in netns swNoSuchNs"):
        Enforcer(config).start()


def test_missing_privilege_is_a_clear_error() -> None:
    reason = missing_requirements()
    if reason or shutil.which("setpriv") is None:
        pytest.skip(reason or "needs setpriv (util-linux) to drop CAP_NET_ADMIN")
    # Root, but without CAP_NET_ADMIN: the check must say so before touching anything.
    drop = ("setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin")
    done = cli("status", "--config", "/dev/null", prefix=drop)
    assert done.returncode == 1
    assert "CAP_NET_ADMIN" in done.stderr


def test_missing_program_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    # A PATH with every tool except ipset, and no sbin fallback: the real runner's check.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ip", "iptables", "ip6tables"):
        real = find_program(tool)
        if real is None:
            pytest.skip(f"needs {tool}")
        (bin_dir / tool).symlink_to(real)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(firewall_module, "_SBIN", ())
    config = MitigationConfig(mode="enforce", audit_log=tmp_path / "a.jsonl")
    with pytest.raises(MitigationUnavailable, match=r"needs ipset, not found"):
        Enforcer(config).start()
