"""``aleacc-gateway mock-upstream``: serve the mock upstream, Aleacc's stand-in."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import structlog
from aiohttp import web

from ..config import listener_clashes, parse_listen
from ..forwarding import base_path
from ..logs import configure_logging
from ..logs import flush as flush_logs
from ..mock.upstream import DEMO_API_ID, DEMO_SECRET, Credential, MockSettings, create_mock_app
from ..secret import SecretError, load_key, read_secret
from ..server import ListenError, bind, format_address
from .common import Commands, load_or_report, log_format_option

log = structlog.get_logger("aleacc_gateway")


def add_parser(commands: Commands) -> None:
    """The ``mock-upstream`` subcommand's arguments."""
    mock = commands.add_parser(
        "mock-upstream", parents=[log_format_option()], help="run the mock upstream"
    )
    mock.add_argument("--listen", default="127.0.0.1:8081", help="default: 127.0.0.1:8081")
    mock.add_argument(
        "--config",
        type=Path,
        help="accept every tenant's api_id, secret and scheme from this gateway config",
    )
    mock.add_argument(
        "--base-path",
        help="serve the API under this path, e.g. /api (default: --config's upstream.url's, "
        "else none)",
    )
    mock.add_argument(
        "--faults", action="store_true", help="obey X-Mock-Fault: delay=S,status=N,cut,reset"
    )
    mock.add_argument(
        "--clock-offset-s",
        "--clock-offset",  # its earlier name
        dest="clock_offset_s",
        type=float,
        default=0.0,
        metavar="N",
        help="run N seconds ahead (negative: behind): its Date header and its 300 s window",
    )
    mock.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Serve the mock upstream until interrupted; 1 or 2 (one line) for bad input."""
    configure_logging(args.log_format)
    try:
        listen = parse_listen(args.listen)
    except ValueError as exc:
        print(f"--listen: {exc}", file=sys.stderr)
        return 2
    credentials = [Credential(DEMO_API_ID, (DEMO_SECRET,))]
    base = args.base_path
    if args.config is not None:
        settings = load_or_report(args.config)
        if settings is None:
            return 1
        # It runs beside the gateway this config is for: on none of its addresses.
        clashes = listener_clashes([*settings.listeners, ("--listen", listen)])
        for clash in clashes:
            print(f"mock-upstream: {args.config}: {clash}", file=sys.stderr)
        if clashes:
            return 2
        if base is None:
            # Where the gateway with this config sends its requests: below upstream.url's path.
            base = base_path(settings.upstream.url)
        credentials = []
        for tenant in settings.every_tenant:
            try:
                secret = read_secret(tenant)
                load_key(tenant)  # the same check and message as the gateway's
            except SecretError as exc:
                print(f"{args.config}: {settings.table_of(tenant)}: {exc}", file=sys.stderr)
                return 1
            # As a strict Aleacc would, it enforces each tenant's request id form.
            scheme = tenant.scheme
            credentials.append(
                Credential(tenant.api_id, (secret,), scheme, scheme.request_id_format)
            )
    first, *others = credentials
    mock = MockSettings(
        api_id=first.api_id,
        secrets=first.secrets,
        scheme=first.scheme,
        request_id_format=first.request_id_format,
        others=tuple(others),
        faults=args.faults,
        clock_offset_s=args.clock_offset_s,
        base_path=(base or "").rstrip("/"),
    )
    app = create_mock_app(mock)
    try:
        sock = bind(listen, setting="--listen")
    except ListenError as exc:
        print(f"mock-upstream: {exc}", file=sys.stderr)
        return 1
    log.info(
        "mock_upstream_started",
        listen=format_address(sock.getsockname()[:2]),
        base_path=mock.base_path,
        faults=args.faults,
    )
    flush_logs()  # whoever started the mock upstream may be waiting for this line
    web.run_app(app, sock=sock, print=None, access_log=None)
    return 0
