"""The ``seqwatch`` command line: one entry point, subcommands registered by their modules.

Each command module exposes ``register(subparsers)`` and keeps heavy imports (onnxruntime,
torch) inside its handler, so that ``seqwatch --help`` is instant and the runtime never
imports training code unless a training command is asked for.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from seqwatch.sidecar import __version__

# Modules that contribute subcommands, in help order. Training commands live in the
# optional training package; the runtime only names the module.
COMMAND_MODULES = (
    "seqwatch.training.commands",
    "seqwatch.sidecar.commands",
    "seqwatch.sidecar.mitigation.commands",
)


class CommandError(Exception):
    """An error to report to the operator as one line, without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqwatch",
        description="Recurrent-model anomaly detection for Zeek and Suricata.",
    )
    parser.add_argument("--version", action="version", version=f"seqwatch {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log line format (json for log shippers)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # Only a missing module of our own is tolerated (e.g. a trimmed install);
            # a missing dependency inside it must surface.
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from seqwatch.sidecar.logs import setup_logging

    setup_logging(args.verbose, args.log_format)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except CommandError as exc:
        print(f"seqwatch {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        logging.getLogger("seqwatch").info("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
