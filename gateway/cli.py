"""The ``aleacc-gateway`` command: one parser, each subcommand's module in commands/."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import version

from .commands import check_config, demo, learn, mock_upstream, probe, serve, sign

# In the order ``--help`` lists them.
COMMANDS = (serve, check_config, mock_upstream, demo, sign, learn, probe)
# What a shell reports for a command that ended on Ctrl-C (128 + SIGINT).
INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: ``--version`` and every subcommand with its options."""
    parser = argparse.ArgumentParser(
        prog="aleacc-gateway", description="Signing reverse proxy for the Aleacc Web API."
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {version('aleacc-gateway')}"
    )
    commands = parser.add_subparsers(required=True, dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand it names; its exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except KeyboardInterrupt:
        # Ctrl-C is how a person stops a search or a walk that takes too long: one line,
        # not a traceback. Whatever the command started is stopped on the way out (learn's
        # pool ends its workers, the demo's servers close in their finally blocks).
        print(f"{args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED
    return code
