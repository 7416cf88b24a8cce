"""An Aleacc signer written from the scheme as docs/signing.md defines it, alone, for the tests.

It shares no code with ``gateway.signing``: where the two agree on a request, the
gateway signs as the contract says, not merely as it says itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field
from urllib.parse import urlsplit

DEFAULT = (
    "api_id", "request_id", "timestamp",
    "header:X-Player-Session-Id?", "header:X-Client-Ip?", "path_and_query", "body",
)  # fmt: skip
URLENCODE_SAFE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.!*()"
UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"


@dataclass(frozen=True)
class RefScheme:
    fields: tuple[str, ...] = DEFAULT
    separator: str = "\n"
    secret_encoding: str = "hex"
    signature_encoding: str = "base64"
    timestamp_unit: str = "s"

    def toml_table(self) -> str:
        """The ``[signing]`` keys in TOML (for a config the gateway reads)."""
        fields = ", ".join('"' + f.replace('"', '\\"') + '"' for f in self.fields)
        sep = self.separator.encode("unicode_escape").decode().replace('"', '\\"')
        return (
            f'fields = [{fields}]\nseparator = "{sep}"\n'
            f'secret_encoding = "{self.secret_encoding}"\n'
            f'signature_encoding = "{self.signature_encoding}"\n'
            f'timestamp_unit = "{self.timestamp_unit}"\n'
        )


@dataclass(frozen=True)
class RefRequest:
    method: str
    url: str  # absolute, exactly as sent: scheme://host[:port]/path?query
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    base_path: str = ""  # the upstream URL's own path; incoming_* sign what follows it


def key_of(secret: bytes, encoding: str) -> bytes:
    if encoding == "hex":
        return bytes.fromhex(secret.decode())
    if encoding == "base64":
        return base64.b64decode(secret)
    return secret


def _escape(value: bytes, safe: bytes, template: str, space: bytes | None) -> bytes:
    out = b""
    for byte in value:
        if byte in safe:
            out += bytes([byte])
        elif byte == 0x20 and space is not None:
            out += space
        else:
            out += (template % byte).encode()
    return out


def _base_value(name: str, request: RefRequest, api_id: str, rid: str, ts: str) -> bytes:
    split = urlsplit(request.url)
    target = split.path + ("?" + split.query if split.query else "")
    header = {k.lower(): v for k, v in request.headers.items()}
    base = request.base_path
    incoming = target[len(base) :] if base and target.startswith(base + "/") else target
    if name.startswith("header:"):
        return header.get(name[7:].lower(), "").encode()
    values = {
        "api_id": api_id,
        "request_id": rid,
        "timestamp": ts,
        "method": request.method.upper(),
        "path_and_query": target,
        "content_type": header.get("content-type", ""),
        "url": request.url,
        "host": split.netloc,
        "path": split.path,
        "query": split.query,
        "incoming_path_and_query": incoming,
        "incoming_path": incoming.partition("?")[0],
    }
    if name == "body":
        return request.body
    return values[name].encode()


def _transform(name: str, value: bytes) -> bytes:
    if name == "lower":
        return value.lower()
    if name == "upper":
        return value.upper()
    if name == "urlencode":
        return _escape(value, URLENCODE_SAFE, "%%%02x", b"+")
    if name == "percent":
        return _escape(value, UNRESERVED, "%%%02X", None)
    if name in ("md5", "sha256"):
        return hashlib.new(name, value).digest() if value else b""
    if name == "base64":
        return base64.b64encode(value)
    if name == "hex":
        return value.hex().encode()
    raise AssertionError(name)


def string_to_sign(scheme: RefScheme, request: RefRequest, api_id: str, rid: str, ts: int) -> bytes:
    lines = []
    for expression in scheme.fields:
        optional = expression.endswith("?")
        name, *transforms = expression.rstrip("?").split("|")
        value = _base_value(name, request, api_id, rid, str(ts))
        for transform in transforms:
            value = _transform(transform, value)
        if optional and value == b"":
            continue
        lines.append(value)
    return scheme.separator.encode().join(lines)


def authorization(
    scheme: RefScheme, request: RefRequest, api_id: str, secret: bytes, rid: str, ts: int
) -> str:
    """The ``Authorization`` value for ``request``."""
    message = string_to_sign(scheme, request, api_id, rid, ts)
    digest = hmac.new(key_of(secret, scheme.secret_encoding), message, "sha256").digest()
    sig = digest.hex() if scheme.signature_encoding == "hex" else base64.b64encode(digest).decode()
    return f"amx {api_id}:{sig}:{rid}:{ts}"
