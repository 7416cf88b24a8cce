"""The client of the rate-limit store (``limits.store_url``): Redis, through redis-py.

Imported only when a store is configured (``ratelimit_store.open_store``, and
``check-config --probe-store``): a gateway without one never loads redis-py, nor what it
pulls in with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import random
import time
from typing import Any

import structlog
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    NoScriptError,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as StoreTimeout
from redis.retry import Retry

from .config import LimitsSettings
from .errors import RateLimitStoreUnavailable
from .metrics import Metrics, add
from .ratelimit_store import SCRIPT

log = structlog.get_logger("aleacc_gateway")

# While the store is down, a process tries it again after this, doubled on each failure
# up to MAX_BACKOFF_S (and jittered): back within about a second of its return.
FIRST_BACKOFF_S = 0.05
MAX_BACKOFF_S = 1.0
# While up, an idle process still asks now and then, so /readyz and the gauge say the truth.
HEALTH_EVERY_S = 5.0
# Connections to the store per process at most: a check holds one for a round trip.
CONNECTIONS = 32


def error_reason(exc: BaseException) -> str:
    """What went wrong talking to the store, as the metric's label says it."""
    if isinstance(exc, TimeoutError | StoreTimeout):
        return "timeout"
    if isinstance(exc, AuthenticationError | AuthorizationError) or (
        isinstance(exc, ResponseError) and str(exc).startswith(("NOAUTH", "WRONGPASS", "NOPERM"))
    ):
        return "auth"
    cause: BaseException | None = exc
    while cause is not None:  # redis-py wraps the socket's error in its own
        if isinstance(cause, OSError) and cause.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return "refused"
        cause = cause.__cause__ or cause.__context__
    if "Connection refused" in str(exc) or "No such file" in str(exc):
        return "refused"
    return "other"


class LimitStore:
    """The connection to the store, whether it is up, and the one way to check buckets."""

    def __init__(
        self, limits: LimitsSettings, password: str | None, metrics: Metrics | None = None
    ) -> None:
        """``metrics``: where errors, round trips and the state are counted (none: the
        supervisor's, which only reports the state in /readyz)."""
        assert limits.store_url is not None  # noqa: S101 - built only with a store
        self.url = limits.store_url  # never with a password (the config refuses one)
        self.timeout_s = limits.store_timeout_ms / 1000
        self.refuse = limits.on_store_error == "refuse"
        self.prefix = limits.store_key_prefix
        options: dict[str, Any] = {
            "password": password,
            # One attempt: the pause between tries is this module's, not the client's.
            "retry": Retry(NoBackoff(), 0),
            "socket_connect_timeout": max(self.timeout_s, 1.0),
        }
        if limits.store_ca_file is not None:
            options["ssl_ca_certs"] = str(limits.store_ca_file)
        # The client for the watch's PING and the probe. from_pool: closing the client
        # closes its connections too.
        self._client = Redis.from_pool(
            BlockingConnectionPool.from_url(
                limits.store_url, **options, socket_timeout=max(self.timeout_s, 1.0)
            )
        )
        # The checks' own connections, from the same URL: each check sends its packed
        # command on an idle one and reads the reply, past the client's per-command
        # layers (its pool's locks, retries, events). No socket timeout: every check is
        # bounded by store_timeout_ms already.
        self._factory = ConnectionPool.from_url(limits.store_url, **options, socket_timeout=None)
        self._idle: list[AbstractConnection] = []
        self._connections: list[AbstractConnection] = []
        self._slots = asyncio.Semaphore(CONNECTIONS)
        self._metrics = metrics
        self.up = True  # until it fails: the first request tries it
        self.reason: str | None = None  # why it is down
        self.since = time.time()  # when it went up or down
        self._backoff_s = FIRST_BACKOFF_S
        self._down = asyncio.Event()
        self._set_gauge()

    def state(self) -> dict[str, Any]:
        """The store's state as /readyz shows it."""
        state: dict[str, Any] = {"url": self.url, "state": "up" if self.up else "down"}
        if not self.up:
            state["reason"] = self.reason
        state["since"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since))
        return state

    async def check(self, command: bytes) -> tuple[int, int]:
        """Run the script (``command``, a ScriptCall's): (0, 0) when admitted, else
        (1 or 2, µs to wait). Raises RateLimitStoreUnavailable when refusing without the
        store, and answers (0, 0) when letting through without it."""
        if not self.up:
            return self._unchecked(self.reason or "other")
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout_s), self._slots:
                scope, wait = await self._run(command)
        except (RedisError, OSError, TimeoutError) as exc:
            self._observe(started)
            reason = error_reason(exc)
            self._went_down(reason)
            return self._unchecked(reason)
        self._observe(started)
        return int(scope), int(wait)

    async def _run(self, command: bytes) -> Any:
        """Send ``command`` on an idle connection (or a new one) and read its reply. A
        connection that fails mid-way is closed by redis-py and opened again on its next
        use."""
        connection = self._idle.pop() if self._idle else self._connection()
        try:
            if connection.is_connected and await connection.can_read():
                # An idle connection with data or EOF: the store closed it (a restart).
                # Opened afresh, as redis-py's own pool does, so the check still counts.
                await connection.disconnect()
            try:
                await connection.send_packed_command(command, check_health=False)
                return await connection.read_response()
            except NoScriptError:
                # The store lost its scripts (restarted, or SCRIPT FLUSH): load, ask again.
                await connection.send_command("SCRIPT", "LOAD", SCRIPT, check_health=False)
                await connection.read_response()
                await connection.send_packed_command(command, check_health=False)
                return await connection.read_response()
        except BaseException:
            # Timed out or cut mid-way, its reply may still be on its way: closed, so that
            # it is never read as the answer to the next check sent on this connection.
            await connection.disconnect(nowait=True)
            raise
        finally:
            self._idle.append(connection)

    def _connection(self) -> AbstractConnection:
        factory = self._factory
        connection = factory.connection_class(**factory.connection_kwargs)
        self._connections.append(connection)
        return connection

    def _observe(self, started: float) -> None:
        if self._metrics is not None:
            self._metrics.counts.store_duration.observe(time.perf_counter() - started)

    def _unchecked(self, reason: str) -> tuple[int, int]:
        if self._metrics is not None:
            add(self._metrics.counts.store_errors, reason)
        if self.refuse:
            raise RateLimitStoreUnavailable()
        return 0, 0

    def _went_down(self, reason: str) -> None:
        if self.up:
            self.up, self.reason, self.since = False, reason, time.time()
            log.error("rate_limit_store_down", store=self.url, reason=reason)
            self._set_gauge()
            self._down.set()
        else:
            self.reason = reason

    def _came_back(self) -> None:
        if not self.up:
            self.up, self.reason, self.since = True, None, time.time()
            log.info("rate_limit_store_up", store=self.url)
            self._set_gauge()
        self._backoff_s = FIRST_BACKOFF_S

    def _set_gauge(self) -> None:
        if self._metrics is not None and self._metrics.store_up is not None:
            self._metrics.store_up.set(1 if self.up else 0)

    async def watch(self) -> None:
        """Run for ever: ask the store at once, then now and then while it is up, and
        with a growing pause while it is down. Requests never wait on it while it is
        known down."""
        while True:
            try:
                async with asyncio.timeout(max(self.timeout_s, 0.5)):
                    await self._client.ping()
            except (RedisError, OSError, TimeoutError) as exc:
                self._went_down(error_reason(exc))
            else:
                self._came_back()
            if self.up:
                self._down.clear()
                # Woken early when a request sees it fail: then the pauses start.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._down.wait(), HEALTH_EVERY_S)
            if not self.up:
                # Jittered, so the fleet's processes do not all come knocking at once.
                await asyncio.sleep(self._backoff_s * random.uniform(0.5, 1.0))  # noqa: S311
                self._backoff_s = min(self._backoff_s * 2, MAX_BACKOFF_S)

    async def probe(self) -> tuple[str, float]:
        """Connect once: the server's version and one round trip's seconds (check-config).
        Raises what the client raised."""
        started = time.perf_counter()
        await self._client.ping()
        latency = time.perf_counter() - started
        try:
            info = await self._client.info("server")
            version = str(info.get("redis_version", "unknown"))
        except ResponseError:  # INFO not allowed to this user: the round trip says enough
            version = "unknown"
        return version, latency

    async def close(self) -> None:
        for connection in self._connections:
            await connection.disconnect()
        await self._client.aclose()
