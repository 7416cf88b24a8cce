"""The proxy's request handler, served by aiohttp's low-level server.

No web.Application, router or middleware chain: every request takes the same path, so
they only cost time. aiohttp's router could not match "*", CONNECT's authority-form or a
path that decodes to a newline anyway, and each of those must reach the proxy to be
refused properly; nor does the low-level server send "100 Continue" before any check
(read_body sends it once the body is known to be acceptable).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

import structlog
from aiohttp import web

from .config import Settings
from .edge import client_name, mark_request_finished, mark_request_started
from .egress import dialer, forward_proxy
from .errors import GatewayError, error_response
from .logs import AccessLog, session_tag
from .metrics import Metrics, method_label
from .pool import Pool
from .proxy import Clock, Exchange, Proxy
from .secret import SecretStore

log = structlog.get_logger("aleacc_gateway")


@dataclass(slots=True)
class Lifecycle:
    """Process-wide state the admin endpoints report on."""

    draining: bool = False
    workers_down: int = 0  # workers being restarted (server.workers > 1)


LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
SECRETS = web.AppKey("secrets", SecretStore)


class ProxyService:
    """The proxy listener's one handler, and the upstream pool it owns."""

    def __init__(
        self,
        settings: Settings,
        *,
        secrets: SecretStore,
        metrics: Metrics,
        lifecycle: Lifecycle,
        clock: Clock = time.time,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        upstream = settings.upstream
        proxy = forward_proxy(upstream, environ)  # EgressError: a configuration error
        self.pool = Pool(
            dialer(upstream.url, proxy, upstream.connect_timeout_s),
            max_connections=upstream.max_connections,
            timeout_s=upstream.timeout_s,
            idle_timeout_s=upstream.idle_timeout_s,
        )
        self._counts = metrics.counts
        self._lifecycle = lifecycle
        self._access_log = AccessLog()
        self._proxy = Proxy(
            settings, secrets, metrics, self.pool, draining=self._draining, clock=clock
        )

    def server(self) -> web.Server:
        """aiohttp's low-level server for ``handle``."""
        # handler_cancellation: a caller who hangs up cancels its upstream call.
        return web.Server(self.handle, handler_cancellation=True)

    async def close(self) -> None:
        await self.pool.close()

    def _draining(self) -> bool:
        # While draining, each answer closes its connection so keep-alive callers
        # reconnect, through the Service, to an instance that is staying.
        return self._lifecycle.draining

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer one request; count, time and log it exactly once."""
        counts = self._counts
        exchange = Exchange()
        started = time.perf_counter()
        status = 500
        keep_alive = False
        counts.in_flight += 1
        mark_request_started(request)
        try:
            response = await self._answer(request, exchange)
            status = response.status
            if not response.prepared:
                # Send it here rather than after returning, so the duration covers the
                # whole answer and the access line is written once the caller has it.
                if self._draining():
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
            mark_request_finished(request, keep_alive)
            duration = time.perf_counter() - started
            counts.in_flight -= 1
            key = (method_label(request.method), status)
            counts.requests[key] = counts.requests.get(key, 0) + 1
            counts.request_duration.observe(duration)
            self._proxy.record_upstream(exchange)
            self._access_log.write(
                {
                    "request_id": exchange.request_id,
                    "method": request.method,
                    "path": request.raw_path.partition("?")[0],  # the query may carry player data
                    "status": status,
                    "upstream_status": exchange.upstream_status,
                    "duration_ms": round(duration * 1000, 3),
                    "client_ip": exchange.client_ip,
                    "client_name": client_name(request),
                    "bytes_in": exchange.bytes_in,
                    "bytes_out": exchange.bytes_out,
                    "error": exchange.error,
                    "session": session_tag(request.headers.get("X-Player-Session-Id")),
                }
            )

    async def _answer(self, request: web.BaseRequest, exchange: Exchange) -> web.StreamResponse:
        """The one place a GatewayError becomes an HTTP answer."""
        try:
            return await self._proxy.handle(request, exchange)
        except GatewayError as exc:
            exchange.error = exc.code
            return error_response(exc, exchange.request_id)
        except Exception:
            log.exception("unhandled_error", request_id=exchange.request_id)
            exchange.error = GatewayError.code
            if exchange.streaming:
                # Part of the answer is on the wire: a second one would corrupt the stream.
                if request.transport is not None:
                    request.transport.abort()
                raise
            return error_response(GatewayError(), exchange.request_id)
