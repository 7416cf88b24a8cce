"""The ``aleacc-gateway`` command: one parser, each subcommand's module in commands/."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .commands import check_config, demo, learn, mock_upstream, probe, serve, sign

# In the order ``--help`` lists them.
COMMANDS = (serve, check_config, mock_upstream, demo, sign, learn, probe)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand it names; its exit code."""
    parser = argparse.ArgumentParser(
        prog="aleacc-gateway", description="Signing reverse proxy for the Aleacc Web API."
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code
