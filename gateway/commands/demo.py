"""``aleacc-gateway demo``: walk a player through the gateway to the mock upstream."""

from __future__ import annotations

import argparse
import asyncio
import io
import sys

from ..logs import configure_logging
from .common import Commands


def add_parser(commands: Commands) -> None:
    """The ``demo`` subcommand (no arguments)."""
    demo = commands.add_parser("demo", help="walk a player through the gateway and exit")
    demo.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """0 when every step did what it should."""
    from ..mock.demo import run_demo  # the demo's client code is needed by no other command

    # The gateway's warnings are read by the demo (it shows how a refusal was explained)
    # and every other line is passed on to stderr once the walk is done.
    log = io.StringIO()
    configure_logging("json", level="warning", stream=log)
    code = asyncio.run(run_demo(log=log))
    for line in log.getvalue().splitlines():
        if '"upstream_rejected"' not in line:
            print(line, file=sys.stderr)
    return code
