"""``aleacc-gateway probe``: find the signing scheme by asking the upstream.

Online and bounded: one request per candidate, to the configured upstream only, at most
``--max-requests`` of them, ``--interval-s`` apart; the loop is ``discover/probe.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from ..config import DEFAULT_TENANT
from ..discover.probe import DEFAULT_CLIENT_IP, NONE, probe
from ..secret import SecretError, read_secret
from .common import Commands, config_tenant


def add_parser(commands: Commands) -> None:
    """The ``probe`` subcommand's arguments."""
    command = commands.add_parser(
        "probe",
        help="find the signing scheme by asking the upstream (sends requests)",
        description="Send one request per candidate scheme, best first, to the configured "
        "upstream; stop at the first answer that is not 403.",
    )
    command.add_argument("--config", type=Path, required=True)
    command.add_argument("--path", required=True, help="a harmless path, e.g. /player/balance")
    command.add_argument("--method", default="GET", help="default: GET")
    command.add_argument("--max-requests", type=int, default=16, help="default: 16")
    command.add_argument("--interval-s", type=float, default=1.0, help="pause between requests")
    command.add_argument("--session-id", help="send X-Player-Session-Id, to place it too")
    command.add_argument(
        "--client-ip",
        default=DEFAULT_CLIENT_IP,
        help=f"X-Client-Ip to send (default: {DEFAULT_CLIENT_IP})",
    )
    command.add_argument("--data", help="a body to send (none by default)")
    command.add_argument(
        "--tenant",
        default=DEFAULT_TENANT,
        metavar="NAME",
        help="sign with this tenant's credential, to its upstream (default: [signing]'s)",
    )
    command.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """The command: 0 found, 1 none (or bad input, said in one line)."""
    if not 1 <= args.max_requests <= 100 or not 0 <= args.interval_s <= 60:
        print("probe: --max-requests must be 1-100 and --interval-s 0-60", file=sys.stderr)
        return NONE
    if not args.path.startswith("/"):
        print(f"probe: --path {args.path!r} must start with /", file=sys.stderr)
        return NONE
    try:
        settings, tenant = config_tenant(args.config, args.tenant)
        secret = read_secret(tenant)
    except (ValueError, SecretError) as exc:
        print(f"probe: {exc}", file=sys.stderr)
        return NONE
    return asyncio.run(probe(settings, tenant, secret, args))
