"""Request ids: where the gateway's randomness lives.

Each form a scheme may name (``signing.REQUEST_ID_FORMATS``) has a maker here, and
``form_of`` tells which form an id has (``learn`` reads it off accepted requests; the
mock upstream can insist on one).

- hex32: 32 lowercase hex characters (a random UUID4);
- decimal: a random integer from 1 to 2^31 - 1, for a server that parses the id as a
  signed 32-bit integer (Aleacc's example uses 1);
- uuid: the 36-character UUID4 with dashes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping


class _RandomPool:
    """os.urandom read 4 KiB at a time: one getrandom syscall per 256 request ids."""

    def __init__(self) -> None:
        self._buffer = b""
        self._offset = 0
        # A forked worker must not hand out its parent's (or a sibling's) bytes.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._buffer, self._offset = b"", 0

    def take(self, size: int) -> int:
        """``size`` fresh random bytes, as a big-endian integer."""
        if self._offset + size > len(self._buffer):
            self._buffer, self._offset = os.urandom(4096), 0
        value = int.from_bytes(self._buffer[self._offset : self._offset + size], "big")
        self._offset += size
        return value


_random = _RandomPool()
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)  # version 4, RFC 4122 variant


class _HexIds:
    """Random UUID4s as 32 hex characters, made 256 at a time from one 4 KiB os.urandom
    read: one mask over a big integer and one hex() per batch, a list pop per id,
    instead of an integer's masks and formatting per id."""

    _IDS = 256
    _CLEAR = sum((_UUID4_CLEAR & (1 << 128) - 1) << 128 * i for i in range(_IDS))
    _SET = sum(_UUID4_SET << 128 * i for i in range(_IDS))

    def __init__(self) -> None:
        self._ids: list[str] = []
        # A forked worker must not hand out its parent's (or a sibling's) ids.
        os.register_at_fork(after_in_child=self._ids.clear)

    def take(self) -> str:
        ids = self._ids
        if not ids:
            size = self._IDS * 16
            value = int.from_bytes(os.urandom(size), "big") & self._CLEAR | self._SET
            text = value.to_bytes(size, "big").hex()
            ids.extend([text[i : i + 32] for i in range(0, size * 2, 32)])
        return ids.pop()


_hex_ids = _HexIds()


def new_hex32() -> str:
    """A fresh request id: a random UUID4 as 32 lowercase hex characters."""
    return _hex_ids.take()


def new_decimal() -> str:
    """A fresh request id: a random integer from 1 to 2^31 - 1, in decimal."""
    while True:
        value = _random.take(4) & 0x7FFFFFFF
        if value:  # 0 is left out: a server may take it for "no id"
            return str(value)


def new_uuid() -> str:
    """A fresh request id: a random UUID4 with dashes (36 characters)."""
    value = new_hex32()
    return f"{value[:8]}-{value[8:12]}-{value[12:16]}-{value[16:20]}-{value[20:]}"


MAKERS: Mapping[str, Callable[[], str]] = {
    "hex32": new_hex32,
    "decimal": new_decimal,
    "uuid": new_uuid,
}

_DECIMAL_ID = re.compile(r"^[1-9][0-9]{0,9}$")
_UUID_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_HEX32_ID = re.compile(r"^[0-9a-f]{32}$")


def form_of(request_id: str) -> str | None:
    """The form a request id has (``decimal``, ``uuid``, ``hex32``), None for others."""
    if _DECIMAL_ID.match(request_id) and int(request_id) < 2**31:
        return "decimal"
    if _UUID_ID.match(request_id):
        return "uuid"
    if _HEX32_ID.match(request_id):
        return "hex32"
    return None
