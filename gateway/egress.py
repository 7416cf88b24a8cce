"""How the gateway reaches the upstream: directly, or through an HTTP forward proxy.

Which proxy (configured, or from the environment the way curl and urllib read it) and
the credentials it wants; and how to talk through it: a CONNECT tunnel for an https
upstream, requests in absolute form for an http one, a 407 taken as the proxy's refusal.
``dialer()`` gives the pool (pool.py) its connection factory for the one upstream.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import socket
import ssl
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from yarl import URL

from .config import UpstreamSettings
from .errors import FaultKind, UpstreamFault
from .response import MAX_HEAD_BYTES

P = TypeVar("P", bound=asyncio.Protocol)


class EgressError(Exception):
    """The proxy settings cannot be used; one line naming the setting, never a password."""


class EgressFileMissing(EgressError):
    """proxy_auth_file is not there (yet): check-config, run where it is not mounted, warns."""


@dataclass(frozen=True, slots=True)
class EgressProxy:
    """Where to send the upstream's traffic instead, and the Proxy-Authorization value."""

    host: str
    port: int
    authorization: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return f"http://{self.host}:{self.port}"


def egress_proxy(upstream: UpstreamSettings, environ: Mapping[str, str]) -> EgressProxy | None:
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


def _proxy(url: URL, setting: str, credentials: str | None) -> EgressProxy:
    if url.scheme != "http" or not url.raw_host:
        raise EgressError(f"{setting}: must be an http:// proxy URL like http://proxy:3128")
    authorization = None
    if credentials is not None:
        token = base64.b64encode(credentials.encode("utf-8")).decode("ascii")
        authorization = f"Basic {token}"
    return EgressProxy(url.raw_host, url.port or 80, authorization)


def dialer(url: URL, proxy: EgressProxy | None, connect_timeout_s: float) -> Direct:
    """The pool's connection factory for ``url``'s origin, through ``proxy`` if any."""
    if proxy is None:
        return Direct(url, connect_timeout_s)
    if url.scheme == "https":
        return Tunnel(url, connect_timeout_s, proxy)
    return AbsoluteForm(url, connect_timeout_s, proxy)


class ProxyRefused(ConnectionError):
    """The forward proxy answered CONNECT with something other than 2xx."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the proxy answered CONNECT with {status}")
        self.status = status


# OpenSSL's words for a TLS client answered by something that is not TLS: 1.1 and 3.0
# say the version, 3.2 on the record layer or the length the plain bytes seem to announce.
_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"})
# X509_V_ERR_HOSTNAME_MISMATCH, _EMAIL_MISMATCH, _IP_ADDRESS_MISMATCH
_NAME_MISMATCH = frozenset({62, 63, 64})


def connect_reason(exc: BaseException) -> str:
    """Why a connection could not be made, in words an operator can act on."""
    if isinstance(exc, TimeoutError):
        return "timed out: no connection or TLS handshake within upstream.connect_timeout_s"
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in _NAME_MISMATCH:
            return "TLS: certificate name mismatch: it is not for the upstream URL's host"
        return f"TLS: certificate not trusted ({exc.verify_message}): is its CA in the trust store?"
    if isinstance(exc, ssl.SSLError):
        if exc.reason in _NOT_TLS:
            return "TLS: wrong version: the port does not speak TLS (http:// or another port?)"
        return f"TLS: handshake failed ({exc.reason or 'unknown'})"
    if isinstance(exc, socket.gaierror):
        return "name not resolved: check the upstream URL's host and DNS"
    if isinstance(exc, ProxyRefused):
        return f"the forward proxy answered CONNECT with {exc.status}"
    if isinstance(exc, ConnectionRefusedError):
        return "refused: nothing listens on that port, or a firewall rejects it"
    if isinstance(exc, ConnectionResetError):
        return "reset by the peer during connect or the TLS handshake"
    code = exc.errno if isinstance(exc, OSError) else None
    if code in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return "unreachable: no route to the host"
    if code is None and exc.args and isinstance(exc.args[0], str):
        return f"failed: {exc.args[0]}"  # asyncio's and ours: no errno, a sentence
    return f"failed ({errno.errorcode.get(code or 0) or type(exc).__name__})"


class Direct:
    """Straight to the upstream: TCP, and TLS for an https URL."""

    rewrites_head = False
    refusal_status: int | None = None
    # The kinds of a connect that timed out or failed: to the upstream, or to a proxy.
    _timeout_fault: FaultKind = "connect_timeout"
    _failure_fault: FaultKind = "connect"

    def __init__(self, url: URL, connect_timeout_s: float) -> None:
        self._host = url.raw_host or ""
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if url.scheme == "https" else None
        self._connect_timeout_s = connect_timeout_s

    async def open(self, protocol: Callable[[], P]) -> P:
        """A new connection served by ``protocol()``; raises UpstreamFault (nothing sent)."""
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                return await self._open(protocol)
        except TimeoutError as exc:
            reason = connect_reason(exc)
            raise UpstreamFault(self._timeout_fault, sent=False, reason=reason) from None
        except OSError as exc:  # refused, unreachable, name not found, TLS handshake failed
            reason = connect_reason(exc)
            raise UpstreamFault(self._failure_fault, sent=False, reason=reason) from None

    async def _open(self, protocol: Callable[[], P]) -> P:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(
            protocol, self._host, self._port, ssl=self._ssl
        )
        return connection

    def head(self, head: bytes) -> bytes:
        """The request head as it goes on the wire."""
        return head


class AbsoluteForm(Direct):
    """To an http upstream through a proxy: each request in absolute form (RFC 9112 §3.2.2)."""

    rewrites_head = True
    refusal_status = 407  # the proxy wants (other) credentials: its answer, not the upstream's
    # The proxy could not be reached: its fault, never retried.
    _timeout_fault: FaultKind = "proxy"
    _failure_fault: FaultKind = "proxy"

    def __init__(self, url: URL, connect_timeout_s: float, proxy: EgressProxy) -> None:
        super().__init__(url, connect_timeout_s)
        self._proxy = proxy
        self._origin = f"http://{url.raw_authority}".encode("ascii")
        self._authorization = _authorization_line(proxy)

    async def _open(self, protocol: Callable[[], P]) -> P:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(protocol, self._proxy.host, self._proxy.port)
        return connection

    def head(self, head: bytes) -> bytes:
        """``GET /x HTTP/1.1`` -> ``GET http://host:port/x HTTP/1.1``, plus credentials."""
        method, _, rest = head.partition(b" ")
        line, _, headers = rest.partition(b"\r\n")
        return b"%s %s%s\r\n%s%s" % (method, self._origin, line, self._authorization, headers)


class Tunnel(Direct):
    """To an https upstream through a proxy: TLS inside a CONNECT tunnel (RFC 9110 §9.3.6)."""

    def __init__(self, url: URL, connect_timeout_s: float, proxy: EgressProxy) -> None:
        super().__init__(url, connect_timeout_s)
        self._proxy = proxy
        host = f"[{self._host}]" if ":" in self._host else self._host
        origin = f"{host}:{self._port}".encode("ascii")
        self._connect_request = b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (
            origin,
            origin,
            _authorization_line(proxy),
        )

    async def open(self, protocol: Callable[[], P]) -> P:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._connect_timeout_s  # for the tunnel and TLS together
        try:
            async with asyncio.timeout_at(deadline):
                raw = await self._tunnel(loop)
        except (TimeoutError, OSError) as exc:
            # Until the tunnel stands, a failure is the proxy's.
            raise UpstreamFault("proxy", sent=False, reason=connect_reason(exc)) from None
        try:
            async with asyncio.timeout_at(deadline):
                return await self._secure(loop, raw, protocol)
        except TimeoutError as exc:
            raw.abort()
            reason = connect_reason(exc)
            raise UpstreamFault("connect_timeout", sent=False, reason=reason) from None
        except OSError as exc:  # the upstream's TLS handshake failed
            raw.abort()
            raise UpstreamFault("connect", sent=False, reason=connect_reason(exc)) from None

    async def _secure(
        self, loop: asyncio.AbstractEventLoop, raw: asyncio.Transport, protocol: Callable[[], P]
    ) -> P:
        """TLS to the upstream inside the tunnel, served by ``protocol()``."""
        connection = protocol()
        assert self._ssl is not None  # noqa: S101 - a tunnel is for https only
        secure = await loop.start_tls(raw, connection, self._ssl, server_hostname=self._host)
        if secure is None:  # pragma: no cover - only for a transport already closing
            raise ConnectionResetError
        connection.connection_made(secure)
        return connection

    async def _tunnel(self, loop: asyncio.AbstractEventLoop) -> asyncio.Transport:
        """A TCP connection to the proxy, turned into a tunnel to the upstream by CONNECT.
        Raises OSError when the proxy cannot be reached or does not answer 2xx."""
        stream, reply = await loop.create_connection(
            _ConnectReply, self._proxy.host, self._proxy.port
        )
        try:
            stream.write(self._connect_request)
            status = await reply.status
        except BaseException:
            stream.abort()
            raise
        if not 200 <= status < 300:
            stream.abort()
            raise ProxyRefused(status)
        return stream


def _authorization_line(proxy: EgressProxy) -> bytes:
    if not proxy.authorization:
        return b""
    return f"Proxy-Authorization: {proxy.authorization}\r\n".encode("ascii")


class _ConnectReply(asyncio.Protocol):
    """Reads a proxy's answer to CONNECT up to the end of its head; ``status`` is its code."""

    def __init__(self) -> None:
        self.status: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._received = b""

    def data_received(self, data: bytes) -> None:
        if self.status.done():
            return
        self._received += data
        head, found, rest = self._received.partition(b"\r\n\r\n")
        if not found:
            if len(self._received) > MAX_HEAD_BYTES:
                self.status.set_exception(ConnectionError("no end to the proxy's answer"))
            return
        parts = head.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            self.status.set_exception(ConnectionError("not an HTTP answer to CONNECT"))
        elif rest and parts[1].startswith(b"2"):  # bytes before our TLS handshake began
            self.status.set_exception(ConnectionError("data after the proxy's 2xx"))
        else:
            self.status.set_result(int(parts[1]))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.status.done():
            self.status.set_exception(exc or ConnectionResetError("the proxy closed"))
