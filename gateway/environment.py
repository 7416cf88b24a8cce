"""Settings from environment variables: ``ALEACC_GATEWAY_<TABLE>_<KEY>``.

Pure: the variable's name for a key, and its text read as the TOML value the key's
converter expects (config.py walks the declarations and converts as for the file).
"""

from __future__ import annotations

import json
import types
from typing import Any, Literal, Union, get_args, get_origin

PREFIX = "ALEACC_GATEWAY_"

Kind = Literal["list", "bool", "int", "float", "string"]


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


def value_of(text: str, kind: Kind) -> Any:
    """``text`` as the TOML value of a key of ``kind``.

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
