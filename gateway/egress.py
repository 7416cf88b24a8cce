"""Egress through an HTTP forward proxy: which one (configured, or from the environment
the way curl and urllib read it) and the credentials it wants.

The pool (upstream.py) does the talking: a CONNECT tunnel for an https upstream, requests
in absolute form for an http one.
"""

from __future__ import annotations

import base64
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field

from yarl import URL

from .config import UpstreamSettings


class EgressError(Exception):
    """The proxy settings cannot be used; one line naming the setting, never a password."""


class EgressFileMissing(EgressError):
    """proxy_auth_file is not there (yet): check-config, run where it is not mounted, warns."""


@dataclass(frozen=True, slots=True)
class ForwardProxy:
    """Where to send the upstream's traffic instead, and the Proxy-Authorization value."""

    host: str
    port: int
    authorization: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return f"http://{self.host}:{self.port}"


def forward_proxy(upstream: UpstreamSettings, environ: Mapping[str, str]) -> ForwardProxy | None:
    """The proxy for ``upstream`` (None: connect directly). Raises EgressError."""
    if upstream.proxy_url is not None:
        return _proxy(upstream.proxy_url, "upstream.proxy_url", _credentials(upstream))
    if not upstream.proxy_from_env:
        return None
    scheme = upstream.url.scheme
    name, value = _variable(environ, f"{scheme}_proxy")
    if not value:
        return None
    _, no_proxy = _variable(environ, "no_proxy")
    # NO_PROXY's matching (suffixes, "*", host:port) as urllib does it.
    host = upstream.url.raw_host or ""
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if no_proxy and bypass(host, {"no": no_proxy}):
        return None
    try:
        url = URL(value if "://" in value else f"http://{value}")
    except ValueError:
        raise EgressError(f"{name}: not a URL") from None
    credentials = _credentials(upstream)
    if credentials is None and url.user is not None:
        # The environment's convention (curl's too): user:password@ in the URL.
        credentials = f"{url.user}:{url.password or ''}"
    return _proxy(url.with_user(None), name, credentials)


def _variable(environ: Mapping[str, str], lower: str) -> tuple[str, str]:
    """The lower-case variable first, as curl reads them; HTTP_PROXY in upper case is
    ignored, as curl and urllib do (a CGI request can set it through a Proxy header)."""
    for name in (lower, lower.upper()):
        if name == "HTTP_PROXY":
            continue
        if environ.get(name, "").strip():
            return name, environ[name].strip()
    return lower, ""


def _credentials(upstream: UpstreamSettings) -> str | None:
    path = upstream.proxy_auth_file
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError as exc:
        raise EgressFileMissing(f"upstream.proxy_auth_file {path}: {exc.strerror}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "unreadable"
        raise EgressError(f"upstream.proxy_auth_file {path}: {reason}") from None
    if ":" not in text or "\n" in text:
        raise EgressError(f"upstream.proxy_auth_file {path}: must hold one line user:password")
    return text


def _proxy(url: URL, setting: str, credentials: str | None) -> ForwardProxy:
    if url.scheme != "http" or not url.raw_host:
        raise EgressError(f"{setting}: must be an http:// proxy URL like http://proxy:3128")
    authorization = None
    if credentials is not None:
        token = base64.b64encode(credentials.encode("utf-8")).decode("ascii")
        authorization = f"Basic {token}"
    return ForwardProxy(url.raw_host, url.port or 80, authorization)
