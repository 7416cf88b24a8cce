"""The declaration machinery: each key declared once, as a field of a settings dataclass.

A key is a field declared with ``key()``: its default, the converter that reads its TOML
value (raising ValueError with the message an operator sees), and a one-line doc. A group
(``group()``) is several keys of one table that make up one value (the signing scheme,
the listener's TLS files). Every key can also be set by an environment variable, named
here; its text is read as the kind of TOML value the field's type says.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

PREFIX = "ALEACC_GATEWAY_"

# What a key's TOML value is, so that an environment variable's text can be read as one.
Kind = Literal["list", "bool", "int", "float", "string"]

_KEY = "aleacc_gateway.key"
_GROUP = "aleacc_gateway.group"


@dataclass(frozen=True, slots=True)
class Key:
    """How one key's TOML value is read, and what it means."""

    convert: Callable[[Any], Any]
    doc: str
    shown: str | None = None  # the default as the reference shows it, where the value is unclear


@dataclass(frozen=True, slots=True)
class Group:
    """Keys of one table that together make one value: key name -> (field of ``of``, Key)."""

    of: type
    keys: Mapping[str, tuple[str, Key]]
    optional: bool  # the value is None unless one of its keys is set


def use(k: Key, default: Any = dataclasses.MISSING) -> Any:
    """A field for the key ``k``, declared once (several tables may use one)."""
    return field(default=default, metadata={_KEY: k})


def key(
    convert: Callable[[Any], Any],
    doc: str,
    default: Any = dataclasses.MISSING,
    shown: str | None = None,
) -> Any:
    """A configuration key: a field with ``default`` (none: required), read by ``convert``."""
    return use(Key(convert, doc, shown), default)


def group(of: type, keys: Mapping[str, tuple[str, Key]], default: Any) -> Any:
    """A field whose value ``of(...)`` is made from ``keys`` of the same table."""
    return field(default=default, metadata={_GROUP: Group(of, keys, optional=default is None)})


def variable(table: str, name: str) -> str:
    """The environment variable that sets ``table.name``."""
    return f"{PREFIX}{table.upper()}_{name.upper()}"


def kind_of(hint: Any) -> Kind:
    """What a key's TOML value is, from its field's type (``X | None`` is ``X``)."""
    if get_origin(hint) in (Union, types.UnionType):
        hint = next(a for a in get_args(hint) if a is not type(None))
    origin = get_origin(hint) or hint
    if origin in (tuple, frozenset, list):
        return "list"
    if hint is bool:
        return "bool"
    if hint is int:
        return "int"
    if hint is float:
        return "float"
    return "string"


@dataclass(frozen=True, slots=True)
class Declared:
    """One key as the walk meets it."""

    table: str
    name: str
    key: Key
    default: Any  # dataclasses.MISSING: required
    kind: Kind  # what its TOML value is

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING

    @property
    def variable(self) -> str:
        """The environment variable that sets it."""
        return variable(self.table, self.name)


def declared_keys(section: type, table: str) -> Iterator[Declared]:
    """Every key of ``section`` (a settings dataclass), groups' keys in their place."""
    hints = get_type_hints(section)
    for f in dataclasses.fields(section):
        if _KEY in f.metadata:
            yield Declared(table, f.name, f.metadata[_KEY], f.default, kind_of(hints[f.name]))
        elif _GROUP in f.metadata:
            declaration: Group = f.metadata[_GROUP]
            defaults = {g.name: g.default for g in dataclasses.fields(declaration.of)}
            of_hints = get_type_hints(declaration.of)
            for name, (attribute, k) in declaration.keys.items():
                default = defaults[attribute]
                default = None if default is dataclasses.MISSING else default
                yield Declared(table, name, k, default, kind_of(of_hints[attribute]))


def build(section: type, values: Mapping[str, Any]) -> Any:
    """``section`` from the keys that are set; the declared defaults for the rest.

    A required key (or a group's part) that is not set is None: a problem already says
    so, and the settings are used only when there is none; until then the cross-key
    rules read them as far as they go.
    """
    arguments: dict[str, Any] = {}
    for f in dataclasses.fields(section):
        if _KEY in f.metadata:
            if f.name in values:
                arguments[f.name] = values[f.name]
            elif f.default is dataclasses.MISSING:
                arguments[f.name] = None
        elif _GROUP in f.metadata:
            declaration: Group = f.metadata[_GROUP]
            given = parts(declaration.keys, values)
            if given or not declaration.optional:
                required = [
                    g.name
                    for g in dataclasses.fields(declaration.of)
                    if g.default is dataclasses.MISSING
                ]
                arguments[f.name] = declaration.of(**{**dict.fromkeys(required), **given})
    return section(**arguments)


def parts(keys: Mapping[str, tuple[str, Key]], values: Mapping[str, Any]) -> dict[str, Any]:
    """A group's arguments: its keys that are set, by field name."""
    return {attribute: values[name] for name, (attribute, _) in keys.items() if name in values}


def value_of(settings: Any, name: str) -> Any:
    """Key ``name``'s value in a settings object (a group's keys inside their group)."""
    for f in dataclasses.fields(settings):
        if _KEY in f.metadata and f.name == name:
            return getattr(settings, name)
        if _GROUP in f.metadata and name in f.metadata[_GROUP].keys:
            part = getattr(settings, f.name)
            attribute = f.metadata[_GROUP].keys[name][0]
            return None if part is None else getattr(part, attribute)
    raise KeyError(name)
