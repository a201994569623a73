"""Address text in one canonical form, so that Zeek, Suricata and the wire agree on keys."""

from __future__ import annotations

import ipaddress
from functools import lru_cache


@lru_cache(maxsize=65536)
def canonical_address(text: str) -> str:
    """Return the ``ipaddress`` compressed form of an IPv4/IPv6 address.

    Suricata writes IPv6 addresses fully expanded, Zeek compressed; both must map to one key.
    Raises ValueError naming the text when it is not an address.
    """
    try:
        return ipaddress.ip_address(text.strip()).compressed
    except ValueError:
        raise ValueError(f"not an IP address: {text!r}") from None
