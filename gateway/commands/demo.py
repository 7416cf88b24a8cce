"""``aleacc-gateway demo``: walk a player through the gateway to the mock upstream."""

from __future__ import annotations

import argparse
import asyncio
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

    configure_logging("console", level="warning", stream=sys.stderr)
    return asyncio.run(run_demo())
