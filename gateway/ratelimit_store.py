"""The token buckets kept in Redis (``limits.store_url``): one bucket for the whole fleet.

Every worker, replica and sidecar that points at the same store and names a tenant alike
drains the same buckets, with the same arithmetic as ratelimit.py. A check is one Lua
script run with EVALSHA: atomic, one round trip, on the store's clock (TIME), so gateways
with skewed clocks agree. ``limits`` (the library) was considered first: its strategies
are fixed, moving and sliding windows, none a token bucket with a burst.

A request never waits longer than ``store_timeout_ms`` for the store. When it does not
answer, the store is taken as down: requests are let through or refused at once
(``on_store_error``), without trying it, while one task per process tries it again with
a growing, jittered pause (at most ``redis_store.MAX_BACKOFF_S``), so a fleet does not reconnect in
step; the first answer brings the shared limits back.

This module needs no Redis client: the client (``redis_store``) is imported only when a
store is configured, so a gateway without one never loads it (nor what it pulls in).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from secrets import token_bytes
from typing import TYPE_CHECKING

from .config import LimitsSettings
from .errors import RateLimited
from .metrics import Metrics
from .ratelimit import bucket_size
from .secret import SecretStore

if TYPE_CHECKING:
    from .redis_store import LimitStore

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


def open_store(
    limits: LimitsSettings, password: str | None, metrics: Metrics | None = None
) -> LimitStore:
    """The client of ``limits.store_url`` (which must be set): loaded here, on first use."""
    from .redis_store import LimitStore

    return LimitStore(limits, password, metrics)


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
