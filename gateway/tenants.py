"""Several brands in one gateway: what each tenant holds at run time, and whose a
request is.

A request is the tenant's of the listener it arrived on; on the shared listener
(``server.listen``) it is the tenant's whose ``hosts`` hold its Host, else whose
``client_names`` hold its certificate's name, else the default tenant's ([signing]);
else nobody's, and it is refused (421). Being chosen is not being admitted: a tenant's
``allowed_clients`` and ``client_names``, when set, must also hold the peer and its
certificate, so a frontend of brand A cannot have a request signed as brand B by writing
B's Host. With a single tenant none of this runs: every request is the default tenant's.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import request_ids, signing
from .client_ip import NetworkSet, parse_address
from .config import DEFAULT_TENANT, Settings, TenantSettings
from .egress import EgressProxy, dialer
from .errors import ClientNotAllowed, RateLimited, TenantUnknown
from .forwarding import base_path, host_header, host_name
from .metrics import RequestCounts
from .pool import Pool
from .ratelimit import PlayerBuckets, TokenBucket, worker_share
from .ratelimit_store import SharedBuckets, bucket
from .rejections import RejectionCap, RejectionLog
from .secret import SecretStore
from .tls import name_allowed

if TYPE_CHECKING:
    from .redis_store import LimitStore


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where a tenant's requests go; tenants with the same upstream URL share it."""

    pool: Pool
    scheme: str
    host: str  # the Host header sent, and signed as ``host``
    host_line: bytes
    base_path: str


class Tenant:
    """One credential with its compiled scheme, its upstream and its limits."""

    __slots__ = (
        "_credentials",
        "allowed",
        "api_id",
        "client_names",
        "guarded",
        "name",
        "new_request_id",
        "plan",
        "players",
        "rate",
        "rejections",
        "secret",
        "settings",
        "shared",
        "upstream",
    )

    def __init__(
        self,
        settings: TenantSettings,
        upstream: Upstream,
        secret: SecretStore,
        *,
        players: tuple[float, int | None] | None,
        explain_every_s: float,
        rejections: RejectionCap,
        share: int,
        now: float,
        store: LimitStore | None = None,
    ) -> None:
        """``players``: the rate and bucket size per client IP; ``share``: how many
        processes split the rates (server.workers), each taking 1/share of them;
        ``rejections``: the cap on explanations every tenant shares; ``store``: the buckets
        are kept there instead, whole, for the whole fleet."""
        self.settings = settings
        self.name = settings.name
        self.api_id = settings.api_id
        self.upstream = upstream
        self.secret = secret  # .current: the decoded key, once loaded
        # Compiled once: the request path runs the plan, never re-parses the scheme.
        self.plan = signing.compile_scheme(settings.scheme)
        self.new_request_id = request_ids.MAKERS[settings.scheme.request_id_format]
        self._credentials: signing.Credentials | None = None
        self.allowed = (
            NetworkSet(settings.allowed_clients) if settings.allowed_clients is not None else None
        )
        self.client_names = settings.client_names
        limited = settings.rate_per_s is not None or players is not None
        # In the store (one round trip, awaited by the proxy), else in this process.
        self.shared = (
            SharedBuckets(
                store,
                self.name,
                secret,
                bucket(settings.rate_per_s, settings.burst),
                bucket(*players) if players is not None else None,
            )
            if store is not None and limited
            else None
        )
        local = store is None
        self.rate = (
            TokenBucket(*worker_share(settings.rate_per_s, settings.burst, share), now)
            if settings.rate_per_s is not None and local
            else None
        )
        self.players = (
            PlayerBuckets(*worker_share(*players, share)) if players is not None and local else None
        )
        # One attribute the request path tests: is there anything to check before the body?
        self.guarded = any(
            x is not None
            for x in (self.allowed, self.client_names, self.rate, self.players, self.shared)
        )
        self.rejections = (
            RejectionLog(
                self.plan,
                explain_every_s,
                lambda: secret.rotated_at,
                rejections,
                tenant=self.name,
                api_id=self.api_id,
            )
            if explain_every_s
            else None
        )

    def credentials(self) -> signing.Credentials | None:
        """The api_id with the current key; None while no secret is loaded."""
        secret = self.secret.current
        if secret is None:
            return None
        credentials = self._credentials
        if credentials is None or credentials.key is not secret:  # made again on a new secret
            credentials = self._credentials = signing.Credentials(self.api_id, secret)
        return credentials

    def admit(self, peer: str | None, names: tuple[str, ...], client_ip: str, now: float) -> None:
        """Raise ClientNotAllowed for a peer or certificate this tenant does not allow,
        RateLimited when its bucket (or the client IP's) is empty."""
        if self.allowed is not None:
            address = parse_address(peer) if peer else None
            if address is None or address not in self.allowed:
                raise ClientNotAllowed()
        if self.client_names is not None and not name_allowed(names, self.client_names):
            raise ClientNotAllowed()
        # The player's bucket first: a refused player takes nothing from the tenant's.
        if self.players is not None:
            wait = self.players.take(client_ip, now)
            if wait:
                raise RateLimited("player", wait)
        if self.rate is not None:
            wait = self.rate.take(now)
            if wait:
                raise RateLimited("tenant", wait)


class Tenants:
    """Every tenant by name, the upstreams they send to (a pool per distinct URL), and
    the claims that choose them on the shared listener."""

    def __init__(
        self,
        settings: Settings,
        secrets: Mapping[str, SecretStore],
        *,
        egress: EgressProxy | None,
        share: int,
        counts: RequestCounts,
        store: LimitStore | None = None,
    ) -> None:
        """``secrets``: each tenant's, by name; ``share``: how many worker processes split
        the rate limits (and the cap on explained rejections); ``counts``: where what the
        cap leaves out is counted; ``store``: where the buckets are kept, when not in the
        process."""
        upstream = settings.upstream
        self.upstreams: dict[str, Upstream] = {}
        for url in [upstream.url, *map(settings.upstream_of, settings.every_tenant)]:
            if str(url) not in self.upstreams:
                pool = Pool(
                    dialer(url, egress, upstream.connect_timeout_s),
                    max_connections=upstream.max_connections,
                    timeout_s=upstream.timeout_s,
                    idle_timeout_s=upstream.idle_timeout_s,
                )
                host = host_header(url)
                self.upstreams[str(url)] = Upstream(
                    pool, url.scheme, host, b"Host: " + signing.wire_bytes(host), base_path(url)
                )
        limits = settings.limits
        players = (
            (limits.player_rate_per_s, limits.player_burst)
            if limits.player_rate_per_s is not None
            else None
        )
        now = time.monotonic()
        self.rejections = RejectionCap(
            *worker_share(settings.logging.explain_rejections_per_s, None, share), counts
        )
        self.by_name = {
            t.name: Tenant(
                t,
                self.upstreams[str(settings.upstream_of(t))],
                secrets[t.name],
                players=players,
                explain_every_s=settings.logging.explain_rejections_every_s,
                rejections=self.rejections,
                share=share,
                now=now,
                store=store,
            )
            for t in settings.every_tenant
        }
        self.default = self.by_name.get(DEFAULT_TENANT)
        # The one tenant every request is, when there is no other: nothing to choose.
        self.only = self.default if len(self.by_name) == 1 else None
        self._by_host = {
            host: self.by_name[t.name] for t in settings.tenants for host in t.hosts or ()
        }
        self._by_client_name = {
            name: self.by_name[t.name] for t in settings.tenants for name in t.client_names or ()
        }

    def choose(self, listener: str | None, host: str | None, names: tuple[str, ...]) -> Tenant:
        """The tenant of a request: by its listener, Host, certificate name, or the
        default; TenantUnknown if none."""
        if listener is not None:
            return self.by_name[listener]
        tenant = self._by_host.get(host_name(host)) if host else None
        if tenant is None:
            tenant = next(
                (self._by_client_name[n] for n in names if n in self._by_client_name), None
            )
        if tenant is None:
            tenant = self.default
        if tenant is None:
            raise TenantUnknown()
        return tenant

    async def close(self) -> None:
        """Close every upstream's pool; say what the explanations' cap left out."""
        self.rejections.summarise()
        for upstream in self.upstreams.values():
            await upstream.pool.close()
