"""Response: blocking offenders with iptables/ip6tables and ipset, safely.

Off by default. ``Enforcer`` applies a safety policy (allowlist, TTLs with escalation,
caps on concurrent and new blocks, an audit log of every decision) before it touches the
firewall; ``seqwatch mitigation status|unblock|flush`` inspects and cleans up;
:mod:`.netcontrol` answers Zeek's NetControl framework. docs/mitigation.md is the guide.

Only standard-library modules are imported here, so the command line stays fast;
:mod:`.netcontrol` (which needs the wire codec) is imported by whoever uses it.
"""

from seqwatch.sidecar.mitigation.config import (
    MitigationConfig,
    MitigationConfigError,
    Mode,
    Reconcile,
    load_config,
)
from seqwatch.sidecar.mitigation.decisions import BlockEntry, Decision, Outcome
from seqwatch.sidecar.mitigation.enforcer import Enforcer
from seqwatch.sidecar.mitigation.firewall import (
    Firewall,
    FirewallError,
    MitigationUnavailable,
    RunResult,
    SubprocessFirewall,
)
from seqwatch.sidecar.mitigation.simulated import SimulatedFirewall

__all__ = [
    "BlockEntry",
    "Decision",
    "Enforcer",
    "Firewall",
    "FirewallError",
    "MitigationConfig",
    "MitigationConfigError",
    "MitigationUnavailable",
    "Mode",
    "Outcome",
    "Reconcile",
    "RunResult",
    "SimulatedFirewall",
    "SubprocessFirewall",
    "load_config",
]
