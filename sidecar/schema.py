"""Feature schema v1: names, defaults and the removal-delay table (DESIGN.md).

Everything that several parts must agree on about *what* a feature vector is lives here;
how it is computed lives in :mod:`seqwatch.sidecar.features`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

SCHEMA_ID = "seqwatch.features.v1"

FEATURE_NAMES: tuple[str, ...] = (
    "out_conns",
    "out_hosts",
    "out_ports",
    "out_bytes",
    "out_resp_bytes",
    "out_pkts",
    "out_resp_pkts",
    "out_duration",
    "out_failed",
    "out_rejected",
    "out_udp",
    "out_icmp",
    "in_conns",
    "in_hosts",
    "in_bytes",
    "in_failed",
)
N_FEATURES = len(FEATURE_NAMES)
FEATURE_INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}

DEFAULT_INTERVAL = 60.0
"""Δ, the interval width in seconds; bins are aligned to multiples of Δ since the epoch."""
DEFAULT_WINDOW = 16
"""T, the number of past intervals the model sees before predicting the next one."""
DEFAULT_DISTINCT_CAP = 1024
"""C, the cap on distinct counts (out_hosts, out_ports, in_hosts)."""
DEFAULT_SLACK = 5.0
"""Seconds past an interval's end before it is emitted live (Zeek script and tail mode)."""

# Connection states, in Zeek's vocabulary. Codes are positions in this tuple; 0 = unknown.
CONN_STATES: tuple[str, ...] = (
    "",
    "S0",
    "S1",
    "SF",
    "REJ",
    "S2",
    "S3",
    "RSTO",
    "RSTR",
    "RSTOS0",
    "RSTRH",
    "SH",
    "SHR",
    "OTH",
)
STATE_CODE = {s: i for i, s in enumerate(CONN_STATES)}
FAILED_STATES = frozenset({"S0", "REJ", "RSTOS0", "RSTRH", "SH", "SHR"})
CLOSED_STATES = frozenset({"SF", "REJ", "RSTO", "RSTR", "RSTOS0", "RSTRH", "SH", "SHR"})
UNCLOSED_STATES = frozenset({"S1", "S2", "S3", "OTH"})

# Transport protocols. Codes are positions in this tuple; 0 = anything else.
PROTOCOLS: tuple[str, ...] = ("other", "tcp", "udp", "icmp")
PROTO_CODE = {p: i for i, p in enumerate(PROTOCOLS)}
PROTO_CODE["icmp6"] = PROTO_CODE["ipv6-icmp"] = PROTO_CODE["icmp"]

# Service flags used by the removal estimate.
SERVICE_DNS = 1
"""The connection's service includes dns (Zeek's dns_session_timeout applies)."""
SERVICE_LONG_TIMEOUT = 2
"""ssh or ftp: Zeek's Conn::analyzer_inactivity_timeouts keep these for an hour."""
LONG_TIMEOUT_SERVICES = frozenset({"ssh", "ftp", "ftp-data", "telnet", "rlogin"})
LONG_TIMEOUT_PORTS = (21, 22, 23, 513)
"""Conn::port_inactivity_timeouts in base/protocols/conn/inactivity.zeek."""


@dataclass(frozen=True)
class RemovalDelays:
    """Seconds between a connection's last packet and Zeek's removal of it.

    Defaults are Zeek's own defaults; they must match the deployment's Zeek settings,
    and the Zeek script exports the same options (``SeqWatch::tcp_attempt_delay`` ...).
    """

    tcp_attempt: float = 5.0
    """``tcp_attempt_delay``: an unanswered SYN (S0) is removed this long after ts."""
    tcp_close: float = 5.0
    """``tcp_close_delay`` / ``tcp_reset_delay``: closed or reset TCP."""
    tcp_inactivity: float = 300.0
    """``tcp_inactivity_timeout``: TCP that never closed."""
    long_inactivity: float = 3600.0
    """``Conn::analyzer_inactivity_timeouts`` for ssh/ftp and ports 21/22/23/513."""
    dns: float = 10.0
    """``dns_session_timeout``."""
    udp_inactivity: float = 60.0
    """``udp_inactivity_timeout``."""
    icmp_inactivity: float = 60.0
    """``icmp_inactivity_timeout``, also used for other protocols."""

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, float]) -> RemovalDelays:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown removal delay(s): {', '.join(sorted(unknown))}")
        cleaned = {}
        for key, value in values.items():
            value = float(value)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"removal delay {key} must be a finite number >= 0, got {value}")
            cleaned[key] = value
        return cls(**cleaned)

    @property
    def max_delay(self) -> float:
        return max(asdict(self).values())


@dataclass(frozen=True)
class FeatureConfig:
    """How connections become feature vectors: the settings both sides must share."""

    interval: float = DEFAULT_INTERVAL
    distinct_cap: int = DEFAULT_DISTINCT_CAP
    delays: RemovalDelays = RemovalDelays()

    def __post_init__(self) -> None:
        if not (self.interval > 0 and math.isfinite(self.interval)):
            raise ValueError(f"interval must be a positive number of seconds, got {self.interval}")
        if self.distinct_cap < 1:
            raise ValueError(f"distinct_cap must be >= 1, got {self.distinct_cap}")
