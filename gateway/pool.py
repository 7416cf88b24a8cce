"""A lean HTTP/1.1 connection pool to the one upstream: asyncio plus httptools' C parser.

The gateway talks to exactly one origin, with requests it has already serialised and
signed byte for byte, and passes answers on undecoded. aiohttp's client does all of that
and much more (cookies, redirects, proxies, decompression, tracing, per-request URL and
header processing); on the proxy's hot path that generality cost about a quarter of each
request's CPU (bench/README.md). This pool keeps only what a proxy needs:

- keep-alive connections reused most-recent-first, at most ``max_connections`` busy;
  idle ones are dropped after ``idle_timeout_s`` or as soon as the upstream closes them;
- new connections from a ``Dialer`` (egress.py: directly, or through a forward proxy);
- a read timeout on every wait for the upstream's bytes (response.py);
- every failure an ``UpstreamFault`` named by kind and by whether the request may have
  left, so that only what provably never reached the upstream is ever tried again.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol, TypeVar, cast

from .errors import UpstreamFault
from .response import Response, ResponseParser

# The request methods that carry "Content-Length: 0" when sent without a body (RFC 9110 §8.6).
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

P = TypeVar("P", bound=asyncio.Protocol)


class Dialer(Protocol):
    """How the pool reaches the upstream (egress.py)."""

    async def open(self, protocol: Callable[[], P]) -> P:
        """A new connection served by ``protocol()``; raises UpstreamFault (never sent)."""
        ...

    # Whether ``head()`` changes a request's head (a forward proxy wants absolute form).
    rewrites_head: bool
    # A status that is a forward proxy's refusal, not the upstream's answer (or None).
    refusal_status: int | None

    def head(self, head: bytes) -> bytes:
        """The request head as it goes on the wire."""
        ...


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
    """Connections to the upstream; ``request`` sends one request on one of them."""

    def __init__(
        self,
        dialer: Dialer,
        *,
        max_connections: int,
        timeout_s: float,
        idle_timeout_s: float,
    ) -> None:
        self._dialer = dialer
        self._timeout_s = timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._slots = Slots(max_connections)
        self._idle: deque[Connection] = deque()
        self.connections: set[Connection] = set()  # open ones, busy or idle

    @property
    def open_connections(self) -> int:
        return len(self.connections)

    async def request(self, head: bytes, body: bytes, *, method: str) -> Response:
        """Send one request and return its answer once the status line and headers are in.

        The caller must ``release()`` the answer. Raises UpstreamFault.
        """
        if not self._slots.take_free():
            await self._wait_for_slot()
        try:
            connection = self._reuse() or await self._dialer.open(self._new_connection)
        except BaseException:
            self._slots.release()
            raise
        response = Response(connection, method, self._timeout_s)
        dialer = self._dialer
        connection.start(response, dialer.head(head) if dialer.rewrites_head else head, body)
        try:
            await response.wait_for_headers()
        except BaseException:  # a fault, or the caller went away: the connection goes
            response.release()
            raise
        if response.status == dialer.refusal_status:
            response.release()
            raise UpstreamFault("proxy", sent=True)
        return response

    def _new_connection(self) -> Connection:
        return Connection(self)

    async def _wait_for_slot(self) -> None:
        # Every connection is busy: wait at most timeout_s for one. Not a connect: its
        # own kind, and never retried (UpstreamFault.retryable).
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._slots.wait()
        except TimeoutError:
            raise UpstreamFault("pool_timeout", sent=False) from None

    async def close(self) -> None:
        """Close every connection, busy or idle."""
        for connection in list(self.connections):
            connection.close()
        self._idle.clear()

    def _reuse(self) -> Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()  # the most recently used: the warmest
            if connection.usable and now - connection.idle_since < self._idle_timeout_s:
                return connection
            connection.close()
        return None

    def done(self, connection: Connection, reusable: bool) -> None:
        """A response is finished with: keep its connection for the next one, or close it."""
        self._slots.release()
        if reusable and connection.usable:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()


class Slots:
    """At most ``size`` holders at a time; the others wait, first come first served.

    What asyncio.Semaphore does, without its cost when a slot is free (its locked()
    scans the waiters, and acquire() is a coroutine even when it need not wait): the
    pool takes a slot for every request (bench/README.md has the figure).
    """

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    def take_free(self) -> bool:
        """Take a slot if one is free and nobody waits for one before us."""
        if self._free and not self._waiters:
            self._free -= 1
            return True
        return False

    async def wait(self) -> None:
        """Wait for a slot: ``release()`` hands it over directly."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.cancelled():
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            else:  # handed a slot just as the wait was given up: pass it on
                self.release()
            raise

    def release(self) -> None:
        """Give a slot back: to the first waiter still waiting, else to the free ones."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


class Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; feeds what it reads to the current answer's parser."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._registry = pool.connections
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._response: Response | None = None
        self._parser: ResponseParser | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's does not subclass asyncio.Transport, hence the cast).
        self.transport = cast(asyncio.Transport, transport)
        self._registry.add(self)

    def start(self, response: Response, head: bytes, body: bytes) -> None:
        assert self.transport is not None  # noqa: S101 - set on connect
        self._response = response
        parser = self._parser
        if parser is None:
            parser = self._parser = ResponseParser()
        parser.begin(response)
        if body:
            self.transport.writelines((head, body))
        else:
            self.transport.write(head)

    def data_received(self, data: bytes) -> None:
        response, parser = self._response, self._parser
        if response is None or parser is None or response.complete:
            # Bytes nobody asked for: the connection's framing can no longer be trusted.
            self.close()
        elif not parser.feed(data):
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
        self._drop_parser()

    def release(self, reusable: bool) -> None:
        """Its answer is finished with: back to the pool (Response.release)."""
        self._response = None
        self._pool.done(self, reusable)  # closes the connection unless it is reusable

    def _drop_parser(self) -> None:
        if self._parser is not None:
            self._parser.close()
            self._parser = None

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        self._drop_parser()
        if self.transport is not None and not self.closed:
            self.closed = True
            self._registry.discard(self)
            self.transport.abort()
