"""The proxy application: app keys, one upstream pool per app, middlewares, the catch-all."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import structlog
from aiohttp import web

from .config import Settings
from .edge import mark_request_finished, mark_request_started
from .errors import GatewayError, error_response
from .logs import session_tag
from .metrics import Metrics, method_label
from .proxy import EXCHANGE, Clock, Exchange, Proxy
from .secret import SecretStore
from .upstream import Pool

access_log = structlog.get_logger("aleacc_gateway.access")
log = structlog.get_logger("aleacc_gateway")


@dataclass(slots=True)
class Lifecycle:
    """Process-wide state the admin endpoints report on."""

    draining: bool = False
    workers_down: int = 0  # workers being restarted (server.workers > 1)


UPSTREAM_POOL = web.AppKey("upstream_pool", Pool)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
METRICS = web.AppKey("metrics", Metrics)
SECRETS = web.AppKey("secrets", SecretStore)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(
    settings: Settings,
    *,
    secrets: SecretStore,
    metrics: Metrics,
    lifecycle: Lifecycle,
    clock: Clock = time.time,
) -> web.Application:
    """Build the proxy application; nothing listens until a runner starts it."""
    upstream = settings.upstream
    pool = Pool(
        upstream.url,
        max_connections=upstream.max_connections,
        connect_timeout_s=upstream.connect_timeout_s,
        timeout_s=upstream.timeout_s,
        idle_timeout_s=upstream.idle_timeout_s,
    )
    proxy = Proxy(settings, secrets, metrics, pool, clock=clock)

    @web.middleware
    async def forward(request: web.Request, handler: Handler) -> web.StreamResponse:
        # The proxy is the innermost middleware, not a route handler: aiohttp's router
        # cannot match "*", CONNECT's authority-form or a path that decodes to a newline,
        # and each of those must reach the proxy to be refused properly. The one route
        # below exists only for its expect handler; its own handler is never called.
        return await proxy.handle(request)

    app = web.Application(middlewares=[_observe, _answer_errors, forward])
    app[METRICS] = metrics
    app[SECRETS] = secrets
    app[LIFECYCLE] = lifecycle
    app[UPSTREAM_POOL] = pool
    # aiohttp would otherwise send "100 Continue" before any check, inviting bodies
    # the gateway then refuses.
    app.router.add_route("*", "/{tail:.*}", _unreachable, expect_handler=_defer_continue)
    app.on_response_prepare.append(_close_while_draining)
    app.on_cleanup.append(_close_pool)
    if secrets.watches_file:
        app.cleanup_ctx.append(secret_watch(settings.signing.secret_poll_s))
    return app


async def _defer_continue(request: web.Request) -> None:
    """Send nothing yet: read_body sends 100 Continue once the body is acceptable."""


async def _unreachable(request: web.Request) -> web.StreamResponse:
    raise RuntimeError("the forward middleware answers every request")  # pragma: no cover


async def _close_while_draining(request: web.Request, response: web.StreamResponse) -> None:
    # While draining, each answer closes its connection so keep-alive callers reconnect,
    # through the Service, to an instance that is staying.
    # aiohttp runs this hook after choosing the Connection header, so set it as well.
    if request.app[LIFECYCLE].draining:
        response.force_close()
        response.headers["Connection"] = "close"


async def _close_pool(app: web.Application) -> None:
    await app[UPSTREAM_POOL].close()


def secret_watch(interval_s: float) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context re-reading the app's secret every ``interval_s``."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        secrets = app[SECRETS]

        async def poll() -> None:
            while True:
                await asyncio.sleep(interval_s)
                secrets.refresh()

        task = asyncio.create_task(poll(), name="secret-watch")
        yield
        task.cancel()

    return context


@web.middleware
async def _answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place a GatewayError becomes an HTTP answer."""
    exchange = request[EXCHANGE]
    try:
        return await handler(request)
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


@web.middleware
async def _observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count, time and log every request exactly once."""
    metrics = request.app[METRICS]
    exchange = Exchange()
    request[EXCHANGE] = exchange
    started = time.perf_counter()
    status = 500
    keep_alive = False
    metrics.in_flight.inc()
    mark_request_started(request)
    try:
        response = await handler(request)
        status = response.status
        keep_alive = response.keep_alive is not False
        return response
    except asyncio.CancelledError:
        # The caller went away (aiohttp cancels the handler): nginx's 499 says so.
        status, exchange.error = 499, exchange.error or "client_disconnected"
        raise
    finally:
        mark_request_finished(request, keep_alive)
        duration = time.perf_counter() - started
        metrics.in_flight.dec()
        metrics.requests.labels(method_label(request.method), str(status)).inc()
        metrics.request_duration.observe(duration)
        access_log.info(
            "request",
            request_id=exchange.request_id,
            method=request.method,
            path=request.raw_path.partition("?")[0],  # the query may carry player data
            status=status,
            upstream_status=exchange.upstream_status,
            duration_ms=round(duration * 1000, 3),
            client_ip=exchange.client_ip,
            bytes_in=exchange.bytes_in,
            bytes_out=exchange.bytes_out,
            error=exchange.error,
            session=session_tag(request.headers.get("X-Player-Session-Id")),
        )
