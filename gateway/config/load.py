"""Loading: the TOML file, then the ``ALEACC_GATEWAY_*`` variables over it, in one walk
over the declarations that reports every problem at once.

No I/O beyond reading the TOML file: the secret itself is loaded by ``secret.py``.
"""

from __future__ import annotations

import difflib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .declare import PREFIX, Declared, Kind, build, declared_keys, variable
from .rules import Read, cross_key_problems
from .settings import SCHEME_KEYS, Settings, TenantSettings, tables

# Where each key that is set came from, by "table.key": "file" or "environment VAR".
Origins = dict[str, str]


class ConfigError(Exception):
    """The configuration has problems; ``problems`` lists every one of them."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Effective:
    """The settings, and where each value that is not a default came from."""

    settings: Settings
    origins: Origins


def load_file(path: Path | None, environ: Mapping[str, str] | None = None) -> Effective:
    """The settings in the TOML file ``path`` (None: none) with ``environ``'s
    ALEACC_GATEWAY_* variables over them; ConfigError lists every problem."""
    return load_mapping(_read_toml(path) if path is not None else {}, environ)


def load_mapping(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Effective:
    """The settings in ``data`` (parsed TOML) with ``environ``'s ALEACC_GATEWAY_*
    variables over them; ConfigError lists every problem."""
    return _Walk(data, environ or {}).settings()


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror or exc})"]) from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: invalid TOML: {exc}"]) from None
    except RecursionError:  # tomllib recurses once per level of nested arrays or tables
        raise ConfigError([f"{path}: invalid TOML: nested too deeply"]) from None


# An environment variable's value, read as TOML would give it: (variable, value).
_Override = tuple[str, Any]


class _Walk:
    """One walk over the declarations: the file's tables and keys, each overridden by its
    environment variable, converted; then the rules that join keys. Every problem met on
    the way is kept, with the key (``table.key``) of every value that was refused."""

    def __init__(self, data: Mapping[str, Any], environ: Mapping[str, str]) -> None:
        self._data = data
        self._environ = environ
        self._problems: list[str] = []
        self._refused: set[str] = set()
        self._origins: Origins = {}

    def settings(self) -> Effective:
        """The settings, or ConfigError with every problem."""
        known = dict(tables())
        self._unknown_tables(known)
        overrides = self._overrides()
        found = {
            table: self._table(table, section, overrides.get(table, {}))
            for table, section in known.items()
        }
        tenants = self._tenants()
        own_scheme = tuple(bool(SCHEME_KEYS.keys() & values.keys()) for values in tenants)
        settings = Settings(
            **{table: build(section, found[table]) for table, section in known.items()},
            tenants=tuple(
                build(TenantSettings, _with_default_scheme(values, found["signing"]))
                for values in tenants
            ),
        )
        problems = self._problems + cross_key_problems(
            Read(settings, frozenset(self._refused), own_scheme)
        )
        if problems:
            raise ConfigError(problems)
        return Effective(settings, self._origins)

    def _unknown_tables(self, known: Mapping[str, type]) -> None:
        for table, value in self._data.items():
            if table == "tenants":
                continue  # an array of tables, read by _tenants
            if table not in known:
                spelt = {t: f"[{t}]" for t in known} | {"tenants": "[[tenants]]"}
                self._problems.append(f"[{table}]: unknown table{_did_you_mean(table, spelt)}")
            elif not isinstance(value, Mapping):
                self._problems.append(f"[{table}]: must be a table")

    def _table(
        self, table: str, section: type, overrides: Mapping[str, _Override]
    ) -> dict[str, Any]:
        """The converted values of ``table``'s keys: the file's, the variables' over them."""
        raw = self._data.get(table, {})
        raw = dict(raw) if isinstance(raw, Mapping) else {}
        self._origins.update({f"{table}.{name}": "file" for name in raw})
        labels = {}
        for name, (source, value) in overrides.items():
            raw[name] = value
            self._origins[f"{table}.{name}"] = f"environment {source}"
            labels[name] = f"{source} ({table}.{name})"
        return self._read(section, table, raw, labels)

    def _tenants(self) -> list[dict[str, Any]]:
        """Each [[tenants]] entry's converted values (set in the file only)."""
        raw_tenants = self._data.get("tenants", [])
        if not isinstance(raw_tenants, list) or not all(
            isinstance(t, Mapping) for t in raw_tenants
        ):
            self._problems.append("[[tenants]]: must be an array of tables")
            return []
        tenants = []
        for i, raw in enumerate(raw_tenants):
            tenants.append(self._read(TenantSettings, f"tenants[{i}]", raw))
            self._origins.update({f"tenants[{i}].{name}": "file" for name in raw})
        return tenants

    def _overrides(self) -> dict[str, dict[str, _Override]]:
        """The ALEACC_GATEWAY_* variables in the environment: per table, key -> (variable,
        value as TOML would give it). A variable that names no key is a problem; one that
        a ``secret_env`` names holds a secret, not a setting."""
        environ, data = self._environ, self._data
        declared = {d.variable: d for t, section in tables() for d in declared_keys(section, t)}
        secrets = {
            environ.get(variable("signing", "secret_env")),
            environ.get(variable("limits", "store_password_env")),
        }
        for table in [data.get("signing", {}), *data.get("tenants", [])]:
            if isinstance(table, Mapping):
                secrets.add(table.get("secret_env"))
        limits = data.get("limits", {})
        if isinstance(limits, Mapping):
            secrets.add(limits.get("store_password_env"))
        overrides: dict[str, dict[str, _Override]] = {}
        for name in sorted(environ):
            if not name.startswith(PREFIX) or name in secrets:
                continue
            d = declared.get(name)
            if d is None:
                self._problems.append(_unknown_variable(name, declared))
                continue
            try:
                value = value_of(environ[name], d.kind)
            except ValueError as exc:
                self._refused.add(f"{d.table}.{d.name}")
                self._problems.append(f"{name} ({d.table}.{d.name}): {exc}")
                continue
            overrides.setdefault(d.table, {})[d.name] = (name, value)
        return overrides

    def _read(
        self, section: type, table: str, raw: Any, labels: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """The converted value of each key of ``section`` set in ``raw``, by name; each
        problem (a required key missing, a value refused, an unknown key) kept, under
        its ``labels`` entry if it has one (a variable's name)."""
        raw = raw if isinstance(raw, Mapping) else {}
        values: dict[str, Any] = {}
        declared = {d.name: d for d in declared_keys(section, table)}
        for name, declaration in declared.items():
            if name not in raw:
                if declaration.required:
                    where = "" if table.startswith("tenants") else f" (or {declaration.variable})"
                    self._problems.append(f"{table}.{name}: required{where}")
                continue
            try:
                values[name] = declaration.key.convert(raw[name])
            except ValueError as exc:
                self._refused.add(f"{table}.{name}")
                self._problems.append(f"{(labels or {}).get(name, f'{table}.{name}')}: {exc}")
        spelt = {name: name for name in declared}
        self._problems += [
            f"{table}.{name}: unknown key{_did_you_mean(name, spelt)}"
            for name in raw
            if name not in declared
        ]
        return values


def _with_default_scheme(tenant: Mapping[str, Any], sign: Mapping[str, Any]) -> dict[str, Any]:
    """A tenant's keys, with [signing]'s scheme keys where the tenant sets none of its own."""
    inherited = {name: sign[name] for name in SCHEME_KEYS if name in sign}
    return {**inherited, **tenant}


def value_of(text: str, kind: Kind) -> Any:
    """An environment variable's ``text`` as the TOML value of a key of ``kind``.

    A list is comma-separated (``10.0.0.0/8,127.0.0.0/8``) or a JSON array; a boolean is
    ``true`` or ``false``; a number as written. Text that is none of what the key takes
    is passed on as it is, so the key's converter says what is wrong with it. Raises
    ValueError for a JSON array that does not parse or is nested too deeply to parse.
    """
    stripped = text.strip()
    if kind == "list":
        if stripped.startswith("["):
            try:
                parsed = json.loads(stripped)
            except ValueError:
                raise ValueError("is not a JSON array") from None
            except RecursionError:  # json recurses once per level: [[[[...]]]]
                raise ValueError("is a JSON array nested too deeply") from None
            return parsed
        return [part.strip() for part in text.split(",") if part.strip()]
    if kind == "bool":
        return {"true": True, "false": False}.get(stripped.lower(), text)
    if kind in ("int", "float"):
        try:
            return int(stripped)
        except ValueError:
            pass
        if kind == "float":
            try:
                return float(stripped)
            except ValueError:
                pass
    return text


def _unknown_variable(name: str, declared: Mapping[str, Declared]) -> str:
    if name.startswith(PREFIX + "TENANTS"):
        return f"{name}: [[tenants]] are set in the file only"
    # Compared without the prefix, which every variable shares.
    cut = len(PREFIX)
    hint = _did_you_mean(name[cut:], {v[cut:]: v for v in declared})
    return f"{name}: no such setting{hint}"


def _did_you_mean(name: str, spelt: Mapping[str, str]) -> str:
    """`` (did you mean X?)`` for the name in ``spelt`` (name -> as it is written) close
    enough to ``name`` to be a typo of it; "" when none is."""
    close = difflib.get_close_matches(name, list(spelt), 1, 0.8)
    return f" (did you mean {spelt[close[0]]}?)" if close else ""
