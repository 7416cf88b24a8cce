"""The Aleacc request signature: the canonical string lives here and only here.

Everything in this module is pure: request parts, credentials, request id and clock
reading in; header value out. The signed field list is data (``fields``), so a change
in Aleacc's documentation is a configuration change, not a code change.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

SCHEME = "amx"

DEFAULT_FIELDS: tuple[str, ...] = (
    "api_id",
    "request_id",
    "timestamp",
    "method",
    "path_and_query",
    "content_type",
    "body",
)

HEADER_FIELD_PREFIX = "header:"

# RFC 9110 §5.1: a field name is a token.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Aleacc documents no format for request_id (its own example uses "1"); ours are 32 hex.
_REQUEST_ID = re.compile(r"^[!-~]+$")


@dataclass(frozen=True, slots=True)
class Credentials:
    """The API id and the secret that keys the HMAC."""

    api_id: str
    secret: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class RequestParts:
    """A request exactly as it is sent upstream: every value here is on the wire."""

    method: str
    scheme: str
    host: str
    path_and_query: str
    headers: Mapping[str, str]
    body: bytes

    @property
    def path(self) -> str:
        """The target without its query."""
        return self.path_and_query.partition("?")[0]

    @property
    def query(self) -> str:
        """The raw query string, without the ``?``."""
        return self.path_and_query.partition("?")[2]


@dataclass(frozen=True, slots=True)
class Signed:
    """One signed attempt: the header to send and what was signed."""

    authorization: str
    request_id: str
    timestamp: int
    string_to_sign: bytes = field(repr=False)


def _text(value: str) -> bytes:
    # Header values arrive decoded with surrogateescape; this gives back the exact bytes.
    return value.encode("utf-8", "surrogateescape")


def _header_value(headers: Mapping[str, str], name: str) -> str:
    getall = getattr(headers, "getall", None)
    if getall is not None:
        # Several field lines of one name combine with ", " (RFC 9110 §5.3).
        return ", ".join(getall(name, ()))
    return headers.get(name, "")


_FieldGetter = Callable[[RequestParts, str, str, str], bytes]

_FIELDS: dict[str, _FieldGetter] = {
    "api_id": lambda p, api_id, rid, ts: _text(api_id),
    "request_id": lambda p, api_id, rid, ts: _text(rid),
    "timestamp": lambda p, api_id, rid, ts: _text(ts),
    "method": lambda p, api_id, rid, ts: _text(p.method.upper()),
    "path_and_query": lambda p, api_id, rid, ts: _text(p.path_and_query),
    "content_type": lambda p, api_id, rid, ts: _text(_header_value(p.headers, "Content-Type")),
    "body": lambda p, api_id, rid, ts: p.body,
    "url": lambda p, api_id, rid, ts: _text(f"{p.scheme}://{p.host}{p.path_and_query}"),
    "host": lambda p, api_id, rid, ts: _text(p.host),
    "path": lambda p, api_id, rid, ts: _text(p.path),
    "query": lambda p, api_id, rid, ts: _text(p.query),
}

FIELD_NAMES: frozenset[str] = frozenset(_FIELDS)


def field_problem(name: str) -> str | None:
    """Why ``name`` is not a signable field, or None when it is."""
    if name in _FIELDS:
        return None
    if name.startswith(HEADER_FIELD_PREFIX):
        header = name[len(HEADER_FIELD_PREFIX) :]
        if _TOKEN.match(header):
            return None
        return f"{name!r} does not name a valid header"
    known = ", ".join(sorted(_FIELDS))
    return f"unknown field {name!r} (known: {known}, header:<Name>)"


def field_values(
    fields: Sequence[str], parts: RequestParts, api_id: str, request_id: str, timestamp: int
) -> list[bytes]:
    """Each signed field's bytes, in ``fields`` order; text as UTF-8, the body raw."""
    ts = str(timestamp)
    values: list[bytes] = []
    for name in fields:
        getter = _FIELDS.get(name)
        if getter is not None:
            values.append(getter(parts, api_id, request_id, ts))
        else:  # header:<Name>, validated when the settings were loaded
            values.append(_text(_header_value(parts.headers, name[len(HEADER_FIELD_PREFIX) :])))
    return values


def string_to_sign(
    fields: Sequence[str], parts: RequestParts, api_id: str, request_id: str, timestamp: int
) -> bytes:
    """The signed field values joined by a Unix newline."""
    return b"\n".join(field_values(fields, parts, api_id, request_id, timestamp))


def signature(secret: bytes, message: bytes) -> str:
    """Base64 (standard alphabet, padded) HMAC-SHA256 of ``message``."""
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def authorization(api_id: str, sig: str, request_id: str, timestamp: int) -> str:
    """The ``Authorization`` header value."""
    return f"{SCHEME} {api_id}:{sig}:{request_id}:{timestamp}"


class _RandomPool:
    """os.urandom read 4 KiB at a time: one getrandom syscall per 256 request ids."""

    def __init__(self) -> None:
        self._buffer = b""
        self._offset = 0
        # A forked worker must not hand out its parent's (or a sibling's) bytes.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._buffer, self._offset = b"", 0

    def take16(self) -> int:
        if self._offset + 16 > len(self._buffer):
            self._buffer, self._offset = os.urandom(4096), 0
        value = int.from_bytes(self._buffer[self._offset : self._offset + 16], "big")
        self._offset += 16
        return value


_random = _RandomPool()
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)  # version 4, RFC 4122 variant


def new_request_id() -> str:
    """A fresh request id: a random UUID4 as 32 lowercase hex characters."""
    return format((_random.take16() & _UUID4_CLEAR) | _UUID4_SET, "032x")


def sign(
    fields: Sequence[str],
    parts: RequestParts,
    credentials: Credentials,
    request_id: str,
    timestamp: int,
) -> Signed:
    """Sign one attempt of ``parts``."""
    message = string_to_sign(fields, parts, credentials.api_id, request_id, timestamp)
    sig = signature(credentials.secret, message)
    return Signed(
        authorization=authorization(credentials.api_id, sig, request_id, timestamp),
        request_id=request_id,
        timestamp=timestamp,
        string_to_sign=message,
    )


@dataclass(frozen=True, slots=True)
class Authorization:
    """A parsed ``amx`` Authorization value."""

    api_id: str
    signature: str
    request_id: str
    timestamp: int


def parse_authorization(value: str) -> Authorization | None:
    """Parse ``amx api_id:signature:request_id:timestamp``; None when malformed."""
    scheme, _, credentials = value.partition(" ")
    if scheme != SCHEME:
        return None
    pieces = credentials.split(":")
    if len(pieces) != 4:
        return None
    api_id, sig, request_id, ts = pieces
    if not api_id or len(sig) != 44 or not ts.isdigit() or not ts.isascii():
        return None
    if not _REQUEST_ID.match(request_id):
        return None
    return Authorization(api_id, sig, request_id, int(ts))


def verify(fields: Sequence[str], parts: RequestParts, secret: bytes, auth: Authorization) -> bool:
    """Constant-time check of ``auth.signature`` against a fresh computation."""
    message = string_to_sign(fields, parts, auth.api_id, auth.request_id, auth.timestamp)
    return hmac.compare_digest(signature(secret, message), auth.signature)


def explain(
    fields: Sequence[str],
    parts: RequestParts,
    api_id: str,
    request_id: str,
    timestamp: int,
    body_preview: int = 512,
) -> list[str]:
    """One line per signed field with its value escaped; never the secret."""
    lines = []
    values = field_values(fields, parts, api_id, request_id, timestamp)
    for name, value in zip(fields, values, strict=True):
        suffix = ""
        if name == "body" and len(value) > body_preview:
            suffix = f" ... ({len(value)} bytes, sha256 {hashlib.sha256(value).hexdigest()})"
            value = value[:body_preview]
        # bytes repr escapes control bytes, backslashes and non-ASCII unambiguously.
        lines.append(f"{name}: {repr(value)[2:-1]}{suffix}")
    return lines
