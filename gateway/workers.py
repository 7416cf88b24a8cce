"""server.workers > 1: a supervisor process serving the admin listener, and N proxy workers.

Workers are fresh processes (``serve --worker N``), not forks: prometheus-client chooses
its multi-process storage at import time from PROMETHEUS_MULTIPROC_DIR, which must be set
before the worker starts. Each worker binds the proxy port with SO_REUSEPORT; the
supervisor's /metrics adds up every worker's counters from that directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from .admin import create_admin_app
from .app import Lifecycle
from .config import Settings
from .secret import SecretStore
from .server import (
    ShutdownSignals,
    bind,
    cancel_all,
    check_free,
    format_address,
    start_housekeeping,
)

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
RESTART_DELAY_S = 1.0
# Beyond the drain a worker is given this long before it is killed.
KILL_GRACE_S = 5.0

log = structlog.get_logger("aleacc_gateway")


class Supervisor:
    """Starts, watches, restarts and stops the worker processes."""

    def __init__(self, settings: Settings, config: Path, log_format: str) -> None:
        self.settings = settings
        self.config = config
        self.log_format = log_format
        self.lifecycle = Lifecycle()
        self.workers: dict[int, asyncio.subprocess.Process] = {}

    async def run(self, summary: dict[str, object]) -> int:
        """Serve until SIGTERM/SIGINT, then drain every worker; 0 if all left cleanly."""
        metrics_dir = tempfile.mkdtemp(prefix="aleacc-gateway-metrics-")
        secrets = SecretStore(self.settings.signing)  # only for /readyz here
        tasks = start_housekeeping(secrets, self.settings.signing.secret_poll_s)
        try:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=metrics_dir)  # type: ignore[no-untyped-call]
            admin = create_admin_app(secrets=secrets, registry=registry, lifecycle=self.lifecycle)
            runner = web.AppRunner(admin, access_log=None)
            await runner.setup()
            sock = bind(self.settings.server.admin_listen, setting="server.admin_listen")
            # Before any worker starts (each would fail to bind, again and again).
            check_free(self.settings.server.listen)
            await web.SockSite(runner, sock).start()
            environ = {**os.environ, METRICS_DIR_ENV: metrics_dir}
            for number in range(self.settings.server.workers):
                self.workers[number] = await self._spawn(number, environ)
            signals = ShutdownSignals(on_reload=lambda: self._reload(secrets))
            log.info(
                "started",
                proxy=str(self.settings.server.listen),
                admin=format_address(sock.getsockname()[:2]),
                workers=len(self.workers),
                **summary,
            )
            await self._supervise(environ, metrics_dir, signals.stop)
            code = await self._stop_workers(signals.hurry)
            await runner.cleanup()
            log.info("stopped")
            return code
        finally:
            await cancel_all(tasks)
            shutil.rmtree(metrics_dir, ignore_errors=True)

    async def _spawn(self, number: int, environ: dict[str, str]) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--config", str(self.config),
            "--log-format", self.log_format, "--worker", str(number),
            env=environ,
        )  # fmt: skip
        log.info("worker_spawned", worker=number, pid=process.pid)
        return process

    def _reload(self, secrets: SecretStore) -> None:
        secrets.refresh(force=True)
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
                self.lifecycle.workers_down += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), RESTART_DELAY_S)
                if stopping.is_set():
                    break
                self.workers[number] = await self._spawn(number, environ)
                self.lifecycle.workers_down -= 1
        stop.cancel()

    async def _stop_workers(self, hurry: asyncio.Event) -> int:
        """Drain every worker (each runs its own drain); kill what outlives the deadline.

        A second signal (``hurry``) is passed on, so the workers skip their drain delay.
        """
        self.lifecycle.draining = True
        log.info("draining", workers=len(self.workers))
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
