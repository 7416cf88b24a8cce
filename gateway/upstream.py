"""A lean HTTP/1.1 connection pool to the one upstream: asyncio plus httptools' C parser.

The gateway talks to exactly one origin, with requests it has already serialised and
signed byte for byte, and passes answers on undecoded. aiohttp's client does all of that
and much more (cookies, redirects, proxies, decompression, tracing, per-request URL and
header processing); on the proxy's hot path that generality cost about a quarter of each
request's CPU (bench/README.md). This pool keeps only what a proxy needs:

- keep-alive connections reused most-recent-first, at most ``max_connections`` busy;
  idle ones are dropped after ``idle_timeout_s`` or as soon as the upstream closes them;
- a connect timeout, and a read timeout on every wait for the upstream's bytes;
- answers parsed by llhttp (via httptools), bodies handed on as they arrive, with
  back-pressure (reading pauses while the caller is slower than the upstream);
- every failure named by ``kind`` and by whether the request may have left (``sent``),
  so that only what provably never reached the upstream is ever tried again.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from typing import Any, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from .egress import ForwardProxy

# The request methods that carry "Content-Length: 0" when sent without a body (RFC 9110 §8.6).
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Reading from the upstream pauses while this much of an answer waits for the caller.
_HIGH_WATER = 256 * 1024
# The status line and headers of an answer, at most (llhttp itself sets no limit);
# the count is aiohttp's own default, which the gateway's callers may well share.
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 128
# Interim (1xx) answers before the final one, at most: more is an upstream gone wrong.
MAX_INTERIM = 8


class UpstreamFault(Exception):
    """Talking to the upstream failed. ``kind`` is a metric label; ``sent`` says whether
    any byte of the request may have reached the upstream (and so whether a retry is safe);
    ``retryable`` whether another attempt could fare better.
    """

    def __init__(self, kind: str, *, sent: bool) -> None:
        super().__init__(kind)
        self.kind = kind
        self.sent = sent
        # A pool wait that ran out took the whole timeout_s already, and a new attempt
        # would only wait in the same queue again; a forward proxy that failed or refused
        # would do so again.
        self.retryable = not sent and kind not in (POOL_TIMEOUT, PROXY)


POOL_TIMEOUT = "pool_timeout"
PROXY = "proxy"


def framed_head(method: str, target: str, lines: list[bytes], body_length: int) -> bytes:
    """The request line, the header ``lines`` (each ``b"Name: value"``, the bytes the
    signature covers) and Content-Length, framed; ValueError for a CR or LF inside any."""
    head_lines = [f"{method} {target} HTTP/1.1".encode("utf-8", "surrogateescape"), *lines]
    if body_length or method in _BODY_METHODS:
        head_lines.append(b"Content-Length: %d" % body_length)
    head = b"\r\n".join(head_lines) + b"\r\n\r\n"
    expected = len(head_lines) + 1
    if head.count(b"\n") != expected or head.count(b"\r") != expected:
        # A CR or LF inside a name or value would start a header (or a request) of its own.
        raise ValueError("CR or LF in the request line or a header")
    return head


class Pool:
    """Connections to ``url``'s origin; ``request`` sends one request on one of them."""

    def __init__(
        self,
        url: URL,
        *,
        max_connections: int,
        connect_timeout_s: float,
        timeout_s: float,
        idle_timeout_s: float,
        proxy: ForwardProxy | None = None,
    ) -> None:
        self._host = url.raw_host or ""
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if url.scheme == "https" else None
        self._proxy = proxy
        # Through a proxy: an https upstream is reached through a CONNECT tunnel; to an
        # http one each request goes in absolute form (the origin before the path).
        self._absolute = (
            f"http://{url.raw_authority}".encode("ascii")
            if proxy is not None and self._ssl is None
            else None
        )
        self._proxy_authorization = (
            f"Proxy-Authorization: {proxy.authorization}\r\n".encode("ascii")
            if proxy is not None and proxy.authorization
            else b""
        )
        host = f"[{self._host}]" if ":" in self._host else self._host
        origin = f"{host}:{self._port}".encode("ascii")
        self._tunnel_request = b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (
            origin, origin, self._proxy_authorization,
        )  # fmt: skip
        self._connect_timeout_s = connect_timeout_s
        self._timeout_s = timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: deque[_Connection] = deque()
        self._open: set[_Connection] = set()

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def request(self, head: bytes, body: bytes, *, method: str) -> Response:
        """Send one request and return its answer once the status line and headers are in.

        The caller must ``release()`` the answer. Raises UpstreamFault.
        """
        await self._acquire_slot()
        try:
            connection = self._reuse() or await self._connect()
        except BaseException:
            self._slots.release()
            raise
        if self._absolute is not None:
            head = self._absolute_form(head)
        response = Response(self, connection, method)
        connection.start(response, head, body)
        try:
            await response.wait_for_headers()
        except BaseException:  # a fault, or the caller went away: the connection goes
            response.release()
            raise
        if self._absolute is not None and response.status == 407:
            # The proxy wants (other) credentials: its answer, not the upstream's.
            response.release()
            raise UpstreamFault(PROXY, sent=True)
        return response

    def _absolute_form(self, head: bytes) -> bytes:
        """``GET /x HTTP/1.1`` -> ``GET http://host:port/x HTTP/1.1``, plus credentials."""
        assert self._absolute is not None  # noqa: S101 - only called through a proxy
        method, _, rest = head.partition(b" ")
        line, _, headers = rest.partition(b"\r\n")
        return b"%s %s%s\r\n%s%s" % (
            method, self._absolute, line, self._proxy_authorization, headers,
        )  # fmt: skip

    async def _acquire_slot(self) -> None:
        if not self._slots.locked():
            await self._slots.acquire()
            return
        # Every connection is busy: wait at most timeout_s for one. Not a connect: its
        # own kind, and never retried (UpstreamFault.retryable).
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._slots.acquire()
        except TimeoutError:
            raise UpstreamFault(POOL_TIMEOUT, sent=False) from None

    async def close(self) -> None:
        """Close every connection, busy or idle."""
        for connection in list(self._open):
            connection.close()
        self._idle.clear()

    def _reuse(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()  # the most recently used: the warmest
            if connection.usable and now - connection.idle_since < self._idle_timeout_s:
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        stage = "connect"
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                if self._proxy is None:
                    _, connection = await loop.create_connection(
                        lambda: _Connection(self._open), self._host, self._port, ssl=self._ssl
                    )
                    return connection
                stage = PROXY  # until the tunnel stands, a failure is the proxy's
                if self._ssl is None:
                    _, connection = await loop.create_connection(
                        lambda: _Connection(self._open), self._proxy.host, self._proxy.port
                    )
                    return connection
                raw = await self._tunnel(loop, self._proxy)
                stage = "connect"
                connection = _Connection(self._open)
                secure = await loop.start_tls(
                    raw, connection, self._ssl, server_hostname=self._host
                )
                if secure is None:  # pragma: no cover - only for a transport already closing
                    raise ConnectionResetError
                connection.connection_made(secure)
                return connection
        except TimeoutError:
            kind = PROXY if stage == PROXY else "connect_timeout"
            raise UpstreamFault(kind, sent=False) from None
        except OSError:  # refused, unreachable, name not found, TLS handshake failed
            raise UpstreamFault(stage, sent=False) from None

    async def _tunnel(
        self, loop: asyncio.AbstractEventLoop, proxy: ForwardProxy
    ) -> asyncio.Transport:
        """A TCP connection to the proxy, turned into a tunnel to the upstream by CONNECT.
        Raises OSError when the proxy cannot be reached or does not answer 2xx."""
        stream, reply = await loop.create_connection(_ConnectReply, proxy.host, proxy.port)
        try:
            stream.write(self._tunnel_request)
            status = await reply.status
        except BaseException:
            stream.abort()
            raise
        if not 200 <= status < 300:
            stream.abort()
            raise ConnectionRefusedError(f"the proxy answered CONNECT with {status}")
        return stream

    def _done(self, connection: _Connection, reusable: bool) -> None:
        """A response is finished with: keep its connection for the next one, or close it."""
        self._slots.release()
        if reusable and connection.usable:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()


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


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; feeds what it reads to the current response's parser."""

    def __init__(self, registry: set[_Connection]) -> None:
        self._registry = registry
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._response: Response | None = None
        self._parser: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's does not subclass asyncio.Transport, hence the cast).
        self.transport = cast(asyncio.Transport, transport)
        self._registry.add(self)

    def start(self, response: Response, head: bytes, body: bytes) -> None:
        assert self.transport is not None  # noqa: S101 - set on connect
        self._response = response
        self._parser = httptools.HttpResponseParser(response)
        if body:
            self.transport.writelines((head, body))
        else:
            self.transport.write(head)

    def data_received(self, data: bytes) -> None:
        response = self._response
        if response is None or response.complete:
            # Bytes nobody asked for: the connection's framing can no longer be trusted.
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            response.fail("protocol")
            self.close()
            return
        if response.head_too_large(len(data)):
            response.fail("protocol")
            self.close()

    @property
    def usable(self) -> bool:
        # The transport may be closing (the upstream's FIN was read) before
        # connection_lost() has run; a write then would fail.
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def eof_received(self) -> None:
        self.closed = True  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._registry.discard(self)
        if self._response is not None:
            self._response.connection_lost()

    def finished(self) -> None:
        self._response = None
        self._parser = None

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self._registry.discard(self)
            self.transport.abort()


class Response:
    """One upstream answer: status and headers at once, the body as it arrives.

    Also the httptools callback object for its parser (the ``on_*`` methods).
    """

    def __init__(self, pool: Pool, connection: _Connection, method: str) -> None:
        self._pool = pool
        self._connection = connection
        self._head_request = method == "HEAD"
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        self.content_length: int | None = None
        self.complete = False
        self._reason = b""
        self._raw_headers: list[tuple[str, str]] = []
        self._headers_in = False
        self._until_eof = False
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._keep_alive = False
        self._received_early = 0
        self._head_bytes = 0
        self._interim = 0
        self._fault: str | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._released = False

    # ---------------------------------------------------------------- for the proxy

    def head_too_large(self, received: int) -> bool:
        """Count ``received`` bytes while the headers are incomplete: httptools holds a
        header until its end, so this bounds what an endless one can pile up."""
        if self._headers_in:
            return False
        self._received_early += received
        return self._received_early > MAX_HEAD_BYTES

    async def wait_for_headers(self) -> None:
        while not self._headers_in:
            await self._wait()

    async def readany(self) -> bytes:
        """The next part of the body as it arrived; b"" once the body is complete."""
        while not self._chunks:
            if self.complete:
                return b""
            await self._wait()
        data = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
        self._chunks.clear()
        self._buffered = 0
        if self._paused:
            self._paused = False
            self._connection.resume_reading()
        return data

    async def read(self) -> bytes:
        """The whole body."""
        while not self.complete:
            await self._wait()
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data

    def release(self) -> None:
        """Hand the connection back (kept alive only after a complete, clean answer)."""
        if self._released:
            return
        self._released = True
        connection = self._connection
        connection.finished()
        reusable = (
            self.complete
            and self._fault is None
            and not self._until_eof
            and not self._head_request
            and self._keep_alive
        )
        self._pool._done(connection, reusable)

    # ---------------------------------------------------------------- waiting

    async def _wait(self) -> None:
        if self._fault is not None:
            raise UpstreamFault(self._fault, sent=True)
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        # A bare timer, not asyncio.timeout(): this runs several times per request.
        timer = loop.call_later(self._pool._timeout_s, self._timed_out)
        try:
            await self._waiter
        finally:
            timer.cancel()
            self._waiter = None
        if self._fault is not None:
            raise UpstreamFault(self._fault, sent=True)

    def _timed_out(self) -> None:
        self.fail("timeout")
        self._connection.close()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, kind: str) -> None:
        if self._fault is None and not self.complete:
            self._fault = kind
        self._wake()

    def connection_lost(self) -> None:
        if self._headers_in and self._until_eof:
            self.complete = True  # a body delimited by the end of the connection
            self._wake()
        else:
            self.fail("cut" if self._headers_in else "reset")

    # ---------------------------------------------------------------- httptools callbacks

    def on_message_begin(self) -> None:
        if self.complete:
            # A second answer to one request: stop here; the connection is closed.
            raise UpstreamFault("protocol", sent=True)
        self._reason = b""
        self._raw_headers = []

    def on_status(self, reason: bytes) -> None:
        self._reason += reason
        self._count_head(len(reason))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        if len(self._raw_headers) == MAX_HEADERS:
            raise UpstreamFault("protocol", sent=True)
        self._raw_headers.append(
            (name.decode("ascii", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        )

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise UpstreamFault("protocol", sent=True)  # the parser stops; a 502 follows

    def on_headers_complete(self) -> None:
        parser = self._connection._parser
        status = parser.get_status_code()
        if not 100 <= status <= 599:
            # RFC 9110 §15: three digits from 100 to 599. "099" would be relayed as an
            # invalid "99", and 0 is what this class takes for "no final answer yet".
            raise UpstreamFault("protocol", sent=True)
        if status < 200:
            # An interim answer (103 Early Hints, a stray 100): the final one follows.
            self._interim += 1
            if self._interim > MAX_INTERIM:
                raise UpstreamFault("protocol", sent=True)
            return
        self.status = status
        self.reason = self._reason.decode("latin-1")
        headers = CIMultiDict(self._raw_headers)
        self.headers = CIMultiDictProxy(headers)
        self._keep_alive = bool(parser.should_keep_alive())
        codings = headers.get("Transfer-Encoding")
        if codings is not None and codings.replace(" ", "").lower() != "chunked":
            # A coding the gateway would strip with the header (it is hop-by-hop) while
            # passing the coded bytes on: refused, as on the request side (RFC 9112 §6.1).
            raise UpstreamFault("protocol", sent=True)
        length = headers.get("Content-Length")
        self.content_length = int(length) if length is not None else None
        no_body = self._head_request or status in (204, 304)
        self._until_eof = not no_body and self.content_length is None and codings is None
        self._headers_in = True
        if self._head_request:
            # llhttp cannot be told the answer is to a HEAD, so it would wait for a body.
            self.complete = True
        self._wake()

    def on_body(self, data: bytes) -> None:
        if self.complete:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER and not self._paused:
            self._paused = True
            self._connection.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status == 0:
            return  # the end of an interim answer
        self.complete = True
        self._wake()
