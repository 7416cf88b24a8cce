"""``aleacc-gateway check-config``: every problem in a config file, without starting."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from .. import tls
from ..preflight import preflight
from .common import Commands, load_or_report, report


def add_parser(commands: Commands) -> None:
    """The ``check-config`` subcommand's arguments."""
    check = commands.add_parser("check-config", help="report every problem in a config file")
    check.add_argument("--config", type=Path, required=True)
    check.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """0 with ``ok`` (and any warnings), 1 with every problem listed."""
    settings = load_or_report(args.config)
    if settings is None:
        return 1
    loaded = preflight(settings)
    problems = list(loaded.problems)
    warnings = [loaded.secret_missing] if loaded.secret_missing else []
    if loaded.certificate is not None:
        error, warning = tls.expiry_problems(loaded.certificate.not_after, datetime.now(UTC))
        problems += [error] if error else []
        warnings += [warning] if warning else []
    # Files mounted only where the gateway runs: not checked here, and said so.
    warnings += [f"{missing}, not checked" for missing in loaded.missing]
    if problems:
        report(args.config, problems)
        return 1
    print(f"{args.config}: ok" + (f" (warning: {'; '.join(warnings)})" if warnings else ""))
    return 0
