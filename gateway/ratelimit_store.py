"""The token buckets kept in Redis (``limits.store_url``): one bucket for the whole fleet.

Every worker, replica and sidecar that points at the same store and names a tenant alike
drains the same buckets, with the same arithmetic as ratelimit.py. A check is one Lua
script run with EVALSHA: atomic, one round trip, on the store's clock (TIME), so gateways
with skewed clocks agree. ``limits`` (the library) was considered first: its strategies
are fixed, moving and sliding windows, none a token bucket with a burst.

A request never waits longer than ``store_timeout_ms`` for the store. When it does not
answer, the store is taken as down: requests are let through or refused at once
(``on_store_error``), without trying it, while one task per process tries it again with
a growing, jittered pause (at most ``MAX_BACKOFF_S``), so a fleet does not reconnect in
step; the first answer brings the shared limits back.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import hmac
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from secrets import token_bytes
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
from .errors import RateLimited, RateLimitStoreUnavailable
from .metrics import Metrics, add
from .ratelimit import bucket_size
from .secret import SecretStore

log = structlog.get_logger("aleacc_gateway")

# KEYS: the player's bucket, the tenant's. ARGV: each one's rate a second and size (size
# 0: no such bucket). A bucket is a hash of its tokens and the store's time (µs) they were
# counted at; it expires when it would be full again, so an idle one costs nothing and a
# missing one is a full one. Numbers are written with string.format: Lua's own tostring
# keeps 14 digits, too few for a time in microseconds. Returns {0, 0} when a token was
# taken, else {1 (the player's) or 2 (the tenant's), microseconds until there is one}; a
# refused player takes nothing from the tenant's bucket.
SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local function take(key, rate, size)
  local held = redis.call('HMGET', key, 't', 's')
  local tokens = size
  if held[1] then
    local elapsed = math.max(0, now - tonumber(held[2]))
    tokens = math.min(size, tonumber(held[1]) + elapsed * rate / 1000000)
  end
  local wait = 0
  if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) / rate * 1000000) end
  redis.call('HSET', key, 't', string.format('%.17g', tokens), 's', string.format('%.0f', now))
  redis.call('PEXPIRE', key, math.ceil((size - tokens) / rate * 1000) + 1)
  return wait
end
for i = 1, 2 do
  local size = tonumber(ARGV[2 * i])
  if size > 0 then
    local wait = take(KEYS[i], tonumber(ARGV[2 * i - 1]), size)
    if wait > 0 then return {i, wait} end
  end
end
return {0, 0}
"""
# Redis names a script by its SHA-1 (EVALSHA): an identifier, not a digest anyone trusts.
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode(), usedforsecurity=False).hexdigest().encode()
SCOPES = ("player", "tenant")

# While the store is down, a process tries it again after this, doubled on each failure
# up to MAX_BACKOFF_S (and jittered): back within about a second of its return.
FIRST_BACKOFF_S = 0.05
MAX_BACKOFF_S = 1.0
# While up, an idle process still asks now and then, so /readyz and the gauge say the truth.
HEALTH_EVERY_S = 5.0
# Connections to the store per process at most: a check holds one for a round trip.
CONNECTIONS = 32
# What a player's key is made of, besides the tenant's secret (the HMAC key derived from it).
PLAYER_KEY_CONTEXT = b"aleacc-gateway rate-limit player key"


def _bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


class ScriptCall:
    """One tenant's EVALSHA of SCRIPT, packed in RESP once but for the player's key.

    Packing all nine arguments per request, through redis-py's command layers, was
    most of what a limited request cost the gateway (bench/README.md): only the
    player's key changes from one check to the next."""

    __slots__ = ("_head", "_tail", "tenant_only")

    def __init__(self, tenant_key: str, args: Sequence[float]) -> None:
        self._head = b"*9\r\n" + _bulk(b"EVALSHA") + _bulk(SCRIPT_SHA) + _bulk(b"2")
        self._tail = _bulk(tenant_key.encode()) + b"".join(_bulk(str(a).encode()) for a in args)
        self.tenant_only = self.with_player(tenant_key)

    def with_player(self, player_key: str) -> bytes:
        """The command over ``player_key``'s bucket and the tenant's."""
        return self._head + _bulk(player_key.encode()) + self._tail


class StoreConfigError(Exception):
    """The store's password cannot be read; the message is one line naming the setting."""


class StorePasswordMissing(StoreConfigError):
    """The password's file or variable is not there (yet)."""


def store_password(limits: LimitsSettings, environ: Mapping[str, str]) -> str | None:
    """The store's password from its file or variable (None: none configured)."""
    if limits.store_password_file is not None:
        path = limits.store_password_file
        try:
            if path.is_dir():
                raise StoreConfigError(f"limits.store_password_file {path}: is a directory")
            password = path.read_text().strip()
        except FileNotFoundError:
            raise StorePasswordMissing(f"limits.store_password_file {path}: not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not readable text"
            raise StoreConfigError(f"limits.store_password_file {path}: {reason}") from None
        where = "limits.store_password_file"
    elif limits.store_password_env is not None:
        name = limits.store_password_env
        if name not in environ:
            raise StorePasswordMissing(f"limits.store_password_env: {name} is not set")
        password, where = environ[name].strip(), f"limits.store_password_env ({name})"
    else:
        return None
    if not password:
        raise StoreConfigError(f"{where}: empty")
    return password


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


@dataclass(frozen=True, slots=True)
class Bucket:
    """A bucket's rate a second and size, as the script takes them."""

    rate: float
    size: int


def bucket(rate: float | None, burst: int | None) -> Bucket | None:
    """The bucket ``rate`` and ``burst`` make (None: no limit)."""
    return Bucket(rate, bucket_size(rate, burst)) if rate is not None else None


class SharedBuckets:
    """One tenant's buckets in the store: its own, and each client IP's.

    A player's key holds an HMAC of the client IP, never the address: the key is derived
    from the tenant's signing secret, which every gateway of the tenant has and the store
    never sees, so a dump of the store cannot be turned back into addresses. A rotated
    secret gives players fresh buckets once.
    """

    __slots__ = (
        "_call",
        "_hash_key",
        "_limits_players",
        "_secret",
        "_secrets",
        "_store",
        "player_prefix",
        "tenant_key",
    )

    def __init__(
        self,
        store: LimitStore,
        tenant: str,
        secrets: SecretStore,
        rate: Bucket | None,
        players: Bucket | None,
    ) -> None:
        self._store = store
        self._secrets = secrets
        self.tenant_key = f"{store.prefix}:tenant:{tenant}"
        self.player_prefix = f"{store.prefix}:player:{tenant}:"
        none = Bucket(1.0, 0)
        player, own = players or none, rate or none
        self._call = ScriptCall(self.tenant_key, [player.rate, player.size, own.rate, own.size])
        self._limits_players = players is not None
        # Until the tenant's secret is there (its requests fail to sign meanwhile): a key
        # of this process's own, so an address is never hashed with a key anyone knows.
        self._secret: bytes | None = None
        self._hash_key = token_bytes(32)

    def player_key(self, client_ip: str) -> str:
        """The key of ``client_ip``'s bucket: a keyed hash, never the address."""
        secret = self._secrets.current
        if secret is not None and secret is not self._secret:  # derived again on a new one
            self._secret = secret
            self._hash_key = hmac.digest(secret, PLAYER_KEY_CONTEXT, "sha256")
        digest = hmac.digest(self._hash_key, client_ip.encode(), "sha256")
        return self.player_prefix + digest[:16].hex()

    async def take(self, client_ip: str) -> None:
        """Take a token from the player's bucket, then the tenant's; RateLimited when one
        is empty, RateLimitStoreUnavailable when the store cannot say (and that refuses)."""
        if self._limits_players:
            command = self._call.with_player(self.player_key(client_ip))
        else:
            command = self._call.tenant_only
        scope, wait_us = await self._store.check(command)
        if scope:
            raise RateLimited(SCOPES[scope - 1], wait_us / 1_000_000)
