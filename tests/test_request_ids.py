"""Request ids: each form a scheme may name, fresh from a forked worker too, and read back."""

from __future__ import annotations

import os
import re
import uuid

import pytest

from gateway import request_ids, signing


def test_every_request_id_format_has_a_maker() -> None:
    assert tuple(request_ids.MAKERS) == signing.REQUEST_ID_FORMATS


def test_request_ids_are_fresh_uuid4_hex() -> None:
    ids = {request_ids.new_hex32() for _ in range(5000)}  # crosses several pool refills
    assert len(ids) == 5000
    for request_id in ids:
        parsed = uuid.UUID(request_id)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert request_id == parsed.hex


def test_a_forked_worker_never_repeats_its_parents_request_ids() -> None:
    request_ids.new_hex32()  # the pool now holds unused random bytes
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.write(write, request_ids.new_hex32().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    from_child = os.read(read, 64).decode()
    os.close(read)
    assert from_child != request_ids.new_hex32()


@pytest.mark.parametrize(
    ("form", "pattern"),
    [
        ("hex32", r"^[0-9a-f]{32}$"),
        ("decimal", r"^[1-9][0-9]{0,9}$"),
        ("uuid", r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"),
    ],
)
def test_each_request_id_format_makes_ids_of_its_form(form: str, pattern: str) -> None:
    ids = [request_ids.MAKERS[form]() for _ in range(2000)]  # crosses pool refills
    for request_id in ids:
        assert re.match(pattern, request_id), request_id
        assert request_ids.form_of(request_id) == form
    if form == "decimal":
        # Fits a signed 32-bit integer, and is never 0.
        assert all(1 <= int(i) <= 2**31 - 1 for i in ids)
        assert max(map(int, ids)) > 2**30  # the whole range is used, not a corner of it
    else:
        assert len(set(ids)) == len(ids)


@pytest.mark.parametrize(
    ("request_id", "form"),
    [
        ("1", "decimal"),
        ("2147483647", "decimal"),
        ("2147483648", None),  # beyond a signed 32-bit integer
        ("0", None),
        ("01", None),
        ("0123456789abcdef0123456789abcdef", "hex32"),
        ("0123456789ABCDEF0123456789ABCDEF", None),
        ("01234567-89ab-4def-8123-456789abcdef", "uuid"),
        ("req-1", None),
    ],
)
def test_form_of_reads_an_ids_form(request_id: str, form: str | None) -> None:
    assert request_ids.form_of(request_id) == form
