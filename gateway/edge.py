"""The HTTP/1 edge: aiohttp's protocol with the gateway's connection-level rules.

What no request handler can see happens here: how many connections are open, which
peers may connect at all, how long a connection may sit idle (from accept, and between
requests) and how long a client may take to send a request's headers, and how a request
that aiohttp's parser rejects is answered (as JSON, without quoting the request back).
With TLS on the listener the event loop runs the handshake (tls.py gives it the current
certificate) and a connection arrives here once it is done: the client name check is here.
What a request's handler needs of its connection (the peer, the listener's tenant, the
certificate's names) is one record, made when the connection is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from .client_ip import NetworkSet, parse_address
from .errors import ClientNotAllowed, error_body
from .tls import certificate_names, name_allowed

log = structlog.get_logger("aleacc_gateway")


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """Connection-level limits of the proxy listener."""

    max_connections: int
    header_timeout_s: float
    # From accept to a request's first byte, and from an answer to the next request's.
    idle_timeout_s: float
    allowed: NetworkSet
    # With client certificates: the names allowed (None: any the CA issued).
    allowed_names: frozenset[str] | None = None
    # After an early answer (413, 408) aiohttp keeps reading the unsent rest of the body
    # for this long, so the client sees the answer instead of a reset.
    lingering_s: float = 2.0


def _raw_error(status: int, reason: str, code: str, message: str) -> bytes:
    """A whole answer, as bytes, for a connection refused before aiohttp reads from it."""
    body = error_body(code, message, None).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


_OVERLOADED = _raw_error(503, "Service Unavailable", "overloaded", "too many connections")
# The one refusal of a client, for its address or its certificate's name (never per request).
_NOT_ALLOWED = _raw_error(
    ClientNotAllowed.status, "Forbidden", ClientNotAllowed.code, ClientNotAllowed.message
)
_HEADER_TIMEOUT = _raw_error(
    408, "Request Timeout", "request_timeout", "the request headers took too long"
)


@dataclass(frozen=True, slots=True)
class Connection:
    """What a connection tells about every request on it: read once, when it is made."""

    peer: str | None  # the peer's address, as aiohttp's request.remote gives it
    tenant: str | None  # whose own listener it came to (None: the shared one)
    client_names: tuple[str, ...] = ()  # the client certificate's (DNS or URI SANs, or CN)
    client_name: str | None = None  # the first of them: the access line's


def _peer(transport: asyncio.BaseTransport) -> str | None:
    """The peer's address as aiohttp's ``request.remote`` gives it."""
    peername = transport.get_extra_info("peername")
    if peername is None:
        return None
    return str(peername[0]) if isinstance(peername, (list, tuple)) else str(peername)


class EdgeGuard:
    """Shared by every connection of one listener: the open-connection count."""

    def __init__(
        self,
        limits: EdgeLimits,
        on_close: Callable[[str], None],
        tls: bool = False,
        on_tls_refused: Callable[[str], None] = lambda reason: None,
        tenant: str | None = None,
    ) -> None:
        self.limits = limits
        self.tenant = tenant  # a tenant's own listener: every request on it is this tenant's
        self.open_connections = 0
        self.on_close = on_close  # counts a connection the gateway closed, by reason
        self.tls = tls  # the listener speaks TLS: connections arrive after the handshake
        self.on_tls_refused = on_tls_refused  # counts a TLS client refused, by reason

    def protocol_factory(
        self, server: web.Server, loop: asyncio.AbstractEventLoop
    ) -> GatewayProtocol:
        """A new protocol for one accepted connection.

        aiohttp's own keep-alive timer (keepalive_timeout, armed at accept) stays at its
        default, far beyond ours: it cannot stand in for the deadlines below. It closes
        only a handler waiting for a request, so neither the rest of a pipelined request
        nor a header deadline, and without a word to the connections-closed metric; and
        0 does not turn it off (it would close every kept-alive connection at once).
        """
        return GatewayProtocol(
            server, loop=loop, guard=self, access_log=None, lingering_time=self.limits.lingering_s
        )


class GatewayProtocol(RequestHandler):
    """One client connection."""

    def __init__(self, manager: web.Server, *, guard: EdgeGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        # One deadline at a time: the idle one while no request has begun (from accept,
        # and after a keep-alive answer), the header one once its first byte is in. It is
        # due at _due (loop time) and then calls _on_due; _deadline is the timer behind
        # it, which may be set earlier than _due (see _arm).
        self._deadline: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._on_due: Callable[[], None] | None = None
        # True while the next bytes can only be a new request's headers: at the start and
        # after a keep-alive answer (not after a closing one, when what still arrives is
        # the unread rest of a refused body).
        self._awaiting_headers = True
        self._header_started = False
        self._rejected = False
        self.connection = Connection(None, guard.tenant)  # its facts, once it is made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self._guard
        guard.open_connections += 1
        refusal = None
        names: tuple[str, ...] = ()
        if guard.open_connections > guard.limits.max_connections:
            refusal = "overloaded", _OVERLOADED
        elif not self._peer_allowed(transport):
            # Decided by the peer's address alone, before a byte is read: a peer outside
            # access.allowed_clients can neither hold a connection nor send headers.
            refusal = "not_allowed", _NOT_ALLOWED
        if guard.tls and refusal is None:
            # The loop has done the handshake (and verified a client certificate).
            names = certificate_names(transport.get_extra_info("peercert"))
            if not name_allowed(names, guard.limits.allowed_names):
                guard.on_tls_refused("name")
                log.info("tls_client_not_allowed", client_name=names[0] if names else None)
                refusal = "not_allowed", _NOT_ALLOWED
        if refusal is None:
            self.connection = Connection(
                _peer(transport), guard.tenant, names, names[0] if names else None
            )
        self._open(transport, refusal)

    def _open(self, transport: asyncio.BaseTransport, refusal: tuple[str, bytes] | None) -> None:
        """Serve the connection, or answer its refusal and close it."""
        guard = self._guard
        if refusal is not None:
            # Refuse before aiohttp starts a task for it: a flood costs one write each.
            # (A stream transport: uvloop's does not subclass asyncio.Transport.)
            self._rejected = True
            stream = cast(asyncio.Transport, transport)
            stream.write(refusal[1])
            # Half-close (TLS has no half-close) and discard what the client still
            # sends, for a moment: closing with its request unread would send a reset,
            # which can destroy the answer before the client reads it (RFC 9112 §9.6).
            if stream.can_write_eof():
                stream.write_eof()
            self._deadline = asyncio.get_running_loop().call_later(
                guard.limits.lingering_s, stream.close
            )
            guard.on_close(refusal[0])
            return
        super().connection_made(transport)
        self._arm(guard.limits.idle_timeout_s, self._idle_too_long)

    def _peer_allowed(self, transport: asyncio.BaseTransport) -> bool:
        peername = transport.get_extra_info("peername")
        if not isinstance(peername, tuple):
            return True  # not an IP socket (tests on a Unix socket): nothing to check
        address = parse_address(str(peername[0]).partition("%")[0])
        return address is not None and address in self._guard.limits.allowed

    def connection_lost(self, exc: BaseException | None) -> None:
        self._guard.open_connections -= 1
        self._on_due = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if not self._rejected:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return
        # The first bytes of a request end its idle wait and start its header deadline:
        # all its headers must arrive within header_timeout_s (slow-header attacks).
        if self._awaiting_headers and not self._header_started:
            self._header_started = True
            self._arm(self._guard.limits.header_timeout_s, self._headers_too_slow)
        super().data_received(data)

    def request_started(self) -> None:
        """Called by the app once a request's headers are parsed."""
        self._awaiting_headers = False
        self._cancel_deadline()

    def request_finished(self, keep_alive: bool) -> None:
        """Called by the app when the request is answered."""
        self._awaiting_headers = keep_alive
        self._header_started = False
        if keep_alive:
            # The next request must begin within idle_timeout_s. This also bounds the
            # rest of a request pipelined behind this one, whose bytes are already in
            # (no data_received will start its header deadline).
            self._arm(self._guard.limits.idle_timeout_s, self._idle_too_long)

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        """Call ``callback`` in ``delay`` seconds, unless re-armed or cancelled before.

        The timer is moved only when the new deadline comes before it; one that fires
        before its deadline (moved later meanwhile) sets itself again for it. So a busy
        keep-alive connection, which arms two deadlines per request, re-sets its timer
        about once per header_timeout_s instead of twice per request.
        """
        due = self._loop.time() + delay
        self._due = due
        self._on_due = callback
        timer = self._deadline
        if timer is None or timer.when() > due:
            if timer is not None:
                timer.cancel()
            self._deadline = self._loop.call_at(due, self._deadline_reached)

    def _cancel_deadline(self) -> None:
        self._on_due = None  # a timer still set finds nothing to do

    def _deadline_reached(self) -> None:
        self._deadline = None
        callback = self._on_due
        if callback is None:
            return
        if self._loop.time() < self._due:  # re-armed later since this timer was set
            self._deadline = self._loop.call_at(self._due, self._deadline_reached)
            return
        self._on_due = None
        callback()

    def _idle_too_long(self) -> None:
        if self._awaiting_headers:
            # No request under way: closing says all there is to say (RFC 9112 §9.5).
            self._close_connection("idle_timeout", None)

    def _headers_too_slow(self) -> None:
        if self._awaiting_headers:
            log.warning("request_header_timeout", timeout_s=self._guard.limits.header_timeout_s)
            self._close_connection("header_timeout", _HEADER_TIMEOUT)

    def _close_connection(self, reason: str, answer: bytes | None) -> None:
        transport = self.transport
        if transport is None:
            return
        if answer is not None:
            transport.write(answer)
        self.force_close()
        transport.close()
        self._guard.on_close(reason)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer what aiohttp itself could not handle, as the gateway's JSON error.

        aiohttp's own answer quotes the offending request line back and its log line
        carries a traceback per malformed request; both are replaced here.
        """
        self._cancel_deadline()
        self._awaiting_headers = False  # the connection closes after this answer
        if request.writer.output_size > 0:
            raise ConnectionError("the answer had started; closing the connection")
        log.warning(
            "bad_http_request" if status < 500 else "unhandled_error",
            status=status,
            reason=type(exc).__name__ if exc is not None else None,
        )
        code = "bad_request" if status < 500 else "internal_error"
        text = "malformed HTTP request" if status < 500 else "internal error"
        response = web.Response(
            status=status, text=error_body(code, text, None), content_type="application/json"
        )
        response.force_close()
        return response


class SentAnswer(web.StreamResponse):
    """An answer already written whole to the connection (``send_whole``): aiohttp's own
    prepare() and write_eof(), which it calls after the handler, find it sent."""

    _eof_sent = True

    def __init__(self, status: int, keep_alive: bool) -> None:
        # Not StreamResponse.__init__: the headers and state it makes would never be read.
        self._status = status
        self._reason = ""
        self._keep_alive = keep_alive


async def send_whole(
    request: web.BaseRequest, data: bytes, status: int, keep_alive: bool, timeout_s: float
) -> web.StreamResponse:
    """Write a whole framed answer in one piece, where aiohttp's Response and StreamWriter
    would make a headers object, frame it and buffer it first. ConnectionResetError if the
    caller has gone; TimeoutError if it takes none of the bytes for ``timeout_s``."""
    protocol = request.protocol
    transport = protocol.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("the caller has gone")
    # handle_error reads it: once bytes are out, a second answer would corrupt the stream.
    request.writer.output_size += len(data)
    transport.write(data)
    if protocol.writing_paused:
        # The caller reads slower than we write: wait as StreamWriter.drain() does, but not
        # for ever, or a caller that never reads holds its connection and task.
        async with asyncio.timeout(timeout_s):
            await protocol._drain_helper()
    return SentAnswer(status, keep_alive)
