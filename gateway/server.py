"""Binding and running the proxy and admin listeners."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from .admin import Lifecycle, create_admin_app
from .client_ip import NetworkSet
from .config import ListenAddress, Settings
from .edge import EdgeGuard, EdgeLimits
from .egress import egress_proxy
from .logs import flush_periodically
from .metrics import Metrics, add
from .preflight import Preflight
from .proxy import Clock, Proxy
from .ratelimit_store import open_store, store_password
from .reloading import ReloadResult
from .secret import SecretStore, secret_stores
from .tenants import Tenants
from .tls import CertificateStore

log = structlog.get_logger("aleacc_gateway")


class ListenError(Exception):
    """A listener could not be bound; the message is one line naming the setting."""


def bind(
    address: ListenAddress, reuse_port: bool = False, setting: str = "server.listen"
) -> socket.socket:
    """A listening TCP socket on ``address`` (port 0 picks a free one).

    ``reuse_port``: several worker processes bind the same port and the kernel spreads
    new connections among them (SO_REUSEPORT). Raises ListenError naming ``setting``.
    """
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    try:
        return socket.create_server(
            (address.host, address.port), family=family, backlog=1024, reuse_port=reuse_port
        )
    except OSError as exc:  # in use, permission denied, no such address, ...
        reason = (os.strerror(exc.errno) if exc.errno else str(exc)).lower()
        raise ListenError(f"{setting} {address}: {reason}") from None


def check_free(address: ListenAddress, setting: str = "server.listen") -> None:
    """ListenError unless ``address`` is free for us alone.

    Bound without SO_REUSEPORT, so that a port another gateway already serves with
    SO_REUSEPORT counts as taken: a second instance must not quietly share its traffic.
    """
    bind(address, setting=setting).close()


def proxy_listeners(settings: Settings) -> list[tuple[ListenAddress, str, str | None]]:
    """Each proxy listener's address, its setting and whose it is: the shared one
    (None), then each tenant's own."""
    return [(settings.server.listen, "server.listen", None)] + [
        (tenant.listen, f"{settings.table_of(tenant)}.listen", tenant.name)
        for tenant in settings.tenants
        if tenant.listen is not None
    ]


def format_address(address: tuple[str, int]) -> str:
    """``host:port``, with brackets around an IPv6 host."""
    return str(ListenAddress(*address))


# For whoever waits at a terminal through a long server.drain_delay_s.
SKIP_DELAY_HINT = "a second SIGTERM or Ctrl-C skips the drain delay"


class ShutdownSignals:
    """SIGTERM/SIGINT set ``stop`` (a second one sets ``hurry``); SIGHUP runs ``on_reload``."""

    def __init__(self, on_reload: Callable[[], object]) -> None:
        self.stop = asyncio.Event()
        self.hurry = asyncio.Event()
        self.received: str | None = None
        self._on_reload = on_reload
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._reload)

    def _stop(self, sig: signal.Signals) -> None:
        self.stop_now(sig.name, hurry=self.stop.is_set())

    def stop_now(self, reason: str, hurry: bool = False) -> None:
        """Stop as a signal would; ``hurry`` skips the drain delay."""
        if hurry:
            self.hurry.set()
        self.received = reason
        self.stop.set()

    def _reload(self) -> None:
        log.info("secret_reload_requested", signal="SIGHUP")
        self._on_reload()


def start_housekeeping(
    secrets: Mapping[str, SecretStore],
    poll_s: float,
    certificates: CertificateStore | None,
    fold_metrics: Callable[[], None] | None = None,
) -> list[asyncio.Task[None]]:
    """The tasks beside a listener: flushing buffered log lines (folding a worker's
    metrics just before) and, every ``poll_s``, re-reading each tenant's secret (when it
    comes from a file) and the listener's TLS files. Stop them with cancel_all()."""
    tasks = [asyncio.create_task(flush_periodically(before=fold_metrics), name="log-flush")]
    for name, store in secrets.items():
        if store.watches_file:
            tasks.append(asyncio.create_task(store.watch(poll_s), name=f"secret-{name}"))
    if certificates is not None:
        tasks.append(asyncio.create_task(certificates.watch(poll_s), name="tls"))
    return tasks


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel ``tasks``, wait for each to finish, and empty the list."""
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    tasks.clear()


@dataclass(slots=True)
class Bound:
    """The addresses actually listened on."""

    proxy: tuple[str, int]
    admin: tuple[str, int]


class GatewayServer:
    """The gateway's two listeners over one set of secrets, metrics and lifecycle.

    As one of several workers (``worker=True``) it serves only the proxy, on a port
    shared with its siblings; the supervisor serves the admin listener for all of them.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        environ: Mapping[str, str] = os.environ,
        clock: Clock = time.time,
        worker: bool = False,
        loaded: Preflight | None = None,
    ) -> None:
        """``loaded``: what serve's pre-flight read (the secrets, the TLS pair, the egress
        proxy); else it is read here, and what cannot be used raises TlsError or EgressError."""
        self.settings = settings
        self.worker = worker
        self.registry = registry or CollectorRegistry()
        limits = settings.limits
        self.metrics = Metrics(
            self.registry,
            shared=worker,
            tenants=tuple(t.name for t in settings.every_tenant),
            store=limits.store_url is not None,
        )
        # StoreConfigError here: the password cannot be read (serve's pre-flight says so first).
        self.store = (
            open_store(
                limits,
                loaded.store_password if loaded else store_password(limits, environ),
                self.metrics,
            )
            if limits.store_url is not None
            else None
        )
        self.lifecycle = Lifecycle()
        self.secrets = secret_stores(
            settings, environ, self._secret_reloaded, loaded.keys if loaded else None
        )
        tls = settings.server.tls
        # TlsError here: the first pair cannot be used, a configuration error.
        self.certificates = (
            CertificateStore(
                tls,
                on_reload=self._certificate_reloaded,
                loaded=loaded.certificate if loaded else None,
            )
            if tls
            else None
        )
        if self.certificates is not None:
            self.metrics.tls_certificate_expiry.set(self.certificates.not_after.timestamp())
        # Each tenant with its upstream's pool and its limits, split among the workers.
        self.tenants = Tenants(
            settings,
            self.secrets,
            egress=loaded.egress if loaded else egress_proxy(settings.upstream, environ),
            share=settings.server.workers if worker else 1,
            counts=self.metrics.counts,
            store=self.store,
        )
        proxy_class: type[Proxy] = Proxy
        if settings.tracing.otlp_endpoint is not None:
            # The otel extra, loaded only with tracing on: without it nothing of it is
            # imported, and no request tests for it.
            from .tracing import TracedProxy

            proxy_class = TracedProxy
        self.proxy = proxy_class(
            settings,
            tenants=self.tenants,
            metrics=self.metrics,
            lifecycle=self.lifecycle,
            clock=clock,
        )
        self.admin_app = create_admin_app(
            secrets=self.secrets,
            registry=self.registry,
            lifecycle=self.lifecycle,
            certificates=self.certificates,
            store=self.store,
        )
        self._runners: list[web.BaseRunner] = []
        self._listeners: list[asyncio.Server] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.edge: EdgeGuard | None = None  # the shared proxy listener's, once started
        self.tenant_addresses: dict[str, tuple[str, int]] = {}  # tenants' own listeners

    def _secret_reloaded(self, tenant: str, result: ReloadResult, problem: str | None) -> None:
        if result == "error":
            log.error("secret_reload_failed", tenant=tenant, problem=problem)
        else:
            log.info("secret_loaded", tenant=tenant)
        add(self.metrics.counts.secret_reloads, (tenant, result))

    def reload_secrets(self) -> None:
        """Re-read every tenant's secret now (SIGHUP)."""
        for store in self.secrets.values():
            store.refresh(force=True)

    def _handshake_failed(self, reason: str) -> None:
        log.info("tls_handshake_failed", reason=reason)
        add(self.metrics.counts.tls_refusals, "handshake")

    def _certificate_reloaded(self, result: ReloadResult, problem: str | None) -> None:
        assert self.certificates is not None  # noqa: S101 - only it calls back
        if result == "error":
            log.error("tls_reload_failed", problem=problem)
        else:
            log.info("tls_loaded", expires=self.certificates.not_after.isoformat())
            self.metrics.tls_certificate_expiry.set(self.certificates.not_after.timestamp())
        add(self.metrics.counts.tls_reloads, result)

    async def start(self) -> Bound:
        """Bind both listeners and start serving."""
        proxy = await self.start_proxy()
        drain_s = self.settings.server.drain_timeout_s
        admin_runner = await self._setup(
            web.AppRunner(self.admin_app, access_log=None, shutdown_timeout=drain_s)
        )
        admin_sock = bind(self.settings.server.admin_listen, setting="server.admin_listen")
        await web.SockSite(admin_runner, admin_sock).start()
        return Bound(proxy=proxy, admin=admin_sock.getsockname()[:2])

    async def start_proxy(self) -> tuple[str, int]:
        """Bind the proxy listeners only (all a worker serves) and start serving; the
        shared listener's address."""
        self._tasks = start_housekeeping(
            self.secrets,
            self.settings.signing.secret_poll_s,
            self.certificates,
            self.metrics.fold if self.worker else None,
        )
        if self.store is not None:
            self._tasks.append(asyncio.create_task(self.store.watch(), name="rate-limit-store"))
        server = self.proxy.server()
        # shutdown_timeout: how long stop() lets in-flight requests finish.
        drain_s = self.settings.server.drain_timeout_s
        await self._setup(web.ServerRunner(server, shutdown_timeout=drain_s))
        shared: tuple[str, int] = ("", 0)
        for address, setting, tenant in proxy_listeners(self.settings):
            bound = await self._listen(server, address, setting, tenant)
            if tenant is None:
                shared = bound
            else:
                self.tenant_addresses[tenant] = bound
        return shared

    async def _listen(
        self, server: web.Server, address: ListenAddress, setting: str, tenant: str | None
    ) -> tuple[str, int]:
        """One proxy listener (``tenant``'s own, or the shared one), serving ``server``."""
        limits = self.settings.limits
        sock = bind(address, reuse_port=self.worker, setting=setting)
        # The proxy listener speaks through EdgeGuard's protocol (connection cap, header
        # deadline, JSON errors); its connections still register with the runner, so
        # runner.cleanup() drains them.
        guard = EdgeGuard(
            EdgeLimits(
                max_connections=limits.max_connections,
                header_timeout_s=limits.header_timeout_s,
                idle_timeout_s=limits.idle_timeout_s,
                allowed=NetworkSet(self.settings.access.allowed_clients),
                allowed_names=self.settings.access.allowed_client_names,
            ),
            on_close=lambda reason: add(self.metrics.counts.connections_closed, reason),
            tls=self.certificates is not None,
            on_tls_refused=lambda reason: add(self.metrics.counts.tls_refusals, reason),
            tenant=tenant,
        )
        if tenant is None:
            self.edge = guard
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(
            lambda: guard.protocol_factory(server, loop),
            sock=sock,
            # The loop runs the handshake: with the current certificate, within the idle
            # deadline (a client that sends nothing is closed as with plain HTTP).
            ssl=self.certificates.listener_context(self._handshake_failed)
            if self.certificates
            else None,
            ssl_handshake_timeout=limits.idle_timeout_s if self.certificates else None,
        )
        self._listeners.append(listener)
        bound: tuple[str, int] = sock.getsockname()[:2]
        return bound

    async def _setup(self, runner: web.BaseRunner) -> web.BaseRunner:
        await runner.setup()
        self._runners.append(runner)
        return runner

    async def drain(self, hurry: asyncio.Event) -> None:
        """Leave gracefully: unready at once, serve on for the drain delay, then stop.

        The delay gives Kubernetes time to take this pod out of the Service's endpoints
        (readiness turns 503 now); ``hurry`` (a second signal) cuts it short.
        """
        server = self.settings.server
        self.lifecycle.draining = True
        log.info(
            "draining",
            delay_s=server.drain_delay_s,
            timeout_s=server.drain_timeout_s,
            hint=SKIP_DELAY_HINT,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hurry.wait(), server.drain_delay_s)
        await self.stop()

    async def stop(self) -> None:
        """Stop listening, let in-flight requests finish (up to drain_timeout_s), release.

        The proxy goes first and the admin listener last, so /readyz keeps answering 503
        and /metrics stays scrapeable until the last request is done.
        """
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        await self.tenants.close()
        await self.proxy.close()
        await cancel_all(self._tasks)
        if self.store is not None:
            await self.store.close()
