"""``aleacc-gateway check-config``: every problem in a config file, without starting."""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime

from .. import tls
from ..config import (
    DEFAULT_TENANT,
    ConfigError,
    Settings,
    TenantSettings,
    effective_toml,
    read_settings,
)
from ..preflight import preflight
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
    check.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """0 with ``ok``, each warning on a line of its own, and the tenants found; 1 with
    every problem listed."""
    try:
        effective = read_settings(args.config, os.environ)
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
