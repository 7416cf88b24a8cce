"""TOML written back, for a person to paste into a configuration file: a value as
``check-config --show`` prints it, and a scheme ``learn`` or ``probe`` found."""

from __future__ import annotations

from .signing import Scheme


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string."""
    # JSON's escapes are a subset TOML reads the same way.
    escaped = "".join(
        {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(c)
        or (f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c)
        for c in value
    )
    return f'"{escaped}"'


def signing_table(scheme: Scheme) -> str:
    """The ``[signing]`` table's scheme keys."""
    fields = ", ".join(toml_string(f) for f in scheme.fields)
    return "\n".join(
        [
            "[signing]",
            f"fields = [{fields}]",
            f"separator = {toml_string(scheme.separator)}",
            f"secret_encoding = {toml_string(scheme.secret_encoding)}",
            f"signature_encoding = {toml_string(scheme.signature_encoding)}",
            f"timestamp_unit = {toml_string(scheme.timestamp_unit)}",
            f"request_id_format = {toml_string(scheme.request_id_format)}",
        ]
    )
