"""``aleacc-gateway serve``: run the gateway (one process, or a supervisor and workers)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from collections.abc import Coroutine
from typing import Any

import structlog

from ..config import Settings
from ..egress import EgressError
from ..logs import configure_logging
from ..preflight import Preflight, preflight
from ..server import GatewayServer, ListenError, ShutdownSignals, cancel_all, format_address
from ..tls import TlsError
from ..workers import Supervisor, report_ready
from .common import Commands, config_option, load_or_report, log_format_option, source

log = structlog.get_logger("aleacc_gateway")


def add_parser(commands: Commands) -> None:
    """The ``serve`` subcommand's arguments."""
    serve = commands.add_parser("serve", parents=[log_format_option()], help="run the gateway")
    config_option(serve)
    # Set by the supervisor when it starts worker N (server.workers > 1).
    serve.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    # The worker's end of its link to the supervisor (see workers.py).
    serve.add_argument("--link-fd", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Serve until a signal; 1 (one line per problem) when the configuration cannot work."""
    settings = load_or_report(args.config)
    if settings is None:
        return 1
    # Before anything starts or logs. A secret still on its way (a mount) only keeps the
    # gateway unready; one that is there but cannot be the key is a configuration error.
    loaded = preflight(settings)
    if loaded.problems or loaded.missing:
        for problem in [*loaded.problems, *loaded.missing]:
            print(f"{source(args.config)}: {problem}", file=sys.stderr)
        return 1
    configure_logging(args.log_format)
    try:
        if args.worker is not None:
            structlog.contextvars.bind_contextvars(worker=args.worker)
            return run_async(_run_gateway(loaded, link_fd=args.link_fd))
        if settings.server.workers > 1:
            supervisor = Supervisor(loaded, args.config, args.log_format)
            return run_async(supervisor.run(summary(loaded)))
        return run_async(_run_gateway(loaded))
    except (ListenError, TlsError, EgressError) as exc:
        print(f"{source(args.config)}: {exc}", file=sys.stderr)
        return 1


async def _run_gateway(loaded: Preflight, link_fd: int | None = None) -> int:
    """Serve until a signal (or, for a worker, until its supervisor is gone); then drain."""
    server = GatewayServer(loaded.settings, worker=link_fd is not None, loaded=loaded)
    signals = ShutdownSignals(on_reload=server.reload_secrets)
    link: list[asyncio.Task[None]] = []
    if link_fd is not None:
        log.info(
            "worker_started", proxy=format_address(await server.start_proxy()), pid=os.getpid()
        )

        def supervisor_gone() -> None:
            signals.stop_now("supervisor_gone", hurry=True)

        link.append(await report_ready(link_fd, supervisor_gone))
    else:
        bound = await server.start()
        log.info(
            "started",
            proxy=format_address(bound.proxy),
            admin=format_address(bound.admin),
            **summary(loaded),
        )
    await signals.stop.wait()
    log.info("stopping", signal=signals.received)
    await server.drain(hurry=signals.hurry)
    await cancel_all(link)
    log.info("stopped")
    return 0


def summary(loaded: Preflight) -> dict[str, object]:
    """What the gateway runs with, for the start-up line: never the secret itself."""
    settings: Settings = loaded.settings
    return {
        "upstream": str(settings.upstream.url),
        "tenants": [
            {
                "name": t.name,
                "api_id": t.api_id,
                "secret_source": f"file:{t.secret_file}"
                if t.secret_file
                else f"env:{t.secret_env}",
                "upstream": str(settings.upstream_of(t)),
                "fields": list(t.scheme.fields),
                "separator": t.scheme.separator,
                "secret_encoding": t.scheme.secret_encoding,
                "signature_encoding": t.scheme.signature_encoding,
                "timestamp_unit": t.scheme.timestamp_unit,
                "request_id_format": t.scheme.request_id_format,
            }
            for t in settings.every_tenant
        ],
        "trusted_proxies": [str(n) for n in settings.client_ip.trusted_proxies],
        "allowed_clients": [str(n) for n in settings.access.allowed_clients],
        "max_body_bytes": settings.limits.max_body_bytes,
        "tls": settings.server.tls is not None,
        "client_certificates": bool(settings.server.tls and settings.server.tls.client_ca_file),
        # host:port only: the credentials never reach a log line.
        "egress_proxy": str(loaded.egress) if loaded.egress else None,
    }


def run_async(main: Coroutine[Any, Any, int]) -> int:
    """Run ``main`` on uvloop where it is installed, else on asyncio's own loop."""
    _tune_gc()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - installed with the package on Linux
        return asyncio.run(main)
    return uvloop.run(main)


def _tune_gc() -> None:
    """Collect cycles less often in a long-running proxy process.

    A proxied request allocates a few hundred short-lived objects and almost no cycles,
    so CPython's default (a young-generation pass every 700 allocations) collects every
    few requests for nothing; what exists at start-up (modules, settings) is frozen out
    of every pass (the figures are in bench/README.md).
    """
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
