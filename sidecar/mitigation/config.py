"""Configuration of the response (mitigation) layer: the ``[mitigation]`` TOML table.

Every key is validated here, once, so that the enforcer can trust its configuration and an
operator's typo in a safety setting fails loudly at start instead of silently weakening it.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The kernel's per-entry ipset timeout is a 32-bit count of milliseconds internally, so
# ipset refuses anything above this many seconds (about 24.8 days).
IPSET_MAX_TIMEOUT = 2_147_483
# maxelem of the sets seqwatch creates: a kernel-side backstop well above any sane cap.
IPSET_MAXELEM = 65_536
HOOK_CHAINS = ("INPUT", "FORWARD", "OUTPUT")
DIRECTIONS = ("src", "dst")

_CHAIN_NAME = re.compile(r"^[A-Za-z0-9_-]{1,28}$")
_SET_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,31}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNIT_SECONDS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class MitigationConfigError(ValueError):
    """The ``[mitigation]`` configuration is invalid; the message names the key."""


class Mode(enum.StrEnum):
    """What the enforcer does with a block request."""

    OFF = "off"  # refuse every block request; clean-up commands still work
    DRY_RUN = "dry-run"  # decide and audit as if enforcing, against a simulated firewall
    ENFORCE = "enforce"  # apply blocks with iptables/ip6tables and ipset


class Reconcile(enum.StrEnum):
    """What to do at start with entries left in the sets by an earlier run."""

    ADOPT = "adopt"
    REMOVE = "remove"


def parse_duration(value: Any, key: str) -> int:
    """Seconds from a number or a string such as ``"90"``, ``"30s"``, ``"10m"``, ``"2h"``, ``"1d"``.

    Rounded up to whole seconds: ipset timeouts have a resolution of one second.
    """
    if isinstance(value, bool):
        raise MitigationConfigError(f"{key}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise MitigationConfigError(
            f"{key}: expected seconds or a duration like '10m', got {value!r}"
        )
    whole = int(-(-seconds // 1))  # ceil without importing math for one call
    if whole <= 0:
        raise MitigationConfigError(f"{key}: must be positive, got {value!r}")
    return whole


def parse_networks(values: Any, key: str) -> tuple[IPNetwork, ...]:
    """CIDRs (or bare addresses, taken as /32 or /128) from a list of strings."""
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise MitigationConfigError(f"{key}: expected a list of addresses or CIDRs")
    networks = []
    for value in values:
        try:
            # strict=False: "10.1.2.3/24" is a common way to write "that host's /24".
            networks.append(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError:
            raise MitigationConfigError(f"{key}: not an address or CIDR: {value!r}") from None
    return tuple(networks)


def _names(values: Any, key: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, Iterable):
        raise MitigationConfigError(f"{key}: expected a list out of {', '.join(allowed)}")
    names = tuple(dict.fromkeys(str(v).strip() for v in values))
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise MitigationConfigError(
            f"{key}: expected a non-empty list out of {', '.join(allowed)}, got {list(values)!r}"
        )
    return names


@dataclass(frozen=True)
class MitigationConfig:
    """Settings of the enforcer; see docs/mitigation.md for what each one means."""

    mode: Mode = Mode.OFF
    # Built-in filter-table chains that jump to seqwatch's own chain ...
    chains: tuple[str, ...] = ("INPUT", "FORWARD")
    # ... and the name of that chain, which holds the set-matching DROP rules.
    chain: str = "SEQWATCH"
    set4: str = "seqwatch4"
    set6: str = "seqwatch6"
    # Which address of a packet is matched against the sets (src: traffic from offenders).
    directions: tuple[str, ...] = ("src",)
    # Never blocked, in addition to the built-in ranges and the host's own addresses.
    allowlist: tuple[IPNetwork, ...] = ()
    # The Zeek and sidecar peers: never blocked, named as such in the audit log.
    peers: tuple[IPNetwork, ...] = ()
    # Protect the addresses, broadcast addresses and default gateways of this host.
    protect_host: bool = True
    ttl: int = 600
    max_ttl: int = 86_400
    escalation: float = 2.0
    offence_memory: int = 7 * 86_400
    max_concurrent: int = 1_000
    max_per_minute: int = 10
    audit_log: Path | None = None
    reconcile: Reconcile = Reconcile.ADOPT
    netns: str | None = None
    ip6: bool = True

    def __post_init__(self) -> None:
        # Normalise every field, so that direct construction (mode="enforce",
        # allowlist=["10.0.0.0/8"]) is as safe as the TOML path.
        for item in fields(self):
            object.__setattr__(self, item.name, _convert(item.name, getattr(self, item.name)))
        self._validate()

    def _validate(self) -> None:
        if not _CHAIN_NAME.match(self.chain) or self.chain in HOOK_CHAINS:
            raise MitigationConfigError(
                f"chain: {self.chain!r} must be 1-28 letters, digits, '_' or '-', "
                "and not a built-in chain"
            )
        for key in ("set4", "set6"):
            name = getattr(self, key)
            if not _SET_NAME.match(name):
                raise MitigationConfigError(
                    f"{key}: {name!r} must be 1-31 letters, digits, '_', '.' or '-'"
                )
        if self.set4 == self.set6:
            raise MitigationConfigError("set4 and set6 must differ")
        if not 1 <= self.ttl <= self.max_ttl <= IPSET_MAX_TIMEOUT:
            raise MitigationConfigError(
                f"need 1 <= ttl ({self.ttl}) <= max_ttl ({self.max_ttl}) <= {IPSET_MAX_TIMEOUT} s"
            )
        if not 1.0 <= self.escalation <= 100.0:
            raise MitigationConfigError(f"escalation: {self.escalation} not in [1, 100]")
        if self.offence_memory < 1:
            raise MitigationConfigError("offence_memory: must be positive")
        if not 1 <= self.max_concurrent <= IPSET_MAXELEM:
            raise MitigationConfigError(f"max_concurrent: must be in [1, {IPSET_MAXELEM}]")
        if self.max_per_minute < 1:
            raise MitigationConfigError("max_per_minute: must be at least 1")
        if self.mode is Mode.ENFORCE and self.audit_log is None:
            # Blocking without a record of why is exactly what the safety model forbids.
            raise MitigationConfigError("audit_log: required when mode = 'enforce'")
        if self.netns is not None and not re.match(r"^[A-Za-z0-9_.-]{1,64}$", self.netns):
            raise MitigationConfigError(f"netns: not a namespace name: {self.netns!r}")

    @property
    def families(self) -> tuple[int, ...]:
        """IP versions enforced: (4,) or (4, 6)."""
        return (4, 6) if self.ip6 else (4,)

    def set_name(self, version: int) -> str:
        return self.set4 if version == 4 else self.set6

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> MitigationConfig:
        """Build from the ``[mitigation]`` TOML table (or any mapping of the same shape)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MitigationConfigError(
                f"unknown key(s) in [mitigation]: {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        return cls(**dict(data))


def _convert(key: str, value: Any) -> Any:
    """One TOML value to the field's type, with a message naming the key when it does not fit."""
    if key == "mode":
        try:
            return Mode(str(value))
        except ValueError:
            raise MitigationConfigError(
                f"mode: {value!r} is not one of {', '.join(m.value for m in Mode)}"
            ) from None
    if key == "reconcile":
        try:
            return Reconcile(str(value))
        except ValueError:
            raise MitigationConfigError(
                f"reconcile: {value!r} is not 'adopt' or 'remove'"
            ) from None
    if key == "chains":
        return _names(value, key, HOOK_CHAINS)
    if key == "directions":
        return _names(value, key, DIRECTIONS)
    if key in ("allowlist", "peers"):
        return parse_networks(value, key)
    if key in ("ttl", "max_ttl", "offence_memory"):
        return parse_duration(value, key)
    if key in ("max_concurrent", "max_per_minute"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise MitigationConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if key == "escalation":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MitigationConfigError(f"escalation: expected a number, got {value!r}")
        return float(value)
    if key in ("protect_host", "ip6"):
        if not isinstance(value, bool):
            raise MitigationConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if key == "audit_log":
        return None if value in (None, "") else Path(str(value))
    if key == "netns":
        return None if value in (None, "") else str(value)
    return str(value)


def load_config(path: Path | str) -> MitigationConfig:
    """Read the ``[mitigation]`` table of a TOML file; a missing table means all defaults."""
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise MitigationConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise MitigationConfigError(f"{path}: invalid TOML: {exc}") from None
    section = document.get("mitigation", {})
    if not isinstance(section, dict):
        raise MitigationConfigError(f"{path}: [mitigation] must be a table")
    return MitigationConfig.from_mapping(section)
