"""``seqwatch mitigation status | unblock ADDR | flush``: the operator's handle on the enforcer.

These commands act on the firewall itself (the kernel's sets and chains), not on a running
sidecar, so they work while the service runs, after it died, and when ``mode`` is ``off``.
A dry-run sidecar keeps its state in memory only, so for these commands ``dry-run`` reads
as ``off`` and they show the real firewall. Only the ``[mitigation]`` table of the
configuration is read, so that a broken unrelated section cannot stand in the way of an
emergency ``flush``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from seqwatch.sidecar.cli import CommandError

if TYPE_CHECKING:
    from seqwatch.sidecar.mitigation.decisions import Decision
    from seqwatch.sidecar.mitigation.enforcer import Enforcer

T = TypeVar("T")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``mitigation`` command and its three subcommands."""
    parser = subparsers.add_parser(
        "mitigation",
        help="show, lift or remove seqwatch's firewall blocks",
        description="Inspect and clean up the blocks the seqwatch enforcer put in place.",
    )
    sub = parser.add_subparsers(dest="mitigation_command", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        help="TOML file whose [mitigation] table names the sets and chain "
        "(default: $SEQWATCH_CONFIG, else /etc/seqwatch/seqwatch.toml if present)",
    )
    common.add_argument("--netns", help="act inside this network namespace")
    common.add_argument("--json", action="store_true", help="machine-readable output")

    status = sub.add_parser(
        "status", parents=[common], help="list current blocks with their remaining time"
    )
    status.set_defaults(handler=_status)
    unblock = sub.add_parser("unblock", parents=[common], help="lift the block of one address")
    unblock.add_argument("address", metavar="ADDR", help="IPv4 or IPv6 address")
    unblock.set_defaults(handler=_unblock)
    flush = sub.add_parser(
        "flush",
        parents=[common],
        help="remove every rule, chain and set seqwatch created (and nothing else)",
    )
    flush.set_defaults(handler=_flush)


def _enforcer(args: argparse.Namespace) -> Enforcer:
    # Imported here so that `seqwatch --help` does not load the mitigation modules.
    from seqwatch.sidecar.config import default_config_path
    from seqwatch.sidecar.mitigation.config import (
        MitigationConfig,
        MitigationConfigError,
        Mode,
        load_config,
    )
    from seqwatch.sidecar.mitigation.enforcer import Enforcer

    path = args.config if args.config is not None else default_config_path()
    try:
        config = load_config(path) if path is not None else MitigationConfig()
        overrides: dict = {}
        if config.mode is Mode.DRY_RUN:
            overrides["mode"] = Mode.OFF
        if args.netns:
            overrides["netns"] = args.netns
        config = dataclasses.replace(config, **overrides)
    except MitigationConfigError as exc:
        raise CommandError(str(exc)) from None
    return Enforcer(config)


def _status(args: argparse.Namespace) -> int:
    from seqwatch.sidecar.mitigation.decisions import format_status

    with _enforcer(args) as enforcer:
        entries = _guard(enforcer.status)
    if args.json:
        json.dump([e.to_dict() for e in entries], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_status(entries))
    return 0


def _unblock(args: argparse.Namespace) -> int:
    with _enforcer(args) as enforcer:
        decision = _guard(lambda: enforcer.unblock(args.address, source="cli"))
        return _report(args, enforcer, decision)


def _flush(args: argparse.Namespace) -> int:
    with _enforcer(args) as enforcer:
        decision = _guard(lambda: enforcer.flush(source="cli"))
        if not args.json and decision.ok:
            for argv in decision.commands:
                print(" ".join(argv))
        return _report(args, enforcer, decision)


def _guard(action: Callable[[], T]) -> T:
    """Run ``action``; a missing program or privilege, or a failing command, is one line."""
    from seqwatch.sidecar.mitigation.firewall import FirewallError, MitigationUnavailable

    try:
        return action()
    except (MitigationUnavailable, FirewallError) as exc:
        raise CommandError(str(exc)) from None


def _report(args: argparse.Namespace, enforcer: Enforcer, decision: Decision) -> int:
    if not decision.ok:
        raise CommandError(f"{decision.address}: {decision.message}")
    if args.json:
        json.dump(decision.to_record(enforcer.mode.value), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"{decision.address}: {decision.message}")
    return 0
