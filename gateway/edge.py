"""The HTTP/1 edge: aiohttp's protocol with the gateway's connection-level rules.

What no request handler can see happens here: how many connections are open, how long a
client may take to send its request headers, and how a request that aiohttp's parser
rejects is answered (as SPEC §6 JSON, without quoting the request back).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = structlog.get_logger("aleacc_gateway")


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """Connection-level limits of the proxy listener."""

    max_connections: int
    header_timeout_s: float
    # After an early answer (413, 408) aiohttp keeps reading the unsent rest of the body
    # for this long, so the client sees the answer instead of a reset.
    lingering_s: float = 2.0


def _raw_error(status: int, reason: str, code: str, message: str) -> bytes:
    body = json.dumps({"error": code, "message": message, "request_id": None}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


_OVERLOADED = _raw_error(503, "Service Unavailable", "overloaded", "too many connections")
_HEADER_TIMEOUT = _raw_error(
    408, "Request Timeout", "request_timeout", "the request headers took too long"
)


class EdgeGuard:
    """Shared by every connection of one listener: the open-connection count."""

    def __init__(self, limits: EdgeLimits) -> None:
        self.limits = limits
        self.open_connections = 0

    def protocol_factory(
        self, server: web.Server, loop: asyncio.AbstractEventLoop
    ) -> GatewayProtocol:
        """A new protocol for one accepted connection."""
        return GatewayProtocol(
            server, loop=loop, guard=self, access_log=None, lingering_time=self.limits.lingering_s
        )


class GatewayProtocol(RequestHandler):
    """One client connection."""

    def __init__(self, manager: web.Server, *, guard: EdgeGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._header_deadline: asyncio.TimerHandle | None = None
        # True while the next bytes can only be a new request's headers: at the start and
        # after a keep-alive answer (not after a closing one, when what still arrives is
        # the unread rest of a refused body).
        self._awaiting_headers = True
        self._rejected = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._guard.open_connections += 1
        if self._guard.open_connections > self._guard.limits.max_connections:
            # Refuse before aiohttp starts a task for it: a flood costs one write each.
            self._rejected = True
            assert isinstance(transport, asyncio.Transport)  # noqa: S101 - TCP listener
            transport.write(_OVERLOADED)
            transport.close()
            return
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._guard.open_connections -= 1
        self._cancel_deadline()
        if not self._rejected:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return
        # The first bytes of a request start its header deadline: all its headers must
        # arrive within header_timeout_s (slow-header attacks).
        if self._awaiting_headers and self._header_deadline is None:
            loop = asyncio.get_running_loop()
            self._header_deadline = loop.call_later(
                self._guard.limits.header_timeout_s, self._headers_too_slow
            )
        super().data_received(data)

    def request_started(self) -> None:
        """Called by the app once a request's headers are parsed."""
        self._awaiting_headers = False
        self._cancel_deadline()

    def request_finished(self, keep_alive: bool) -> None:
        """Called by the app when the request is answered."""
        self._awaiting_headers = keep_alive

    def _cancel_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        transport = self.transport
        if not self._awaiting_headers or transport is None:
            return
        log.warning("request_header_timeout", timeout_s=self._guard.limits.header_timeout_s)
        transport.write(_HEADER_TIMEOUT)
        self.force_close()
        transport.close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer what aiohttp itself could not handle, as SPEC §6 JSON.

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
        response = web.json_response(
            {"error": code, "message": text, "request_id": None}, status=status
        )
        response.force_close()
        return response


def mark_request_started(request: web.BaseRequest) -> None:
    """Tell the connection its request headers are in (no-op on other protocols)."""
    protocol = request.protocol
    if isinstance(protocol, GatewayProtocol):
        protocol.request_started()


def mark_request_finished(request: web.BaseRequest, keep_alive: bool) -> None:
    """Tell the connection its request is answered (no-op on other protocols)."""
    protocol = request.protocol
    if isinstance(protocol, GatewayProtocol):
        protocol.request_finished(keep_alive)
