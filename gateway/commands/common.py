"""What several commands share: the ``--log-format`` option and reading a config file."""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path
from typing import TypeAlias

from ..config import ConfigError, Settings, load_settings

# What each command's add_parser() adds itself to.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def log_format_option() -> argparse.ArgumentParser:
    """A parent parser with ``--log-format``."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--log-format", choices=("json", "console"), default="json", help="default: json"
    )
    return options


def load_or_report(path: Path) -> Settings | None:
    """The settings in ``path``, or None after printing every problem to stderr."""
    try:
        return load_settings(path)
    except ConfigError as exc:
        report(path, exc.problems)
        return None


def report(path: Path, problems: list[str]) -> None:
    """``path: N problem(s):`` and one line per problem, on stderr."""
    lines = [f"{path}: {len(problems)} problem(s):", *(f"  - {p}" for p in problems)]
    print("\n".join(lines), file=sys.stderr)


def parse_toml_string(value: str, option: str) -> str:
    """``value`` read as the inside of a TOML basic string (so ``\\n`` is a newline)."""
    try:
        parsed: str = tomllib.loads(f'v = "{value}"')["v"]
    except tomllib.TOMLDecodeError:
        raise ValueError(f"{option}: not a valid TOML string body: {value!r}") from None
    return parsed
