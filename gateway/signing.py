"""The Aleacc request signature: the canonical string lives here and only here.

Everything in this module is pure: request parts, credentials, request id and clock
reading in; header value out. The scheme (which fields, joined how, the key's and the
signature's encodings, the timestamp's unit) is data, a ``Scheme``; ``compile_scheme``
turns it into a ``Plan`` once at start-up, and the request path only runs the plan.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import quote_from_bytes

SCHEME = "amx"

# Aleacc's scheme, reproduced from its own example header (api_id, request_id,
# timestamp, path, body); the two optional headers sit where a public client of the
# same API shape puts them (goa-codebet/enji-sdk), each only when the request has it.
DEFAULT_FIELDS: tuple[str, ...] = (
    "api_id",
    "request_id",
    "timestamp",
    "header:X-Player-Session-Id?",
    "header:X-Client-Ip?",
    "path_and_query",
    "body",
)
SECRET_ENCODINGS = ("hex", "utf-8", "base64")
SIGNATURE_ENCODINGS = ("base64", "hex")
TIMESTAMP_UNITS = ("s", "ms")
# The request id's forms: gateway/request_ids.py makes and recognizes each.
REQUEST_ID_FORMATS = ("hex32", "decimal", "uuid")

HEADER_FIELD_PREFIX = "header:"
OPTIONAL_SUFFIX = "?"

# RFC 9110 §5.1: a field name is a token.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Aleacc documents no format for request_id (its own example uses "1"); ours are 32 hex.
_REQUEST_ID = re.compile(r"^[!-~]+$")
_BASE64_SIGNATURE = re.compile(r"^[A-Za-z0-9+/]{43}=$")
_HEX_SIGNATURE = re.compile(r"^[0-9a-f]{64}$")
_HEX = re.compile(rb"^(?:[0-9a-fA-F]{2})+$")


@dataclass(frozen=True, slots=True)
class Scheme:
    """How a request is signed: inert data, as configured (docs/signing.md)."""

    fields: tuple[str, ...] = DEFAULT_FIELDS
    separator: str = "\n"
    secret_encoding: str = "hex"  # noqa: S105 - an encoding's name, not a secret
    signature_encoding: str = "base64"
    timestamp_unit: str = "s"
    request_id_format: str = "hex32"


@dataclass(frozen=True, slots=True)
class Credentials:
    """The API id and the HMAC key (the secret, already decoded).

    ``mac`` is HMAC-SHA256 keyed once: each signature copies it (hmac's documented way to
    share a common start) instead of keying a new one (the saving: bench/README.md).
    """

    api_id: str
    key: bytes = field(repr=False)
    mac: hmac.HMAC = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mac", hmac.new(self.key, digestmod=hashlib.sha256))


class RequestParts(NamedTuple):
    """A request exactly as it is sent upstream: every value here is on the wire.

    Named tuples, here and for ``Context`` and ``Signed``: built once or more per request,
    and a tuple is cheaper to make than a frozen dataclass."""

    method: str
    scheme: str
    host: str
    path_and_query: str
    headers: Mapping[str, str]
    body: bytes
    # The upstream URL's path that the gateway put before the caller's target ("": none).
    base_path: str = ""

    @property
    def incoming_path_and_query(self) -> str:
        """The caller's target as it arrived: ``path_and_query`` without the base path."""
        base = self.base_path
        if base and self.path_and_query.startswith(base):
            return self.path_and_query[len(base) :] or "/"
        return self.path_and_query

    @property
    def path(self) -> str:
        """The target without its query."""
        return self.path_and_query.partition("?")[0]

    @property
    def query(self) -> str:
        """The raw query string, without the ``?``."""
        return self.path_and_query.partition("?")[2]


class Signed(NamedTuple):
    """One signed attempt: the header to send and what was signed."""

    authorization: str
    request_id: str
    timestamp: int
    string_to_sign: bytes

    def __repr__(self) -> str:
        # The string to sign holds the session id and the body: never in a repr.
        return f"Signed(request_id={self.request_id!r}, timestamp={self.timestamp})"


def wire_bytes(value: str) -> bytes:
    """A value's bytes as they go on the wire: UTF-8, giving back the exact bytes of a
    header value that arrived decoded with surrogateescape."""
    return value.encode("utf-8", "surrogateescape")


def header_value(headers: Mapping[str, str], name: str) -> str:
    """A header's value; several field lines of one name combine with ", " (RFC 9110 §5.3)."""
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return ", ".join(getall(name, ()))
    return headers.get(name, "")


class Context(NamedTuple):
    """The values of one attempt that are not in the request itself."""

    api_id: str
    request_id: str
    timestamp: str


Getter = Callable[[RequestParts, Context], bytes]

FIELDS: dict[str, Getter] = {
    "api_id": lambda p, c: wire_bytes(c.api_id),
    "request_id": lambda p, c: wire_bytes(c.request_id),
    "timestamp": lambda p, c: wire_bytes(c.timestamp),
    "method": lambda p, c: wire_bytes(p.method.upper()),
    "path_and_query": lambda p, c: wire_bytes(p.path_and_query),
    "content_type": lambda p, c: wire_bytes(header_value(p.headers, "Content-Type")),
    "body": lambda p, c: p.body,
    "url": lambda p, c: wire_bytes(f"{p.scheme}://{p.host}{p.path_and_query}"),
    "host": lambda p, c: wire_bytes(p.host),
    "path": lambda p, c: wire_bytes(p.path),
    "query": lambda p, c: wire_bytes(p.query),
    "incoming_path_and_query": lambda p, c: wire_bytes(p.incoming_path_and_query),
    "incoming_path": lambda p, c: wire_bytes(p.incoming_path_and_query.partition("?")[0]),
}


def _header_getter(name: str) -> Getter:
    return lambda p, c: wire_bytes(header_value(p.headers, name))


# .NET's HttpUtility.UrlEncode: these kept, space as "+", every other byte %xx (lower).
_URLENCODE_KEPT = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.!*()"
)
_URLENCODE = [
    bytes([b]) if b in _URLENCODE_KEPT else b"+" if b == 0x20 else b"%%%02x" % b for b in range(256)
]


def _urlencode(value: bytes) -> bytes:
    return b"".join([_URLENCODE[b] for b in value])


def _digest(algorithm: str) -> Callable[[bytes], bytes]:
    # Of an empty value, empty: so an optional field stays empty through a digest.
    return lambda v: hashlib.new(algorithm, v).digest() if v else b""


TRANSFORMS: dict[str, Callable[[bytes], bytes]] = {
    "lower": bytes.lower,  # ASCII only, as bytes.lower is
    "upper": bytes.upper,
    "urlencode": _urlencode,
    # RFC 3986 §2.3: unreserved kept, every other byte %XX (upper-case hex).
    "percent": lambda v: quote_from_bytes(v, safe="").encode("ascii"),
    "md5": _digest("md5"),
    "sha256": _digest("sha256"),
    "base64": base64.b64encode,
    "hex": lambda v: v.hex().encode("ascii"),
}


@dataclass(frozen=True, slots=True)
class FieldPlan:
    """One parsed field expression: ``name|transform|...`` and an optional ``?``."""

    expression: str
    name: str
    transforms: tuple[str, ...]
    optional: bool
    get: Getter = field(repr=False, compare=False)
    apply: tuple[Callable[[bytes], bytes], ...] = field(repr=False, compare=False)

    def value(self, parts: RequestParts, context: Context) -> bytes:
        """The field's bytes, transforms applied."""
        value = self.get(parts, context)
        for transform in self.apply:
            value = transform(value)
        return value


class SchemeError(ValueError):
    """A scheme that cannot be compiled; ``problems`` names every bad part."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def parse_field(expression: str) -> FieldPlan:
    """Parse one field expression; raise ValueError saying what is wrong with it."""
    body = expression.removesuffix(OPTIONAL_SUFFIX)
    if OPTIONAL_SUFFIX in body:
        raise ValueError(f"{expression!r}: '?' may only end the expression")
    name, *transforms = body.split("|")
    if name.startswith(HEADER_FIELD_PREFIX):
        header = name[len(HEADER_FIELD_PREFIX) :]
        if not _TOKEN.match(header):
            raise ValueError(f"{expression!r} does not name a valid header")
        getter = _header_getter(header)
    elif name in FIELDS:
        getter = FIELDS[name]
    else:
        known = ", ".join(sorted(FIELDS))
        raise ValueError(f"{expression!r}: unknown field {name!r} (known: {known}, header:<Name>)")
    unknown = [t for t in transforms if t not in TRANSFORMS]
    if unknown:
        raise ValueError(
            f"{expression!r}: unknown transform(s) {', '.join(map(repr, unknown))}"
            f" (known: {', '.join(TRANSFORMS)})"
        )
    return FieldPlan(
        expression=expression,
        name=name,
        transforms=tuple(transforms),
        optional=expression.endswith(OPTIONAL_SUFFIX),
        get=getter,
        apply=tuple(TRANSFORMS[t] for t in transforms),
    )


def _aleacc_string(parts: RequestParts, context: Context, separator: bytes) -> bytes:
    """DEFAULT_FIELDS' string to sign, unrolled: api_id, request_id, timestamp, the session
    id and client IP when not empty, path and query, body (what the generic loop makes of
    that list; a property test holds the two together)."""
    headers = parts.headers
    session = header_value(headers, "X-Player-Session-Id")
    client_ip = header_value(headers, "X-Client-Ip")
    values = [
        wire_bytes(context.api_id),
        wire_bytes(context.request_id),
        wire_bytes(context.timestamp),
    ]
    if session:
        values.append(wire_bytes(session))
    if client_ip:
        values.append(wire_bytes(client_ip))
    values.append(wire_bytes(parts.path_and_query))
    values.append(parts.body)
    return separator.join(values)


def decode_secret(secret: bytes, encoding: str) -> bytes:
    """The HMAC key from the secret as stored; ValueError (never naming the value) if it
    does not decode under ``encoding``."""
    if encoding == "hex":
        if not _HEX.match(secret):
            raise ValueError("is not hex (secret_encoding = 'hex': an even number of 0-9a-f)")
        return bytes.fromhex(secret.decode("ascii"))
    if encoding == "base64":
        try:
            key = base64.b64decode(secret, validate=True)
        except binascii.Error:
            raise ValueError("is not base64 (secret_encoding = 'base64')") from None
        if not key:
            raise ValueError("is empty once base64-decoded")
        return key
    return secret


class Plan:
    """A compiled scheme: what the request path runs for every attempt."""

    __slots__ = (
        "_aleacc",
        "_encode",
        "_ms",
        "_steps",
        "fields",
        "header_names",
        "scheme",
        "separator",
    )

    def __init__(self, scheme: Scheme, fields: tuple[FieldPlan, ...]) -> None:
        self.scheme = scheme
        self.fields = fields
        # The request path's loop: plain tuples, no method call per field.
        self._steps = tuple((f.get, f.apply, f.optional) for f in fields)
        # Aleacc's field list, the default, is built by one function with no per-field call
        # (what it saves: bench/README.md).
        self._aleacc = scheme.fields == DEFAULT_FIELDS
        # The request headers the fields read, lower-case: all the proxy collects for it.
        self.header_names = frozenset(
            f.name.removeprefix(HEADER_FIELD_PREFIX).lower().encode()
            if f.name.startswith(HEADER_FIELD_PREFIX)
            else b"content-type"
            for f in fields
            if f.name.startswith(HEADER_FIELD_PREFIX) or f.name == "content_type"
        )
        self.separator = wire_bytes(scheme.separator)
        self._ms = scheme.timestamp_unit == "ms"
        hex_sig = scheme.signature_encoding == "hex"
        self._encode: Callable[[bytes], str] = (
            bytes.hex if hex_sig else lambda d: base64.b64encode(d).decode("ascii")
        )

    def timestamp(self, clock_s: float) -> int:
        """The header's timestamp for a clock reading in seconds."""
        return int(clock_s * 1000) if self._ms else int(clock_s)

    def seconds(self, timestamp: int) -> float:
        """A header timestamp in seconds, for replay windows."""
        return timestamp / 1000 if self._ms else float(timestamp)

    def values(self, parts: RequestParts, context: Context) -> list[bytes | None]:
        """Each field's bytes in order; None for an optional field left out (empty)."""
        values: list[bytes | None] = []
        for f in self.fields:
            value = f.value(parts, context)
            values.append(None if f.optional and not value else value)
        return values

    def string_to_sign(self, parts: RequestParts, context: Context) -> bytes:
        """The signed values joined by the separator, left-out fields and all."""
        if self._aleacc:
            return _aleacc_string(parts, context, self.separator)
        values = []
        for get, apply, optional in self._steps:
            value = get(parts, context)
            for transform in apply:
                value = transform(value)
            if value or not optional:
                values.append(value)
        return self.separator.join(values)

    def signature(self, key: bytes, message: bytes) -> str:
        """HMAC-SHA256 of ``message``, encoded as the scheme says."""
        return self._encode(hmac.new(key, message, hashlib.sha256).digest())

    def sign(
        self, parts: RequestParts, credentials: Credentials, request_id: str, timestamp: int
    ) -> Signed:
        """Sign one attempt of ``parts``."""
        context = Context(credentials.api_id, request_id, str(timestamp))
        message = self.string_to_sign(parts, context)
        mac = credentials.mac.copy()
        mac.update(message)
        sig = self._encode(mac.digest())
        return Signed(
            authorization=authorization(credentials.api_id, sig, request_id, timestamp),
            request_id=request_id,
            timestamp=timestamp,
            string_to_sign=message,
        )

    def verify(self, parts: RequestParts, key: bytes, auth: Authorization) -> bool:
        """Constant-time check of ``auth.signature`` against a fresh computation."""
        context = Context(auth.api_id, auth.request_id, str(auth.timestamp))
        expected = self.signature(key, self.string_to_sign(parts, context))
        return hmac.compare_digest(expected, auth.signature)

    def explain(
        self,
        parts: RequestParts,
        context: Context,
        body_preview: int = 512,
        shown: Callable[[FieldPlan, bytes], str | None] = lambda f, value: None,
    ) -> list[str]:
        """One line per field expression with its value escaped; never the secret.

        ``shown`` may put its own text in place of a value (a log's redactions)."""
        lines = []
        for f, value in zip(self.fields, self.values(parts, context), strict=True):
            if value is None:
                lines.append(f"{f.expression}: (empty: left out, with its separator)")
                continue
            replaced = shown(f, value)
            if replaced is not None:
                lines.append(f"{f.expression}: {replaced}")
                continue
            suffix = ""
            if len(value) > body_preview:
                digest = hashlib.sha256(value).hexdigest()
                suffix = f" ... ({len(value)} bytes, sha256 {digest})"
                value = value[:body_preview]
            # bytes repr escapes control bytes, backslashes and non-ASCII unambiguously.
            lines.append(f"{f.expression}: {repr(value)[2:-1]}{suffix}")
        return lines


def scheme_problems(scheme: Scheme) -> list[str]:
    """Everything wrong with ``scheme``, one message each (empty when it compiles)."""
    problems = []
    for expression in scheme.fields:
        try:
            parse_field(expression)
        except ValueError as exc:
            problems.append(str(exc))
    # Each value at most once: "body" and "body|md5" sign the same request part twice.
    names = [e.removesuffix(OPTIONAL_SUFFIX).split("|")[0] for e in scheme.fields]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"duplicate field(s) {', '.join(duplicates)}")
    if not scheme.fields:
        problems.append("fields must name at least one field")
    for key, value, allowed in (
        ("secret_encoding", scheme.secret_encoding, SECRET_ENCODINGS),
        ("signature_encoding", scheme.signature_encoding, SIGNATURE_ENCODINGS),
        ("timestamp_unit", scheme.timestamp_unit, TIMESTAMP_UNITS),
        ("request_id_format", scheme.request_id_format, REQUEST_ID_FORMATS),
    ):
        if value not in allowed:
            problems.append(f"{key} {value!r} must be one of {', '.join(allowed)}")
    return problems


def compile_scheme(scheme: Scheme) -> Plan:
    """Parse ``scheme`` once into a plan; raise SchemeError listing every problem."""
    problems = scheme_problems(scheme)
    if problems:
        raise SchemeError(problems)
    return Plan(scheme, tuple(parse_field(e) for e in scheme.fields))


def authorization(api_id: str, sig: str, request_id: str, timestamp: int) -> str:
    """The ``Authorization`` header value."""
    return f"{SCHEME} {api_id}:{sig}:{request_id}:{timestamp}"


@dataclass(frozen=True, slots=True)
class Authorization:
    """A parsed ``amx`` Authorization value."""

    api_id: str
    signature: str
    request_id: str
    timestamp: int

    @property
    def signature_encoding(self) -> str:
        """``base64`` or ``hex``, read off the signature's form."""
        return "hex" if _HEX_SIGNATURE.match(self.signature) else "base64"


def parse_authorization(value: str) -> Authorization | None:
    """Parse ``amx api_id:signature:request_id:timestamp``; None when malformed.

    The signature is 44 base64 characters or 64 lowercase hex ones (docs/signing.md).
    """
    scheme, _, credentials = value.partition(" ")
    if scheme != SCHEME:
        return None
    pieces = credentials.split(":")
    if len(pieces) != 4:
        return None
    api_id, sig, request_id, ts = pieces
    if not api_id or not ts.isdigit() or not ts.isascii():
        return None
    if not (_BASE64_SIGNATURE.match(sig) or _HEX_SIGNATURE.match(sig)):
        return None
    if not _REQUEST_ID.match(request_id):
        return None
    return Authorization(api_id, sig, request_id, int(ts))
