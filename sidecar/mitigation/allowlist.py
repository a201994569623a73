"""Addresses that are never blocked, and why.

The allowlist is the first safety check of every block request: a model that flags the
default gateway, the Zeek sensor or the administrator's jump host must not be able to cut
the operator off. It is pure data plus one lookup; reading the host's own addresses is a
separate function so that the lookup stays testable without a network stack.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass

from seqwatch.sidecar.mitigation.config import IPNetwork
from seqwatch.sidecar.mitigation.firewall import Firewall

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Ranges that no block may ever cover, whatever the configuration says: blocking them
# either breaks the host itself or matches traffic that has no single offender.
BUILTIN_PROTECTED: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "unspecified ('this network')"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved and limited broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
)


def parse_address(text: object) -> IPAddress:
    """An address from text (or an ``ipaddress`` object), IPv4-mapped IPv6 folded to IPv4.

    Folding matters for safety: ``::ffff:127.0.0.1`` must hit the IPv4 loopback entry.
    Raises ValueError naming the input when it is not a single address.
    """
    if isinstance(text, ipaddress.IPv4Address | ipaddress.IPv6Address):
        address: IPAddress = text
    else:
        try:
            address = ipaddress.ip_address(str(text).strip())
        except ValueError:
            raise ValueError(f"not an IP address: {text!r}") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class AllowEntry:
    """One protected network and the reason it is protected (shown in the audit log)."""

    network: IPNetwork
    why: str

    def describe(self) -> str:
        return f"{self.why} ({self.network.compressed})"


class Allowlist:
    """An ordered set of protected networks; the first match explains a refusal."""

    def __init__(self, entries: Iterable[AllowEntry] = ()) -> None:
        self._entries: list[AllowEntry] = list(entries)

    @classmethod
    def build(
        cls,
        configured: Iterable[IPNetwork] = (),
        peers: Iterable[IPNetwork] = (),
        host: Iterable[AllowEntry] = (),
    ) -> Allowlist:
        """Built-in ranges, then peers, configured networks and the host's own addresses."""
        entries = [AllowEntry(ipaddress.ip_network(net), why) for net, why in BUILTIN_PROTECTED]
        entries += [AllowEntry(net, "Zeek/sidecar peer") for net in peers]
        entries += [AllowEntry(net, "configured allowlist") for net in configured]
        entries += list(host)
        return cls(entries)

    @property
    def entries(self) -> tuple[AllowEntry, ...]:
        return tuple(self._entries)

    def match(self, address: IPAddress) -> AllowEntry | None:
        """The first entry protecting ``address``, or None when it may be blocked."""
        address = parse_address(address)
        for entry in self._entries:
            if entry.network.version == address.version and address in entry.network:
                return entry
        return None


def host_entries(firewall: Firewall) -> list[AllowEntry]:
    """The host's own addresses, broadcast addresses and default gateways, from iproute2.

    Read through the firewall runner so that a configured network namespace is honoured.
    A failing ``ip`` command raises, because enforcing without knowing our own addresses
    could lock the host out.
    """
    entries: list[AllowEntry] = []
    result = firewall.run(["ip", "-j", "addr", "show"]).check()
    for link in _json_list(result.stdout):
        name = str(link.get("ifname", "?"))
        for info in link.get("addr_info", []) or []:
            for key, why in (("local", "host address"), ("broadcast", "broadcast address")):
                if key in info:
                    entries.extend(_single(info[key], f"{why} on {name}"))
    for family in ("-4", "-6"):
        routes = firewall.run(["ip", "-j", family, "route", "show", "default"]).check()
        for route in _json_list(routes.stdout):
            if "gateway" in route:
                entries.extend(_single(route["gateway"], "default gateway"))
    return entries


def _json_list(text: str) -> list[dict]:
    try:
        data = json.loads(text or "[]")
    except json.JSONDecodeError as exc:
        raise ValueError(f"unexpected output from ip -j: {exc}") from None
    return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []


def _single(text: object, why: str) -> list[AllowEntry]:
    try:
        address = parse_address(text)
    except ValueError:
        return []  # not an address (e.g. a future iproute2 format): nothing to protect
    return [AllowEntry(ipaddress.ip_network(address), why)]
