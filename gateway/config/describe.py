"""The configuration described: the reference page (docs/configuration.md) written from
the declarations, and the configuration in force as TOML (``check-config --show``)."""

from __future__ import annotations

from typing import Any

from ..toml_writer import toml_string
from .declare import declared_keys, value_of
from .load import Effective
from .settings import SCHEME_KEYS, TenantSettings, tables
from .values import Range


def reference() -> str:
    """docs/configuration.md, written from the declarations (scripts/generate-docs)."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from gateway/config/settings.py by scripts/generate-docs: edit the",
        "     declarations there, not this page. A test fails when the two differ. -->",
        "",
        "One TOML file, given to `serve` and `check-config` with `--config`. Unknown tables or",
        "keys and bad values stop the start-up, all reported at once, each with its key",
        "(`check-config` reports them without starting); a misspelt table or key is told the",
        "one it is closest to (`upstream.conect_timeout_s: unknown key (did you mean",
        "connect_timeout_s?)`). Examples: `config/sidecar.toml`, `config/standalone.toml`,",
        "`config/tenants.toml`, `config/demo.toml`.",
        "",
        "## From the environment",
        "",
        "Every key of the tables below can also be given as an environment variable,",
        "`ALEACC_GATEWAY_<TABLE>_<KEY>` in upper case: `ALEACC_GATEWAY_UPSTREAM_URL`,",
        "`ALEACC_GATEWAY_SERVER_WORKERS=4`, `ALEACC_GATEWAY_CLIENT_IP_TRUSTED_PROXIES`. A",
        "variable overrides the file; without `--config` the variables must give every",
        "required key. A list is comma-separated (`10.0.0.0/8,127.0.0.0/8`) or a JSON array",
        '(`["GET /player/*", "POST /player/signin"]`); a boolean is `true` or `false`; any',
        "other value is taken as written (a separator of a newline is a real newline, not",
        "`\\n`). Values are checked as the file's are, and a problem names the variable",
        "(`ALEACC_GATEWAY_SERVER_WORKERS (server.workers): 99 must be from 1 to 64`). An",
        "`ALEACC_GATEWAY_*` variable that names no key is a problem too, so a typo never goes",
        "unnoticed; a variable a `secret_env` names is the secret, not a setting.",
        "`[[tenants]]` are set in the file only. `check-config --show` prints the",
        "configuration in force as TOML with each value's origin (`file`, `environment",
        "VAR`, `default`) in a comment; the secret is never in it, only where it is read from.",
    ]
    for table, section in [*tables(), ("tenants", TenantSettings)]:
        heading = f"[[{table}]]" if section is TenantSettings else f"[{table}]"
        lines += ["", f"## {heading}", "", _first_line(section.__doc__), ""]
        if section is TenantSettings:
            lines += [
                "An array of tables, one per brand beyond `[signing]` (the default tenant);",
                "docs/tenants.md tells how a request's tenant is chosen. A scheme key not set",
                "here is `[signing]`'s.",
                "",
            ]
        lines += ["| key | default | meaning |", "|---|---|---|"]
        for d in declared_keys(section, table):
            default = "required" if d.required else d.key.shown or _shown(d.default)
            if section is TenantSettings and d.name in SCHEME_KEYS:
                default = "`[signing]`'s"
            ranged = f"; {d.key.convert}" if isinstance(d.key.convert, Range) else ""
            lines.append(f"| `{d.name}` | {default} | {d.key.doc}{ranged} |")
    return "\n".join(lines) + "\n"


def effective_toml(effective: Effective) -> str:
    """The configuration in force as TOML, each value with its origin in a comment:
    ``file``, ``environment VAR``, ``[signing]`` (a tenant's scheme key) or ``default``.
    Keys without a value (none by default) are shown as comments. No secret is in the
    settings: only where each one is read from."""
    settings, origins = effective.settings, effective.origins
    lines: list[str] = []
    sections = [(f"[{t}]", t, getattr(settings, t), c) for t, c in tables()]
    sections += [
        ("[[tenants]]", f"tenants[{i}]", tenant, TenantSettings)
        for i, tenant in enumerate(settings.tenants)
    ]
    for heading, table, values, section in sections:
        lines += ["", heading] if lines else [heading]
        for d in declared_keys(section, table):
            origin = origins.get(f"{table}.{d.name}")
            if origin is None:
                inherited = section is TenantSettings and d.name in SCHEME_KEYS
                origin = "[signing]" if inherited else "default"
            value = value_of(values, d.name)
            if value is None:
                lines.append(f"# {d.name} is not set ({origin})")
            else:
                lines.append(f"{d.name} = {_toml(value)}  # {origin}")
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    """A converted value written back as TOML."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(map(_toml, value)) + "]"
    if isinstance(value, frozenset):
        return "[" + ", ".join(map(_toml, sorted(value, key=str))) + "]"
    return toml_string(str(value))


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0]


def _shown(value: Any) -> str:
    """A default as the reference shows it: as it would be written in the file."""
    if value is None:
        return "none"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"  # seconds as people write them: `5`, not `5.0`
    return f"`{_toml(value)}`"
