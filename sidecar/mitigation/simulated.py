"""An in-memory firewall that understands the commands seqwatch runs.

Dry-run mode uses it as the enforcer's state, so that a dry run makes exactly the decisions
an enforcing run would (caps, rates, escalation, "already blocked") without touching the
host; the audit log shows the commands it would have run. Tests use it to check the policy
and the generated commands without root. It records every command it is given.

It emulates only what seqwatch uses, with the kernel's semantics where they matter for
correctness: per-entry ipset timeouts against the injected clock, ``-exist``, sets and
chains that cannot be removed while a rule references them, and ``iptables -C``.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from seqwatch.sidecar.mitigation.firewall import Firewall, RunResult

_BUILTIN_TARGETS = {"ACCEPT", "DROP", "REJECT", "RETURN", "LOG"}
_BUILTIN_CHAINS = ("INPUT", "FORWARD", "OUTPUT")


def is_read_only(argv: Sequence[str]) -> bool:
    """Whether a command only reads state (listing, saving, testing, ``iptables -C/-S``)."""
    if argv[0] == "ip":
        return True
    if argv[0] == "ipset":
        return len(argv) > 1 and argv[1] in ("list", "save", "test")
    return "-S" in argv or "-C" in argv


@dataclass
class _Set:
    family: str
    timeout: bool
    comment: bool
    entries: dict[str, tuple[float | None, str]] = field(default_factory=dict)


class SimulatedFirewall:
    """A ``Firewall`` whose ipsets, iptables chains and ``ip -j`` output live in memory.

    ``host_addresses`` (CIDR strings such as ``"10.0.0.5/24"``) and ``gateways`` shape the
    ``ip -j`` answers; with ``readonly`` given, ``ip`` commands go to that runner instead
    (dry-run mode uses the real host's addresses). ``missing`` and ``net_admin`` let tests
    play a host without the programs or the privilege.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        *,
        host_addresses: Iterable[str] = (),
        gateways: Iterable[str] = (),
        readonly: Firewall | None = None,
        missing: Iterable[str] = (),
        net_admin: bool = True,
    ) -> None:
        self.clock = clock
        self.host_addresses = [ipaddress.ip_interface(a) for a in host_addresses]
        self.gateways = [ipaddress.ip_address(g) for g in gateways]
        self.readonly = readonly
        self.missing = set(missing)
        self.net_admin = net_admin
        self.commands: list[tuple[str, ...]] = []
        self.sets: dict[str, _Set] = {}
        # chains[version][name] = list of rule specs; built-in chains always exist.
        self.chains: dict[int, dict[str, list[tuple[str, ...]]]] = {
            4: {name: [] for name in _BUILTIN_CHAINS},
            6: {name: [] for name in _BUILTIN_CHAINS},
        }

    # -- Firewall protocol --------------------------------------------------------------

    def missing_programs(self, names: Iterable[str]) -> list[str]:
        return [name for name in names if name in self.missing]

    def has_net_admin(self) -> bool:
        return self.net_admin

    def run(self, argv: Sequence[str]) -> RunResult:
        args = tuple(argv)
        if args[0] == "ip" and self.readonly is not None:
            return self.readonly.run(args)
        self.commands.append(args)
        if args[0] in self.missing:
            return RunResult(args, 127, "", f"{args[0]}: command not found")
        handlers: dict[str, Callable[[list[str]], str]] = {
            "ipset": self._ipset,
            "iptables": lambda rest: self._iptables(rest, 4),
            "ip6tables": lambda rest: self._iptables(rest, 6),
            "ip": self._ip,
        }
        if args[0] not in handlers:
            return RunResult(args, 127, "", f"{args[0]}: command not found")
        try:
            out = handlers[args[0]](list(args[1:]))
        except _Fail as exc:
            return RunResult(args, exc.code, "", str(exc))
        return RunResult(args, 0, out, "")

    @property
    def mutations(self) -> list[tuple[str, ...]]:
        """The commands that changed (or tried to change) state, in order."""
        return [c for c in self.commands if not is_read_only(c)]

    # -- inspection helpers for tests ---------------------------------------------------

    def members(self, name: str) -> dict[str, float | None]:
        """Live entries of set ``name``: address -> expiry time (None = no timeout)."""
        self._expire()
        found = self.sets.get(name)
        return {} if found is None else {a: exp for a, (exp, _) in found.entries.items()}

    # -- ipset --------------------------------------------------------------------------

    def _expire(self) -> None:
        now = self.clock()
        for ipset in self.sets.values():
            expired = [a for a, (exp, _) in ipset.entries.items() if exp is not None and exp <= now]
            for address in expired:
                del ipset.entries[address]

    def _referenced(self, name: str) -> bool:
        tables = self.chains.values()
        return any(name in spec for chains in tables for specs in chains.values() for spec in specs)

    def _ipset(self, args: list[str]) -> str:
        exist = "-exist" in args
        args = [a for a in args if a != "-exist"]
        if not args:
            raise _Fail("ipset: no command")
        self._expire()
        command, rest = args[0], args[1:]
        if command == "list" and rest == ["-n"]:
            return "".join(f"{name}\n" for name in self.sets)
        if command == "save":
            return self._save(rest[0] if rest else None)
        if command == "create":
            return self._create(rest, exist)
        if not rest or rest[0] not in self.sets:
            raise _Fail(f"ipset v7: The set with the given name does not exist: {rest[:1]}")
        name, ipset = rest[0], self.sets[rest[0]]
        if command == "destroy":
            if self._referenced(name):
                raise _Fail("ipset v7: Set cannot be destroyed: it is in use by a kernel component")
            del self.sets[name]
            return ""
        if command == "flush":
            ipset.entries.clear()
            return ""
        address = self._member(rest, ipset)
        if command == "add":
            return self._add(ipset, address, rest[2:], exist)
        if command == "del":
            if address not in ipset.entries and not exist:
                raise _Fail("ipset v7: Element cannot be deleted from the set: it's not added")
            ipset.entries.pop(address, None)
            return ""
        if command == "test":
            if address not in ipset.entries:
                raise _Fail(f"{address} is NOT in set {name}.")
            return f"Warning: {address} is in set {name}.\n"
        raise _Fail(f"ipset v7: unknown command {command}")

    def _create(self, rest: list[str], exist: bool) -> str:
        name, kind, options = rest[0], rest[1], rest[2:]
        if name in self.sets:
            if exist:
                return ""
            raise _Fail("ipset v7: Set cannot be created: set with the same name already exists")
        if kind != "hash:ip":
            raise _Fail(f"simulated ipset supports hash:ip only, not {kind}")
        family = options[options.index("family") + 1] if "family" in options else "inet"
        self.sets[name] = _Set(family, "timeout" in options, "comment" in options)
        return ""

    @staticmethod
    def _member(rest: list[str], ipset: _Set) -> str:
        try:
            address = ipaddress.ip_address(rest[1])
        except (IndexError, ValueError):
            raise _Fail("ipset v7: Syntax error: cannot parse element") from None
        if (address.version == 4) != (ipset.family == "inet"):
            raise _Fail("ipset v7: Syntax error: address family mismatch")
        return address.compressed

    def _add(self, ipset: _Set, address: str, options: list[str], exist: bool) -> str:
        if address in ipset.entries and not exist:
            raise _Fail("ipset v7: Element cannot be added to the set: it's already added")
        opts = dict(zip(options[::2], options[1::2], strict=False))
        if "timeout" in opts and not ipset.timeout:
            raise _Fail("ipset v7: Timeout cannot be used: set was created without timeout support")
        if "comment" in opts and not ipset.comment:
            raise _Fail("ipset v7: Comment cannot be used: set was created without comment support")
        timeout = int(opts.get("timeout", "0"))
        expiry = self.clock() + timeout if timeout > 0 else None
        ipset.entries[address] = (expiry, opts.get("comment", ""))
        return ""

    def _save(self, only: str | None) -> str:
        if only is not None and only not in self.sets:
            raise _Fail(f"ipset v7: The set with the given name does not exist: {only}")
        now = self.clock()
        lines = []
        for name, ipset in self.sets.items():
            if only is not None and name != only:
                continue
            extras = (" timeout 600" if ipset.timeout else "") + (
                " comment" if ipset.comment else ""
            )
            lines.append(f"create {name} hash:ip family {ipset.family} hashsize 1024{extras}")
            for address, (expiry, comment) in ipset.entries.items():
                line = f"add {name} {address}"
                if ipset.timeout:
                    line += f" timeout {0 if expiry is None else int(expiry - now)}"
                if comment:
                    line += f' comment "{comment}"'
                lines.append(line)
        return "".join(f"{line}\n" for line in lines)

    # -- iptables -----------------------------------------------------------------------

    def _iptables(self, args: list[str], version: int) -> str:
        chains = self.chains[version]
        args = [a for a in args if a != "-w"]
        if not args:
            raise _Fail("iptables: no command specified")
        command, rest = args[0], args[1:]
        if command == "-S":
            return self._list(chains, rest[0] if rest else None)
        if not rest:
            raise _Fail(f"iptables: option {command} requires a chain")
        chain, spec = rest[0], tuple(rest[1:])
        if command == "-N":
            if chain in chains:
                raise _Fail("iptables: Chain already exists.")
            chains[chain] = []
            return ""
        if chain not in chains:
            raise _Fail("iptables: No chain/target/match by that name.")
        if command == "-X":
            if chain in _BUILTIN_CHAINS or chains[chain]:
                raise _Fail("iptables: Directory not empty.")
            if any(chain in s for rules in chains.values() for s in rules):
                raise _Fail("iptables: Too many links.")
            del chains[chain]
            return ""
        if command == "-F":
            chains[chain].clear()
            return ""
        if command == "-I" and spec and spec[0].isdigit():
            position, spec = int(spec[0]) - 1, spec[1:]
        else:
            position = 0
        self._validate(chains, spec, version)
        if command == "-C":
            if spec not in chains[chain]:
                raise _Fail("iptables: Bad rule (does a matching rule exist in that chain?).")
            return ""
        if command == "-A":
            chains[chain].append(spec)
        elif command == "-I":
            chains[chain].insert(position, spec)
        elif command == "-D":
            if spec not in chains[chain]:
                raise _Fail("iptables: Bad rule (does a matching rule exist in that chain?).")
            chains[chain].remove(spec)
        else:
            raise _Fail(f"simulated iptables does not support {command}")
        return ""

    def _validate(self, chains: dict, spec: tuple[str, ...], version: int) -> None:
        if "-j" in spec:
            target = spec[spec.index("-j") + 1]
            if target not in _BUILTIN_TARGETS and target not in chains:
                raise _Fail(f"iptables: Couldn't load target `{target}'")
        if "--match-set" in spec:
            name = spec[spec.index("--match-set") + 1]
            family = "inet" if version == 4 else "inet6"
            if name not in self.sets or self.sets[name].family != family:
                raise _Fail(f"iptables: Set {name} doesn't exist.")

    @staticmethod
    def _list(chains: dict[str, list[tuple[str, ...]]], only: str | None) -> str:
        if only is not None and only not in chains:
            raise _Fail("iptables: No chain/target/match by that name.")
        names = [only] if only is not None else list(chains)
        lines = [f"-P {n} ACCEPT" if n in _BUILTIN_CHAINS else f"-N {n}" for n in names]
        lines += [f"-A {n} {shlex.join(spec)}" for n in names for spec in chains[n]]
        return "".join(f"{line}\n" for line in lines)

    # -- ip -----------------------------------------------------------------------------

    def _ip(self, args: list[str]) -> str:
        if args[:3] == ["-j", "addr", "show"]:
            infos = []
            for iface in self.host_addresses:
                info = {"family": "inet" if iface.version == 4 else "inet6"}
                info["local"] = str(iface.ip)
                info["prefixlen"] = iface.network.prefixlen
                if iface.version == 4 and iface.network.prefixlen < 31:
                    info["broadcast"] = str(iface.network.broadcast_address)
                infos.append(info)
            return json.dumps([{"ifindex": 2, "ifname": "sim0", "addr_info": infos}])
        if args[:1] == ["-j"] and args[2:] == ["route", "show", "default"]:
            version = 4 if args[1] == "-4" else 6
            routes = [
                {"dst": "default", "gateway": str(g), "dev": "sim0"}
                for g in self.gateways
                if g.version == version
            ]
            return json.dumps(routes)
        raise _Fail(f"simulated ip does not support {' '.join(args)}")


class _Fail(Exception):
    """A simulated command failure: the message becomes stderr."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code
