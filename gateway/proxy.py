"""One proxied request, told top-down: admission -> tenant -> client IP -> the tenant's
own admission -> body -> sign -> send -> relay -> record.

aiohttp's low-level server calls ``Proxy.handle`` for every request on the proxy
listener. No web.Application, router or middleware chain: every request takes the same
path, so they only cost time. aiohttp's router could not match "*", CONNECT's
authority-form or a path that decodes to a newline anyway, and each of those must reach
the proxy to be refused properly; nor does the low-level server send "100 Continue"
before any check (``read_body`` sends it once the body is known to be acceptable).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import structlog
from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict

from . import signing
from .admin import Lifecycle
from .client_ip import NetworkSet, derive_client_ip
from .config import Settings
from .edge import Connection, GatewayProtocol, SentAnswer, send_whole
from .errors import (
    BodyTooLarge,
    FaultKind,
    GatewayError,
    RateLimited,
    RequestTimeout,
    RouteNotAllowed,
    SigningFailed,
    UpstreamError,
    UpstreamFault,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_response,
)
from .forwarding import (
    check_target,
    downstream_headers,
    route_allowed,
    screen_headers,
    upstream_path_and_query,
    whole_answer_head,
)
from .logs import AccessLog, session_tag
from .metrics import Metrics, add, method_label
from .pool import framed_head
from .response import Response
from .skew import SkewWatch
from .tenants import Tenant, Tenants
from .trace_context import trace_id

Clock = Callable[[], float]

log = structlog.get_logger("aleacc_gateway")

# Answers up to this size with a known length are read whole and sent in one write:
# headers and body together, one syscall instead of two, nothing truncated ever framed.
WHOLE_ANSWER_BYTES = 64 * 1024


@dataclass(slots=True)
class Exchange:
    """What one request did, filled in as it goes; read once, by ``Proxy._record``."""

    connection: Connection  # where it came from
    request_id: str | None = None
    tenant: str | None = None  # its name, once chosen
    client_ip: str | None = None
    client_ip_source: str | None = None
    upstream_status: int | None = None
    upstream_s: float = 0.0  # until the upstream's response headers
    upstream_date: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    error: str | None = None
    streaming: bool = False


class Proxy:
    """The proxy listeners' one handler: every request to its tenant's upstream, signed.

    tracing.py's TracedProxy adds spans by overriding ``_answer``, ``_send`` and
    ``_record``; the server picks the class once, so without tracing no request tests it.
    """

    # The record each request fills in (a traced one also holds its spans).
    _exchange_type: ClassVar[type[Exchange]] = Exchange

    def __init__(
        self,
        settings: Settings,
        *,
        tenants: Tenants,
        metrics: Metrics,
        lifecycle: Lifecycle,
        clock: Clock = time.time,
    ) -> None:
        """``tenants``: every tenant, with its upstream and limits (built by the server)."""
        upstream, limits = settings.upstream, settings.limits
        self._tenants = tenants
        self._only = self._tenants.only
        # The label of a request refused before its tenant was known.
        self._unchosen = self._only.name if self._only else "unknown"
        self._counts = metrics.counts
        self._lifecycle = lifecycle
        self._clock = clock
        self._access_log = AccessLog()
        self._skew = SkewWatch(
            metrics.clock_skew,
            metrics.clock_correction,
            upstream.clock_skew_warning_s,
            clock,
            metrics.counts,
            correct=settings.signing.correct_clock_skew,
        )
        # The incoming headers any tenant's scheme reads (header:<Name>, content_type),
        # lower-case; each plan reads only its own of them.
        self._signed_headers = frozenset().union(
            *(t.plan.header_names for t in self._tenants.by_name.values())
        )
        self._forward_proxy_headers = upstream.forward_proxy_headers
        self._attempts = 1 + upstream.retries
        self._retry_backoff_s = upstream.retry_backoff_s
        self._routes = settings.access.routes
        self._body_timeout_s = limits.body_timeout_s
        self._send_timeout_s = limits.send_timeout_s
        self._max_body = limits.max_body_bytes
        self._trusted = NetworkSet(settings.client_ip.trusted_proxies)

    def server(self) -> web.Server:
        """aiohttp's low-level server for ``handle``."""
        # handler_cancellation: a caller who hangs up cancels its upstream call.
        return web.Server(self.handle, handler_cancellation=True)

    async def close(self) -> None:
        """Release what the proxy itself holds (the server closes the tenants' pools)."""

    # ---------------------------------------------------------------- the request

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer one request; count, time and log it exactly once."""
        edge = request.protocol
        assert isinstance(edge, GatewayProtocol)  # noqa: S101 - server.py serves us through it
        exchange = self._exchange_type(edge.connection)
        started = time.perf_counter()
        status = 500
        keep_alive = False
        self._counts.in_flight += 1
        edge.request_started()
        try:
            response = await self._answer(request, exchange)
            status = response.status
            if not response.prepared:
                # Send it here rather than after returning, so the duration covers the
                # whole answer and the access line is written once the caller has it.
                if self._lifecycle.draining:
                    response.force_close()
                try:
                    await response.prepare(request)
                    await response.write_eof()
                except ConnectionError:
                    status, exchange.error = 499, "client_disconnected"
            keep_alive = response.keep_alive is not False
            return response
        except asyncio.CancelledError:
            # The caller went away (aiohttp cancels the handler): nginx's 499 says so.
            status, exchange.error = 499, exchange.error or "client_disconnected"
            raise
        finally:
            edge.request_finished(keep_alive)
            self._record(request, exchange, status, time.perf_counter() - started)

    async def _answer(self, request: web.BaseRequest, exchange: Exchange) -> web.StreamResponse:
        """The one place a GatewayError becomes an HTTP answer."""
        try:
            return await self._proxy(request, exchange)
        except GatewayError as exc:
            exchange.error = exc.code
            if isinstance(exc, SigningFailed):
                add(self._counts.signing_failures, (exchange.tenant or self._unchosen, exc.reason))
            elif isinstance(exc, RateLimited):
                add(self._counts.rate_limited, (exchange.tenant or self._unchosen, exc.scope))
            return error_response(exc, exchange.request_id)
        except Exception:
            log.exception("unhandled_error", request_id=exchange.request_id)
            exchange.error = GatewayError.code
            if exchange.streaming:
                # Part of the answer is on the wire: a second one would corrupt the stream.
                _abort(request)
                raise
            return error_response(GatewayError(), exchange.request_id)

    async def _proxy(self, request: web.BaseRequest, exchange: Exchange) -> web.StreamResponse:
        """Proxy one request; raise GatewayError for anything answered locally."""
        # Admission: the target and the header lines, then the route allowlist.
        check_target(request.method, request.raw_path)
        incoming = screen_headers(
            request.raw_headers,
            (request.version.major, request.version.minor),
            forward_proxy_headers=self._forward_proxy_headers,
            signed=self._signed_headers,
        )
        connection = exchange.connection
        tenant = self._only or self._tenants.choose(
            connection.tenant, request.headers.get("Host"), connection.client_names
        )
        exchange.tenant = tenant.name
        if not route_allowed(self._routes, request.method, request.raw_path):
            raise RouteNotAllowed()
        client_ip = derive_client_ip(connection.peer, incoming.forwarded_for, self._trusted)
        exchange.client_ip = client_ip.address
        exchange.client_ip_source = client_ip.source
        if tenant.guarded:  # its own allowlist and rate limits: checked before the body
            tenant.admit(
                connection.peer, connection.client_names, client_ip.address, time.monotonic()
            )
            if tenant.shared is not None:  # the fleet's buckets: one round trip to the store
                await tenant.shared.take(client_ip.address)
        body = await self._read_body(request, exchange) if request.body_exists else b""

        # What the scheme signs of the headers: the end-to-end lines it names, as sent,
        # and the two the gateway sets.
        target = tenant.upstream
        signed = CIMultiDict(incoming.signed)
        signed["Host"] = target.host
        signed["X-Client-Ip"] = client_ip.address
        parts = signing.RequestParts(
            request.method,
            target.scheme,
            target.host,
            upstream_path_and_query(target.base_path, request.raw_path),
            signed,
            body,
            target.base_path,
        )
        lines = [
            target.host_line,
            *incoming.lines,
            b"X-Client-Ip: " + signing.wire_bytes(client_ip.address),
        ]
        upstream = await self._send(request, tenant, parts, lines, exchange)
        try:
            return await self._relay(request, upstream, exchange)
        finally:
            upstream.release()

    def _record(
        self, request: web.BaseRequest, exchange: Exchange, status: int, duration: float
    ) -> None:
        """Everything one answered request leaves behind: its counts, the upstream's clock,
        and the access line. The only place any of them is written."""
        counts = self._counts
        counts.in_flight -= 1
        tenant = exchange.tenant or self._unchosen
        counts.record(
            tenant,
            method_label(request.method),
            status,
            duration,
            exchange.client_ip_source,
            exchange.upstream_status,
            exchange.upstream_s,
        )
        if exchange.upstream_status is not None:
            self._skew.observe(exchange.upstream_date)
        self._access_log.write(
            {
                "request_id": exchange.request_id,
                "tenant": tenant,
                "method": request.method,
                "path": request.raw_path.partition("?")[0],  # the query may carry player data
                "status": status,
                "upstream_status": exchange.upstream_status,
                "duration_ms": round(duration * 1000, 3),
                "client_ip": exchange.client_ip,
                "client_name": exchange.connection.client_name,
                "bytes_in": exchange.bytes_in,
                "bytes_out": exchange.bytes_out,
                "error": exchange.error,
                "session": session_tag(request.headers.get("X-Player-Session-Id")),
                # A caller's valid W3C traceparent ties this line to its trace; an invalid
                # one is ignored, never logged (the header itself passes through as sent).
                "trace_id": trace_id(request.headers.get("traceparent")),
            }
        )

    # ---------------------------------------------------------------- the stages

    async def _read_body(self, request: web.BaseRequest, exchange: Exchange) -> bytes:
        if request.content.is_eof():
            # It all came with the headers: nothing to wait for, no timer to arm, and no
            # "100 Continue" needed (RFC 9110 §10.1.1 lets it go once the body is in).
            body = request.content.read_nowait()
            exchange.bytes_in = len(body)
            if len(body) > self._max_body:
                raise BodyTooLarge()
            return body
        try:
            async with asyncio.timeout(self._body_timeout_s):
                return await read_body(request, self._max_body, exchange)
        except TimeoutError:
            raise RequestTimeout() from None

    def _sign(self, tenant: Tenant, parts: signing.RequestParts) -> signing.Signed:
        credentials = tenant.credentials()
        if credentials is None:
            raise SigningFailed("secret_unavailable")
        plan = tenant.plan
        try:
            return plan.sign(
                parts,
                credentials,
                tenant.new_request_id(),
                # Aleacc's clock, as its Date headers show it (skew.py).
                plan.timestamp(self._clock() + self._skew.correction),
            )
        except UnicodeEncodeError:
            # A header value that is not valid text cannot be put into the signed string.
            raise SigningFailed("invalid_request") from None

    async def _send(
        self,
        request: web.BaseRequest,
        tenant: Tenant,
        parts: signing.RequestParts,
        lines: list[bytes],
        exchange: Exchange,
    ) -> Response:
        """Send with a fresh signature per attempt; retry only what provably never left."""
        pool = tenant.upstream.pool
        for attempt in range(1, self._attempts + 1):
            signed = self._sign(tenant, parts)
            exchange.request_id = signed.request_id
            authorization = b"Authorization: " + signing.wire_bytes(signed.authorization)
            head = framed_head(
                parts.method, parts.path_and_query, [*lines, authorization], len(parts.body)
            )
            started = time.perf_counter()
            try:
                response = await pool.request(head, parts.body, method=parts.method)
            except UpstreamFault as fault:
                error = _upstream_error(fault)
                add(self._counts.upstream_errors, error.kind)
                if fault.reason is not None:
                    _connect_failed(tenant, signed.request_id, attempt, fault)
                if not fault.retryable or attempt == self._attempts:
                    # Bytes may have reached the upstream: never send them twice.
                    raise error from None
                # Nothing was written to the upstream: safe to try again, signed afresh.
                log.warning(
                    "upstream_attempt_failed",
                    request_id=signed.request_id,
                    attempt=attempt,
                    kind=error.kind,
                    retry_in_s=self._retry_backoff_s,
                )
                await asyncio.sleep(self._retry_backoff_s)
                continue
            exchange.upstream_s = time.perf_counter() - started
            exchange.upstream_status = response.status
            exchange.upstream_date = response.headers.get("Date")
            if (response.status == 403 or response.status == 401) and tenant.rejections:
                tenant.rejections.rejected(
                    response.status,
                    parts,
                    signed,
                    exchange.upstream_date,
                    self._skew.correction,
                    "X-Player-Session-Id" in request.headers,
                )
            return response
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover

    async def _relay(
        self, request: web.BaseRequest, upstream: Response, exchange: Exchange
    ) -> web.StreamResponse:
        """Pass the upstream's answer on: small ones whole, others chunk by chunk."""
        assert exchange.request_id is not None  # noqa: S101 - set by _send
        length = upstream.content_length
        if (
            length is not None
            and length <= WHOLE_ANSWER_BYTES
            and request.method != "HEAD"
            and upstream.status not in (204, 304)
        ):
            return await self._relay_whole(request, upstream, exchange)
        headers = downstream_headers(upstream.headers, exchange.request_id)
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=headers
        )
        if self._lifecycle.draining:
            # While draining, each answer closes its connection so keep-alive callers
            # reconnect, through the Service, to an instance that is staying.
            response.force_close()  # before prepare, so the headers say "close" too
        await response.prepare(request)
        exchange.streaming = True
        while True:
            try:
                chunk = await upstream.readany()
            except UpstreamFault as fault:
                # Headers are gone already: the only honest signal left is to cut the
                # caller's connection, so a truncated body is never framed as complete.
                kind = self._body_fault(fault)
                exchange.error = f"upstream_{kind}"
                _abort(request)
                return response
            if not chunk:
                break
            try:
                # A caller that takes nothing for send_timeout_s is cut: else a reader
                # that never reads holds this upstream connection for ever.
                async with asyncio.timeout(self._send_timeout_s):
                    await response.write(chunk)
            except ConnectionResetError:
                exchange.error = "client_disconnected"
                return response
            except TimeoutError:
                exchange.error = "client_send_timeout"
                add(self._counts.connections_closed, "send_timeout")
                _abort(request)
                return response
            exchange.bytes_out += len(chunk)
        await response.write_eof()
        return response

    def _body_fault(self, fault: UpstreamFault) -> FaultKind:
        """Count a failure while reading the answer's body: ``timeout`` or ``cut``."""
        kind: FaultKind = "timeout" if fault.kind == "timeout" else "cut"
        add(self._counts.upstream_errors, kind)
        return kind

    async def _relay_whole(
        self, request: web.BaseRequest, upstream: Response, exchange: Exchange
    ) -> web.StreamResponse:
        assert exchange.request_id is not None  # noqa: S101 - set by _send
        try:
            body = await upstream.read()
        except UpstreamFault as fault:
            # Nothing has been sent yet, so a cut or stalled body is an honest 502/504.
            kind = self._body_fault(fault)
            raise (UpstreamTimeout if kind == "timeout" else UpstreamUnavailable)(kind) from None
        upstream.release()  # all in: the connection serves others while the caller reads
        status = upstream.status
        # While draining, each answer closes its connection so keep-alive callers
        # reconnect, through the Service, to an instance that is staying.
        keep_alive = request.keep_alive and not self._lifecycle.draining
        head = whole_answer_head(
            request.version,
            status,
            upstream.reason,
            upstream.raw_headers,
            exchange.request_id,
            len(body),
            keep_alive=keep_alive,
            date=rfc822_formatted_time(),
            server=SERVER_SOFTWARE,
        )
        exchange.bytes_out = len(body)
        try:
            return await send_whole(request, head + body, status, keep_alive, self._send_timeout_s)
        except ConnectionError:
            exchange.error = "client_disconnected"
            return SentAnswer(499, keep_alive=False)  # nothing sent: 499 is for the record
        except TimeoutError:
            exchange.error = "client_send_timeout"
            add(self._counts.connections_closed, "send_timeout")
            _abort(request)
            return SentAnswer(status, keep_alive=False)


async def read_body(request: web.BaseRequest, limit: int, exchange: Exchange) -> bytes:
    """Read the whole body, refusing it as soon as it exceeds ``limit`` bytes.

    At most ``limit`` plus one network read is ever held; ``exchange.bytes_in`` counts
    what was read, also when the body is refused.
    """
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge()
    if request.version == (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
        # Only now, with the size known to be acceptable, invite the body (RFC 9110 §10.1.1).
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer proper has not started
    body = bytearray()
    while chunk := await request.content.readany():
        body += chunk
        exchange.bytes_in = len(body)
        if len(body) > limit:
            raise BodyTooLarge()
    return bytes(body)


def _connect_failed(tenant: Tenant, request_id: str, attempt: int, fault: UpstreamFault) -> None:
    """Say why a connection to the upstream (or its forward proxy) could not be made:
    the metric's ``kind`` alone cannot tell an https URL on a plain-HTTP port from a
    refused connection."""
    upstream = tenant.upstream
    log.warning(
        "upstream_connect_failed",
        request_id=request_id,
        tenant=tenant.name,
        upstream=f"{upstream.scheme}://{upstream.host}",
        attempt=attempt,
        kind=fault.kind,
        reason=fault.reason,
    )


def _upstream_error(fault: UpstreamFault) -> UpstreamError:
    """The answer for a failure before the response headers: 504 if it timed out, else 502."""
    if fault.kind in ("timeout", "connect_timeout", "pool_timeout"):
        return UpstreamTimeout(fault.kind)
    return UpstreamUnavailable(fault.kind)


def _abort(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()
