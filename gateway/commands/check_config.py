"""``aleacc-gateway check-config``: every problem in a config file, without starting."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from datetime import UTC, datetime

from .. import tls
from ..config import (
    DEFAULT_TENANT,
    ConfigError,
    Effective,
    Settings,
    TenantSettings,
    effective_toml,
    load_file,
)
from ..preflight import Preflight, preflight
from .common import Commands, config_option, report, source


def add_parser(commands: Commands) -> None:
    """The ``check-config`` subcommand's arguments."""
    check = commands.add_parser("check-config", help="report every problem in a config file")
    config_option(check)
    check.add_argument(
        "--show",
        action="store_true",
        help="print the configuration in force as TOML, each value's origin in a comment",
    )
    check.add_argument(
        "--probe-store",
        action="store_true",
        help="also connect to limits.store_url once: its version and a round trip's time "
        "(exit 2 when it cannot be reached)",
    )
    check.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """0 with ``ok``, each warning on a line of its own, and the tenants found; 1 with
    every problem listed; with ``--probe-store``, 2 when the store cannot be reached."""
    try:
        effective = load_file(args.config, os.environ)
    except ConfigError as exc:
        report(args.config, exc.problems)
        return 1
    settings = effective.settings
    loaded = preflight(settings)
    problems = list(loaded.problems)
    warnings = list(loaded.secret_missing)
    if loaded.certificate is not None:
        error, warning = tls.expiry_problems(loaded.certificate.not_after, datetime.now(UTC))
        problems += [error] if error else []
        warnings += [warning] if warning else []
    # Files mounted only where the gateway runs: not checked here, and said so.
    warnings += [f"{missing}, not checked" for missing in loaded.missing]
    warnings += host_only_warnings(settings)
    warnings += escaped_separator_warnings(effective)
    if problems:
        report(args.config, problems)
        return 1
    if args.show:
        print(effective_toml(effective), end="")
        return 0
    # One warning a line: a warning's own text may hold a ';'.
    print(f"{source(args.config)}: ok" + (f", {len(warnings)} warning(s):" if warnings else ""))
    for warning in warnings:
        print(f"  warning: {warning}")
    for tenant in settings.every_tenant:
        print(f"  tenant {tenant.name} (api_id {tenant.api_id}): {chosen_by(settings, tenant)}")
    return probe_store(loaded) if args.probe_store else 0


# Connecting (and TLS) included: longer than a request may wait, as nothing else waits here.
PROBE_TIMEOUT_S = 5.0


def probe_store(loaded: Preflight) -> int:
    """Connect to the store once and say what answered: 0, or 2 with why not."""
    limits = loaded.settings.limits
    if limits.store_url is None:
        print("--probe-store: limits.store_url is not set", file=sys.stderr)
        return 2
    if (limits.store_password_file or limits.store_password_env) and not loaded.store_password:
        print(f"store {limits.store_url}: its password is not there to try", file=sys.stderr)
        return 2

    # The client is loaded only here: check-config without --probe-store never needs it.
    from redis.exceptions import RedisError

    from ..redis_store import LimitStore, error_reason

    async def probe() -> tuple[str, float]:
        store = LimitStore(limits, loaded.store_password)
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                return await store.probe()
        finally:
            await store.close()

    try:
        version, latency = asyncio.run(probe())
    except (RedisError, OSError, TimeoutError) as exc:
        reason = error_reason(exc)
        detail = str(exc).strip() or type(exc).__name__
        print(f"store {limits.store_url}: cannot use it ({reason}): {detail}", file=sys.stderr)
        return 2
    print(f"store {limits.store_url}: Redis {version}, round trip {latency * 1000:.1f} ms")
    return 0


def chosen_by(settings: Settings, tenant: TenantSettings) -> str:
    """How requests come to be ``tenant``'s, in the order the gateway tries."""
    if tenant.name == DEFAULT_TENANT:
        if not settings.tenants:
            return f"every request, on server.listen {settings.server.listen}"
        return f"on server.listen {settings.server.listen}, a request no other tenant claims"
    ways = [f"every request on its listener {tenant.listen}"] if tenant.listen else []
    if tenant.hosts:
        ways.append(f"on server.listen, Host {', '.join(sorted(tenant.hosts))}")
    if tenant.client_names:
        ways.append(
            f"on server.listen, client certificate {', '.join(sorted(tenant.client_names))}"
        )
    return "; ".join(ways)


def host_only_warnings(settings: Settings) -> list[str]:
    """A tenant chosen by Host with nothing else to say who may use it: any client the
    gateway allows could write that Host and be signed as that tenant."""
    return [
        f"{settings.table_of(t)}: chosen by Host alone; any allowed client can write that "
        "Host: set its allowed_clients or client_names"
        for t in settings.tenants
        if t.hosts and t.allowed_clients is None and t.client_names is None
    ]


# A backslash and the letter of an escape, as typed: a TOML literal string ('\n') and an
# environment variable keep both characters, and every request is then signed with them.
_ESCAPE = re.compile(r"\\[0abefnrtuUvx\\\"']")


def escaped_separator_warnings(effective: Effective) -> list[str]:
    """A separator, set in [signing] or a tenant, that holds an escape written out."""
    settings = effective.settings
    warnings = []
    for tenant in settings.every_tenant:
        table = settings.table_of(tenant)
        # None: the default, or [signing]'s (warned about there).
        origin = effective.origins.get(f"{table}.separator")
        escape = _ESCAPE.search(tenant.scheme.separator)
        if origin is None or escape is None:
            continue
        where = f"{table}.separator"
        if origin.startswith("environment "):
            where = f"{origin.removeprefix('environment ')} ({where})"
            fix = "give the variable the character itself"
        else:
            fix = f'write the escape in double quotes, "{escape.group()}"'
        warnings.append(
            f"{where}: holds {escape.group()} as two characters, a backslash and "
            f"{escape.group()[1]!r}, not the character it escapes: {fix}"
        )
    return warnings
