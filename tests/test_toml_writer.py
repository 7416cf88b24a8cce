"""TOML written back reads back as what was written."""

from __future__ import annotations

import tomllib

from hypothesis import given
from hypothesis import strategies as st

from gateway import signing
from gateway.toml_writer import signing_table, toml_string


def test_a_scheme_table_reads_back_as_the_same_scheme() -> None:
    scheme = signing.Scheme(
        fields=("api_id", 'header:X-"Odd"?', "body|md5|base64"),
        separator="\n\t\\\x01",
        secret_encoding="base64",
        signature_encoding="hex",
        timestamp_unit="ms",
    )
    table = tomllib.loads(signing_table(scheme))["signing"]
    table["fields"] = tuple(table["fields"])
    assert signing.Scheme(**table) == scheme


@given(st.text(st.characters(codec="utf-8")))
def test_any_string_reads_back(value: str) -> None:
    assert tomllib.loads(f"v = {toml_string(value)}")["v"] == value
