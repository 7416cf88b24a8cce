"""server.workers > 1: a supervisor process serving the admin listener, and N proxy workers.

Workers are fresh processes (``serve --worker N``), not forks: prometheus-client chooses
its multi-process storage at import time from PROMETHEUS_MULTIPROC_DIR, which must be set
before the worker starts. Each worker binds the proxy port with SO_REUSEPORT; the
supervisor's /metrics adds up every worker's counters from that directory.

Each worker shares a socket pair with the supervisor (the link): the worker writes one
byte once its listener accepts, so the supervisor reports "started" and /readyz 200 only
when every worker serves; and the worker stops when the supervisor's end closes, so
killing the supervisor (even with SIGKILL) leaves no orphan serving the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from .admin import Lifecycle, create_admin_app
from .preflight import Preflight
from .ratelimit_store import open_store
from .secret import SecretStore, secret_stores
from .server import (
    SKIP_DELAY_HINT,
    ShutdownSignals,
    bind,
    cancel_all,
    check_free,
    format_address,
    proxy_listeners,
    start_housekeeping,
)
from .tls import CertificateStore

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
RESTART_DELAY_S = 1.0
# Beyond the drain a worker is given this long before it is killed.
KILL_GRACE_S = 5.0

LINK_READY = b"1"

log = structlog.get_logger("aleacc_gateway")


async def report_ready(link_fd: int, on_supervisor_gone: Callable[[], None]) -> asyncio.Task[None]:
    """Worker side of the link: say "listening", then watch for the supervisor's end to
    close; the returned task calls ``on_supervisor_gone`` when it does."""
    link = socket.socket(fileno=link_fd)
    link.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(link, LINK_READY)

    async def watch() -> None:
        with link:
            await loop.sock_recv(link, 1)  # nothing is ever sent: this returns at close
        on_supervisor_gone()

    return asyncio.create_task(watch(), name="supervisor-link")


class Supervisor:
    """Starts, watches, restarts and stops the worker processes."""

    def __init__(self, loaded: Preflight, config: Path, log_format: str) -> None:
        settings = loaded.settings
        self.settings = settings
        self._certificate = loaded.certificate
        self._store_password = loaded.store_password
        self._keys = loaded.keys
        self.config = config
        self.log_format = log_format
        # Until a worker reports that it listens, it counts as down (readiness 503).
        self.lifecycle = Lifecycle(workers_down=settings.server.workers)
        self.workers: dict[int, asyncio.subprocess.Process] = {}
        self._links: dict[int, socket.socket] = {}
        self._awaiting: dict[int, asyncio.Task[None]] = {}
        self._ready: set[int] = set()  # pids of the workers that listen
        self._all_ready = asyncio.Event()

    async def run(self, summary: dict[str, object]) -> int:
        """Serve until SIGTERM/SIGINT, then drain every worker; 0 if all left cleanly."""
        metrics_dir = tempfile.mkdtemp(prefix="aleacc-gateway-metrics-")
        # Only for /readyz here: the workers sign and serve TLS with their own.
        secrets = secret_stores(self.settings, loaded=self._keys)
        tls = self.settings.server.tls
        certificates = CertificateStore(tls, loaded=self._certificate) if tls else None
        tasks = start_housekeeping(secrets, self.settings.signing.secret_poll_s, certificates)
        # Only for /readyz too: the workers check their requests with their own.
        limits = self.settings.limits
        store = open_store(limits, self._store_password) if limits.store_url else None
        if store is not None:
            tasks.append(asyncio.create_task(store.watch(), name="rate-limit-store"))
        try:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=metrics_dir)  # type: ignore[no-untyped-call]
            admin = create_admin_app(
                secrets=secrets,
                registry=registry,
                lifecycle=self.lifecycle,
                certificates=certificates,
                store=store,
            )
            runner = web.AppRunner(admin, access_log=None)
            await runner.setup()
            sock = bind(self.settings.server.admin_listen, setting="server.admin_listen")
            # Before any worker starts (each would fail to bind, again and again).
            for address, setting, _ in proxy_listeners(self.settings):
                check_free(address, setting)
            await web.SockSite(runner, sock).start()
            environ = {**os.environ, METRICS_DIR_ENV: metrics_dir}
            signals = ShutdownSignals(on_reload=lambda: self._reload(secrets))
            for number in range(self.settings.server.workers):
                await self._spawn(number, environ)
            supervise = asyncio.create_task(self._supervise(environ, metrics_dir, signals.stop))
            all_ready = asyncio.create_task(self._all_ready.wait())
            # "started" once every worker listens (a worker that fails first is restarted).
            await asyncio.wait({all_ready, supervise}, return_when=asyncio.FIRST_COMPLETED)
            if all_ready.done():
                log.info(
                    "started",
                    proxy=str(self.settings.server.listen),
                    admin=format_address(sock.getsockname()[:2]),
                    workers=len(self.workers),
                    **summary,
                )
            all_ready.cancel()
            await supervise
            code = await self._stop_workers(signals.hurry)
            await runner.cleanup()
            log.info("stopped")
            return code
        finally:
            for number in list(self._links):
                self._forget(number)
            await cancel_all(tasks)
            if store is not None:
                await store.close()
            shutil.rmtree(metrics_dir, ignore_errors=True)

    async def _spawn(self, number: int, environ: dict[str, str]) -> None:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        with theirs:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway",
                "serve",
                *(["--config", str(self.config)] if self.config is not None else []),
                "--log-format",
                self.log_format,
                "--worker",
                str(number),
                "--link-fd",
                str(theirs.fileno()),
                env=environ,
                pass_fds=(theirs.fileno(),),
                # Its own session (uvloop has no process_group): a terminal's Ctrl-C
                # reaches the supervisor only, which passes it on once; a worker that got
                # it from both would take the first Ctrl-C as two and skip the drain delay.
                start_new_session=True,
            )
        log.info("worker_spawned", worker=number, pid=process.pid)
        self.workers[number] = process
        self._links[number] = ours
        self._awaiting[number] = asyncio.create_task(self._await_ready(process.pid, ours))

    async def _await_ready(self, pid: int, link: socket.socket) -> None:
        """Count the worker up when it reports that it listens (its end closes if it
        exits first, and nothing changes)."""
        if await asyncio.get_running_loop().sock_recv(link, 1) == LINK_READY:
            self._ready.add(pid)
            self._count_down()
            if not self.lifecycle.workers_down:
                self._all_ready.set()

    def _forget(self, number: int) -> None:
        """Let go of an exited worker's link; it counts as down again if it was up."""
        self._awaiting.pop(number).cancel()
        self._links.pop(number).close()
        self._ready.discard(self.workers[number].pid)
        self._count_down()

    def _count_down(self) -> None:
        """/readyz's count of workers down: those not (or no longer) listening."""
        self.lifecycle.workers_down = self.settings.server.workers - len(self._ready)

    def _reload(self, secrets: Mapping[str, SecretStore]) -> None:
        for store in secrets.values():
            store.refresh(force=True)
        self._signal_workers(signal.SIGHUP)

    def _signal_workers(self, sig: signal.Signals) -> None:
        for process in self.workers.values():
            if process.returncode is None:
                process.send_signal(sig)

    async def _supervise(
        self, environ: dict[str, str], metrics_dir: str, stopping: asyncio.Event
    ) -> None:
        """Restart a worker that exits on its own, until asked to stop."""
        stop = asyncio.create_task(stopping.wait())
        while not stopping.is_set():
            waits = {asyncio.create_task(p.wait()): n for n, p in self.workers.items()}
            done, _ = await asyncio.wait({stop, *waits}, return_when=asyncio.FIRST_COMPLETED)
            for task in waits:
                task.cancel()
            if stopping.is_set():
                break
            for task in done:
                number = waits[task]
                process = self.workers[number]
                log.error("worker_exited", worker=number, pid=process.pid, code=process.returncode)
                mark_process_dead(process.pid, metrics_dir)  # type: ignore[no-untyped-call]
                self._forget(number)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), RESTART_DELAY_S)
                if stopping.is_set():
                    break
                await self._spawn(number, environ)
        stop.cancel()

    async def _stop_workers(self, hurry: asyncio.Event) -> int:
        """Drain every worker (each runs its own drain); kill what outlives the deadline.

        A second signal (``hurry``) is passed on, so the workers skip their drain delay.
        """
        self.lifecycle.draining = True
        log.info("draining", workers=len(self.workers), hint=SKIP_DELAY_HINT)
        self._signal_workers(signal.SIGTERM)
        hurried = asyncio.create_task(hurry.wait())

        def pass_on(task: asyncio.Task[bool]) -> None:
            if not task.cancelled():
                self._signal_workers(signal.SIGTERM)

        hurried.add_done_callback(pass_on)
        server = self.settings.server
        deadline = server.drain_delay_s + server.drain_timeout_s + KILL_GRACE_S
        codes = []
        for process in self.workers.values():
            try:
                codes.append(await asyncio.wait_for(process.wait(), deadline))
            except TimeoutError:
                process.kill()
                codes.append(await process.wait())
        hurried.cancel()
        return 0 if all(code == 0 for code in codes) else 1
