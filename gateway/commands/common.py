"""What several commands share: the ``--log-format`` option and reading a config file."""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path
from typing import TypeAlias

from ..config import DEFAULT_TENANT, ConfigError, Settings, TenantSettings, load_file

# What each command's add_parser() adds itself to.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def log_format_option() -> argparse.ArgumentParser:
    """A parent parser with ``--log-format``."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--log-format", choices=("json", "console"), default="json", help="default: json"
    )
    return options


def config_option(parser: argparse.ArgumentParser) -> None:
    """``--config FILE``, optional: the environment may give every setting instead."""
    parser.add_argument(
        "--config",
        type=Path,
        help="the TOML file; ALEACC_GATEWAY_<TABLE>_<KEY> variables override it, and "
        "without it must give every required key",
    )


def load_or_report(path: Path | None) -> Settings | None:
    """The settings in ``path`` (None: none) with the environment's ALEACC_GATEWAY_*
    variables over them, or None after printing every problem to stderr."""
    try:
        return load_file(path, os.environ).settings
    except ConfigError as exc:
        report(path, exc.problems)
        return None


def config_tenant(path: Path, name: str | None) -> tuple[Settings, TenantSettings]:
    """The settings in ``path`` (the environment's variables over them) and the tenant
    called ``name`` (None: the default); ValueError, naming the file, for a problem of
    either (sign, probe and learn print it as their one line)."""
    try:
        settings = load_file(path, os.environ).settings
        return settings, settings.tenant(name or DEFAULT_TENANT)
    except ConfigError as exc:
        raise ValueError(f"{path}: " + "; ".join(exc.problems)) from None
    except KeyError as exc:
        raise ValueError(f"{path}: --tenant: {exc.args[0]}") from None


def source(path: Path | None) -> str:
    """How messages name where the settings came from."""
    return str(path) if path is not None else "environment"


def report(path: Path | None, problems: list[str]) -> None:
    """``path: N problem(s):`` and one line per problem, on stderr."""
    lines = [f"{source(path)}: {len(problems)} problem(s):", *(f"  - {p}" for p in problems)]
    print("\n".join(lines), file=sys.stderr)


def parse_toml_string(value: str, option: str) -> str:
    """``value`` read as the inside of a TOML basic string (so ``\\n`` is a newline)."""
    try:
        parsed: str = tomllib.loads(f'v = "{value}"')["v"]
    except tomllib.TOMLDecodeError:
        raise ValueError(f"{option}: not a valid TOML string body: {value!r}") from None
    return parsed
