"""Pure rules for what crosses the gateway: which targets are accepted, where they go,
which headers pass.

Nothing here does I/O; the proxy applies these to each request and response.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import unquote_to_bytes

from multidict import CIMultiDict, CIMultiDictProxy, MultiMapping
from yarl import URL

from .errors import BadRequest

# RFC 9110 §7.6.1 hop-by-hop fields, plus the non-standard ones proxies still meet.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
        "proxy-authorization",
    }
)

# Set by the gateway itself, or framing it computes from what it really sends.
# Expect is dropped because the body is already read in full before forwarding.
_REPLACED = frozenset({"authorization", "host", "content-length", "expect", "x-client-ip"})

# Internal topology stays inside unless the operator opts in (upstream.forward_proxy_headers).
PROXY_TOPOLOGY = frozenset(
    {"x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "forwarded"}
)

_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Visible ASCII only; '#' never belongs in a request target (RFC 9112 §3.2).
_TARGET_CHARS = re.compile(r"^[\x21-\x22\x24-\x7e]*$")


def check_target(method: str, raw_target: str) -> None:
    """Raise BadRequest unless ``raw_target`` is a safe origin-form target."""
    if method == "CONNECT":
        raise BadRequest("CONNECT is not supported")
    if method in ("TRACE", "TRACK"):
        # An upstream that echoes TRACE (RFC 9110 §9.3.8) would show the caller the
        # signed Authorization header; nothing in a player API needs it.
        raise BadRequest("TRACE is not forwarded")
    if not raw_target.startswith("/") or raw_target.startswith("//"):
        # absolute-form, authority-form, asterisk-form and scheme-relative "//host"
        raise BadRequest("the request target must be an origin-form path")
    if not _TARGET_CHARS.match(raw_target):
        raise BadRequest("the request target contains characters outside visible ASCII")
    if "%" in raw_target and _BAD_PERCENT.search(raw_target):
        raise BadRequest("the request target has an invalid percent-encoding")
    raw_path = raw_target.partition("?")[0]
    if "%" not in raw_path and "." not in raw_path:
        return  # nothing to decode, and no segment can be a dot segment: the common case
    path = decoded_path(raw_target)
    if any(_is_dot_segment(segment) for segment in re.split(rb"[/\\]", path)):
        raise BadRequest("the request path has dot segments")
    if any(byte in path for byte in b"\x00\r\n"):
        raise BadRequest("the request path encodes control characters")


def _is_dot_segment(segment: bytes) -> bool:
    # "..;x" is a dot segment to servlet containers, which drop path parameters first.
    return segment.split(b";", 1)[0] in (b".", b"..")


class RequestHeaders(NamedTuple):
    """What one pass over a request's header lines gives the proxy."""

    lines: list[bytes]  # the end-to-end lines to send upstream, b"Name: value", in order
    forwarded_for: list[str]  # the X-Forwarded-For field lines, in order
    signed: list[tuple[str, str]]  # the lines of the headers the signing scheme reads


# What a header line is to the gateway, by its lower-case name; absent: passed on as is.
_HOST, _EXPECT, _LENGTH, _CODING, _UPGRADE, _CONNECTION, _XFF, _TOPOLOGY, _DROP = range(9)
_ROLES: dict[bytes, int] = {
    **dict.fromkeys((name.encode() for name in HOP_BY_HOP | _REPLACED), _DROP),
    **dict.fromkeys((name.encode() for name in PROXY_TOPOLOGY), _TOPOLOGY),
    b"host": _HOST,
    b"expect": _EXPECT,
    b"content-length": _LENGTH,
    b"transfer-encoding": _CODING,
    b"upgrade": _UPGRADE,
    b"connection": _CONNECTION,
    b"x-forwarded-for": _XFF,
}


def screen_headers(
    raw: Sequence[tuple[bytes, bytes]],
    version: tuple[int, int],
    *,
    forward_proxy_headers: bool,
    signed: frozenset[bytes] = frozenset(),
) -> RequestHeaders:
    """Screen a request's header lines in one pass: check them, and sort them for
    forwarding and signing.

    Raises BadRequest for what no origin server could interpret one way only. Returns
    the end-to-end lines (hop-by-hop ones, those ``Connection`` names, the ones the gateway
    sets itself and, unless ``forward_proxy_headers``, the proxy topology dropped), the
    X-Forwarded-For values, and the lines of the ``signed`` header names (lower-case).
    Values stay the bytes received; as text they are decoded as the HTTP parser decodes
    them (UTF-8, surrogateescape), so they encode back to the same bytes.
    """
    if version not in ((1, 0), (1, 1)):
        # HTTP/0.9 has no headers; "HTTP/2.0" on this port is not HTTP/2.
        raise BadRequest("only HTTP/1.0 and HTTP/1.1 are served")
    lines: list[bytes] = []
    forwarded_for: list[str] = []
    signed_lines: list[tuple[str, str]] = []
    hosts = lengths = 0
    expect: list[bytes] = []
    codings: list[bytes] = []
    connection: list[bytes] = []
    upgrade = False
    for name, value in raw:
        lower = name.lower()
        role = _ROLES.get(lower)
        if role is None or (forward_proxy_headers and role in (_XFF, _TOPOLOGY)):
            lines.append(name + b": " + value)  # passed on: signed as it is sent
            if lower in signed:
                signed_lines.append((_decoded(name), _decoded(value)))
        if role is None or role in (_TOPOLOGY, _DROP):
            continue
        if role == _XFF:
            forwarded_for.append(_decoded(value))
        elif role == _HOST:
            hosts += 1
        elif role == _LENGTH:
            lengths += 1
        elif role == _EXPECT:
            expect.append(value.lower())
        elif role == _CODING:
            codings.append(value)
        elif role == _CONNECTION:
            connection.append(value)
        else:  # _UPGRADE
            upgrade = True
    if hosts > 1 or (version == (1, 1) and not hosts):
        # RFC 9112 §3.2: exactly one Host in HTTP/1.1, else 400.
        raise BadRequest("a request needs exactly one Host header")
    if expect and expect != [b"100-continue"]:
        raise BadRequest("the only expectation supported is 100-continue")
    if lengths > 1:
        raise BadRequest("Content-Length is repeated")
    coding = b",".join(codings).replace(b" ", b"").lower()
    if coding and version == (1, 0):
        # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 is faulty framing; refused (the
        # 400 closes the connection), never kept alive for a request smuggled behind.
        raise BadRequest("Transfer-Encoding is not HTTP/1.0")
    if coding and coding != b"chunked":
        # The gateway undoes chunked and nothing else; any other coding would reach the
        # upstream with a body whose meaning changed (RFC 9112 §6.1).
        raise BadRequest("only the chunked transfer coding is accepted")
    if upgrade:
        # No h2c, no WebSocket: the gateway forwards HTTP/1.1 requests, nothing else.
        raise BadRequest("protocol upgrades are not supported")
    named = _tokens(connection) - _ROLES.keys()
    if named:  # e.g. "Connection: close, X-Hop": X-Hop is for this hop only
        lines = [line for line in lines if line.partition(b":")[0].lower() not in named]
        signed_lines = [
            (n, v)
            for n, v in signed_lines
            if n.lower().encode("utf-8", "surrogateescape") not in named
        ]
    return RequestHeaders(lines, forwarded_for, signed_lines)


def _decoded(value: bytes) -> str:
    # The HTTP parser's decoding (UTF-8, surrogateescape): signing.wire_bytes() encodes it back.
    return value.decode("utf-8", "surrogateescape")


def _tokens(values: list[bytes]) -> set[bytes]:
    return {token.strip().lower() for value in values for token in value.split(b",")} - {b""}


@dataclass(frozen=True, slots=True)
class Route:
    """One allowed route: a method (or ``*``) and a path pattern (``*`` matches anything)."""

    method: str
    pattern: str

    def __str__(self) -> str:
        return f"{self.method} {self.pattern}"


def route_allowed(routes: Sequence[Route] | None, method: str, raw_target: str) -> bool:
    """Whether ``method`` on the target's decoded path matches an allowed route.

    Matched on the percent-decoded path with repeated slashes collapsed, never on the
    query, so no encoding trick reaches a route the allowlist does not name.
    """
    if routes is None:
        return True
    path = re.sub(r"/+", "/", decoded_path(raw_target).decode("utf-8", "surrogateescape"))
    return any(
        route.method in ("*", method) and fnmatch.fnmatchcase(path, route.pattern)
        for route in routes
    )


def decoded_path(raw_target: str) -> bytes:
    """The path part of a target, percent-decoded, as a server behind us would see it."""
    return unquote_to_bytes(raw_target.partition("?")[0])


def upstream_path_and_query(base_path: str, raw_target: str) -> str:
    """Join the upstream base path with the incoming target, byte for byte.

    An empty query (a bare trailing ``?``) is dropped, as the signed field defines it.
    """
    path, _, query = raw_target.partition("?")
    joined = base_path + path
    return f"{joined}?{query}" if query else joined


def host_header(url: URL) -> str:
    """The Host header sent to ``url`` (and signed as ``host``)."""
    host = (url.raw_host or "").lower()
    if ":" in host:
        host = f"[{host}]"
    return host if url.is_default_port() else f"{host}:{url.port}"


def base_path(url: URL) -> str:
    """The URL's raw path without a trailing ``/`` ("" for the root)."""
    return url.raw_path.rstrip("/")


def host_name(value: str) -> str:
    """A Host header's name as tenants are matched on it: lower case, without a port or
    the root's trailing dot."""
    host = value.strip().lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    name, sep, port = host.rpartition(":")
    name = name if sep and port.isdigit() else host
    # "b.example." is b.example fully qualified (RFC 1034 §3.1): one host, one tenant.
    return name.removesuffix(".")


def connection_tokens(headers: MultiMapping[str]) -> set[str]:
    """Header names listed in every ``Connection`` field line, lower-cased."""
    return {
        token.strip().lower()
        for value in headers.getall("Connection", ())
        for token in value.split(",")
        if token.strip()
    }


# Never passed to the caller: hop-by-hop fields, and the id the gateway sets itself.
_NOT_TO_CALLER = HOP_BY_HOP | {"x-request-id"}
# An answer sent whole: its Content-Length is framed anew from the body, same value.
_NOT_TO_CALLER_WHOLE = _NOT_TO_CALLER | {"content-length"}


def downstream_headers(upstream: CIMultiDictProxy[str], request_id: str) -> CIMultiDict[str]:
    """The upstream response's headers for the caller: hop-by-hop removed, our id added."""
    drop = _NOT_TO_CALLER
    named = connection_tokens(upstream)
    if not named <= drop:  # "Connection: keep-alive" (the usual one) names nothing new
        drop = drop | named
    headers: CIMultiDict[str] = CIMultiDict(
        [(name, value) for name, value in upstream.items() if name.lower() not in drop]
    )
    headers.add("X-Request-Id", request_id)
    return headers


# Never passed to the caller in an answer sent whole, as bytes (the names as llhttp
# gives them, lower-cased).
_NOT_IN_WHOLE = frozenset(name.encode("ascii") for name in _NOT_TO_CALLER_WHOLE)
# The usual Connection values, which name nothing the lines above do not drop already.
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close"})


def whole_answer_head(
    version: tuple[int, int],
    status: int,
    reason: str,
    upstream: Sequence[tuple[bytes, bytes]],
    request_id: str,
    body_length: int,
    *,
    keep_alive: bool,
    date: str,
    server: str,
) -> bytes:
    """The head of an answer sent whole, byte for byte as aiohttp's ``web.Response`` frames
    it (the caller's version in the status line; the upstream's header lines, as
    received, less hop-by-hop ones and its Content-Length; X-Request-Id; Content-Length;
    where the upstream sent none, a Content-Type for a body, ``date`` and ``server``;
    Connection as RFC 9112 §9.3 asks of the version). The reason and lines hold no
    controls but HTAB: llhttp and response.py refuse an answer with any."""
    # aiohttp writes text as UTF-8; the reason came as Latin-1 (response.py).
    lines = [f"HTTP/{version[0]}.{version[1]} {status} {reason}".encode()]
    names: list[bytes] = []  # of the lines kept, lower-case
    connection: list[bytes] = []
    for name, value in upstream:
        lower = name.lower()
        if lower in _NOT_IN_WHOLE:
            if lower == b"connection" and value.lower() not in _PLAIN_CONNECTION:
                connection.append(value)
            continue
        names.append(lower)
        # Not ASCII: as aiohttp wrote the text it was decoded to, without the bytes that
        # are not UTF-8 (the lone surrogates they decode to).
        lines.append(name + b": " + (value if value.isascii() else _as_written(value)))
    if connection:
        named = {
            token.strip().lower().encode("utf-8", "surrogateescape")
            for token in _decoded(b",".join(connection)).split(",")
        }
        if not named <= _NOT_IN_WHOLE:
            kept = [(n, line) for n, line in zip(names, lines[1:], strict=True) if n not in named]
            lines[1:] = [line for _, line in kept]
            names = [n for n, _ in kept]
    lines.append(b"X-Request-Id: " + request_id.encode())
    lines.append(b"Content-Length: %d" % body_length)
    if body_length and b"content-type" not in names:
        lines.append(b"Content-Type: application/octet-stream")
    if b"date" not in names:
        lines.append(b"Date: " + date.encode())
    if b"server" not in names:
        lines.append(b"Server: " + server.encode())
    if keep_alive:
        if version == (1, 0):
            lines.append(b"Connection: keep-alive")
    elif version == (1, 1):
        lines.append(b"Connection: close")
    lines += (b"", b"")
    return b"\r\n".join(lines)


def _as_written(value: bytes) -> bytes:
    return value.decode("utf-8", "surrogateescape").encode("utf-8", "ignore")
