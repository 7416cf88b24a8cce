"""The tables of settings: each key with its converter, its default and its doc.

One dataclass per table, in the file's order; docs/configuration.md is written from
these declarations (describe.py), so a key's doc here is its reference.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_type_hints

from yarl import URL

from .. import signing
from ..client_ip import Network, parse_network
from ..forwarding import Route, base_path, host_header
from . import values
from .declare import Key, group, key, use
from .values import DEFAULT_TENANT, ListenAddress, Range, TlsSettings, parse_listen

MAX_RETRIES = 5
LOOPBACK = ("127.0.0.0/8", "::1/128")


_TLS_KEYS = {
    "tls_cert_file": (
        "cert_file",
        Key(
            values.path,
            "PEM certificate (a chain allowed): with `tls_key_file`, the proxy listener speaks "
            "TLS 1.2+ only; both files are re-read when they change",
        ),
    ),
    "tls_key_file": ("key_file", Key(values.path, "the certificate's unencrypted PEM private key")),
    "tls_client_ca_file": (
        "client_ca_file",
        Key(
            values.path,
            "PEM CA certificate(s): every client must present a certificate it issued (mTLS)",
        ),
    ),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSettings:
    """The gateway's two listeners, its processes and how it stops."""

    listen: ListenAddress = key(
        parse_listen,
        "the proxy's address, `host:port` or `[v6]:port`; loopback by default (sidecar); "
        "port 0 picks a free port (the `started` log line shows it)",
        parse_listen("127.0.0.1:8080"),
    )
    admin_listen: ListenAddress = key(
        parse_listen,
        "the admin address: `/healthz`, `/readyz`, `/metrics`, never proxied",
        parse_listen("127.0.0.1:9090"),
    )
    # Delay + timeout must fit in the pod's terminationGracePeriodSeconds (30 s by default).
    drain_delay_s: float = key(
        values.seconds_or_zero,
        "on SIGTERM, keep serving this long (unready) so endpoints can update",
        5.0,
    )
    drain_timeout_s: float = key(
        values.seconds, "then how long in-flight requests may take to finish", 20.0
    )
    workers: int = key(
        values.int_range(1, 64),
        "proxy processes sharing the port (SO_REUSEPORT); needs a fixed `listen` port",
        1,
    )
    tls: TlsSettings | None = group(TlsSettings, _TLS_KEYS, None)  # None: plain HTTP


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamSettings:
    """Aleacc: where it is, how long to wait for it, and how to reach it."""

    url: URL = key(
        values.upstream_url,
        "Aleacc's base URL, `http` or `https`, no query or credentials; its path is prefixed "
        "to every request's path. An `https` upstream's certificate and host name are "
        "verified against the system's CAs (`SSL_CERT_FILE` / `SSL_CERT_DIR` point elsewhere)",
    )
    connect_timeout_s: float = key(values.seconds, "TCP (and TLS) connect, per attempt", 5.0)
    timeout_s: float = key(
        values.seconds, "waiting for the response headers, and for each body read after that", 30.0
    )
    retries: int = key(
        values.int_range(0, MAX_RETRIES),
        "extra attempts, only when no connection could be made (nothing was sent); each "
        "attempt is signed afresh",
        1,
    )
    retry_backoff_s: float = key(values.seconds_or_zero, "pause before a retry", 0.1)
    max_connections: int = key(
        values.int_range(1, 65535),
        "connections to Aleacc at most, kept alive between requests; when all are busy a "
        "request waits up to `timeout_s` for one (then 504)",
        256,
    )
    # Shorter than common servers' keep-alive timeouts (Node 5 s, nginx 75 s): a pooled
    # connection the upstream closes first can fail the request that picks it up.
    idle_timeout_s: float = key(
        values.seconds,
        "close a kept-alive connection idle this long; keep it below Aleacc's own "
        "keep-alive timeout",
        4.0,
    )
    forward_proxy_headers: bool = key(
        values.boolean, "pass `X-Forwarded-For/-Host/-Proto` and `Forwarded` upstream", False
    )
    clock_skew_warning_s: float = key(
        values.seconds,
        "warn (once a minute at most) when Aleacc's `Date` differs from our clock by more",
        30.0,
    )
    proxy_url: URL | None = key(
        values.proxy_url,
        "reach Aleacc through this HTTP proxy, `http://host:port` only",
        None,
    )
    proxy_auth_file: Path | None = key(
        values.path,
        "a file holding `user:password` for the proxy (Basic), never in the URL or the "
        "logs; read at start",
        None,
    )
    proxy_from_env: bool = key(
        values.boolean,
        "instead of `proxy_url`: take the proxy from `https_proxy`/`HTTPS_PROXY` (or "
        "`http_proxy` for an `http` upstream) and honour `no_proxy`/`NO_PROXY`, as curl does",
        False,
    )

    @property
    def host_header(self) -> str:
        return host_header(self.url)

    @property
    def base_path(self) -> str:
        return base_path(self.url)


SCHEME_KEYS = {
    "fields": (
        "fields",
        Key(
            values.field_list,
            "the signed field expressions, in order (docs/signing.md)",
            "Aleacc's",
        ),
    ),
    "separator": (
        "separator",
        Key(values.string, 'put between field values; `""` concatenates them'),
    ),
    "secret_encoding": (
        "secret_encoding",
        Key(
            values.one_of(signing.SECRET_ENCODINGS),
            "how the secret becomes the HMAC key: `hex` (decoded), `utf-8` (its bytes as "
            "they are), `base64` (decoded)",
        ),
    ),
    "signature_encoding": (
        "signature_encoding",
        Key(
            values.one_of(signing.SIGNATURE_ENCODINGS),
            "`base64` (44 characters, padded) or `hex` (64 lower-case)",
        ),
    ),
    "timestamp_unit": (
        "timestamp_unit",
        Key(
            values.one_of(signing.TIMESTAMP_UNITS),
            "`s` or `ms`, in the header and the signed value",
        ),
    ),
    "request_id_format": (
        "request_id_format",
        Key(
            values.one_of(signing.REQUEST_ID_FORMATS),
            "the request id's form: `hex32` (32 lowercase hex characters), `decimal` (a "
            "random integer from 1 to 2^31 - 1), `uuid` (36 characters with dashes); see "
            "docs/signing.md for the odds of a repeat",
        ),
    ),
}


# The keys [signing] (the default tenant) and each [[tenants]] entry both have.
_API_ID = Key(values.api_id, "your Aleacc API id (printable ASCII, no `:` or spaces)")
_SECRET_FILE = Key(
    values.path,
    "where the secret is (Aleacc's: 64 hex characters), exactly one of this and "
    "`secret_env`; re-read when it changes; an empty, unreadable or undecodable new "
    "file keeps the last good secret; surrounding whitespace is stripped",
)
_SECRET_ENV = Key(
    values.env_name, "instead of `secret_file`: the environment variable holding the secret"
)
_RATE = Key(
    values.rate,
    "requests per second this tenant may send (a token bucket), answered 429 beyond it",
    "no limit",
)
_BURST = Key(
    values.int_range(1, 1_000_000),
    "how many requests may come at once above `rate_per_s` (the bucket's size)",
    "`rate_per_s`, at least 1",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class SigningSettings:
    """The default tenant's credential and the scheme; the scheme's defaults are Aleacc's own."""

    api_id: str | None = use(
        Key(_API_ID.convert, _API_ID.doc, "required without `[[tenants]]`"), None
    )
    secret_file: Path | None = use(_SECRET_FILE, None)
    secret_env: str | None = use(_SECRET_ENV, None)
    scheme: signing.Scheme = group(signing.Scheme, SCHEME_KEYS, signing.Scheme())
    secret_poll_s: float = key(
        values.seconds, "how often every tenant's secret file is checked for a change", 1.0
    )
    correct_clock_skew: bool = key(
        values.boolean,
        "sign with the local clock plus Aleacc's offset, the median of its last answers' "
        "`Date`, moved only while they agree (applied from 2 s, never beyond one day; "
        "docs/observability.md); `false`: the local clock",
        True,
    )
    rate_per_s: float | None = use(_RATE, None)
    burst: int | None = use(_BURST, None)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientIpSettings:
    """How `X-Client-Ip` is derived from the peer and `X-Forwarded-For`."""

    trusted_proxies: tuple[Network, ...] = key(
        values.networks,
        "CIDRs of proxies whose `X-Forwarded-For` entries are believed",
        tuple(map(parse_network, LOOPBACK)),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessSettings:
    """Who may use the gateway, and for which routes."""

    allowed_clients: tuple[Network, ...] = key(
        values.networks,
        "CIDRs of peers allowed to use the gateway: others get a 403 as soon as they "
        "connect, before any byte is read, and are closed",
        tuple(map(parse_network, LOOPBACK)),
    )
    routes: tuple[Route, ...] | None = key(
        values.routes,
        'an allowlist like `["POST /player/*", "GET /player/balance"]` (method or `*`, path '
        "pattern with `*`), matched on the decoded path with `//` collapsed, never the query; "
        "others get 404 and are never signed",
        None,
        shown="every route",
    )
    allowed_client_names: frozenset[str] | None = key(
        values.names,
        "with `server.tls_client_ca_file`: the client certificate identities allowed (DNS or "
        "URI SANs such as SPIFFE ids, or the subject's CN when there is no SAN); checked "
        "together with `allowed_clients`; others get a 403",
        None,
        shown="any the CA issued",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsSettings:
    """Sizes, deadlines and rate limits on the callers' side, and where the buckets are kept."""

    max_body_bytes: int = key(
        values.int_range(0, 1 << 30),
        "larger request bodies get 413, also when chunked",
        1024 * 1024,
    )
    max_connections: int = key(
        values.int_range(1, 1 << 20), "open client connections; more get 503 and are closed", 1024
    )
    header_timeout_s: float = key(
        values.seconds,
        "a request's headers must arrive within this from their first byte (408)",
        10.0,
    )
    body_timeout_s: float = key(
        values.seconds, "a request's body must arrive within this (408)", 30.0
    )
    # Below Node's and nginx's keep-alive defaults, above a browser's think time between
    # pooled requests.
    idle_timeout_s: float = key(
        values.seconds,
        "a connection that sends nothing for this long, from accept or after an answer, is "
        "closed (also the rest of a request pipelined behind one that was answered)",
        5.0,
    )
    # So a reader that never reads cannot hold a connection, a task or an upstream connection.
    send_timeout_s: float = key(
        values.seconds,
        "a caller that takes no bytes of an answer for this long is cut (and, for a streamed "
        "answer, the upstream connection closed)",
        30.0,
    )
    player_rate_per_s: float | None = key(
        values.rate,
        "requests per second one client IP (`X-Client-Ip` as derived) may send, per tenant; "
        "answered 429 beyond it",
        None,
        shown="no limit",
    )
    player_burst: int | None = use(
        Key(_BURST.convert, "the player bucket's size", "`player_rate_per_s`, at least 1"), None
    )
    store_url: str | None = key(
        values.store_url,
        "keep every bucket in this Redis, one for the whole fleet (every worker and gateway "
        "pointing at it): `redis://host:6379/0`, `rediss://` (TLS) or `unix:///path.sock`; "
        "a user name may be in it, never a password (docs/tenants.md)",
        None,
        shown="each process its own",
    )
    store_password_file: Path | None = key(
        values.path, "a file holding the store's password; read at start", None
    )
    store_password_env: str | None = key(
        values.env_name, "instead of `store_password_file`: the variable holding it", None
    )
    store_ca_file: Path | None = key(
        values.path,
        "PEM CA certificate(s) a `rediss://` store's certificate is verified against",
        None,
        shown="the system's CAs",
    )
    store_timeout_ms: int = key(
        values.int_range(1, 10_000),
        "how long a request may wait for the store (connecting included); then "
        "`on_store_error` applies",
        50,
    )
    store_key_prefix: str = key(
        values.key_prefix,
        "the start of every key in the store: `<prefix>:tenant:<name>`, "
        "`<prefix>:player:<name>:<keyed hash of the client IP>`",
        "aleacc-gateway",
    )
    on_store_error: str = key(
        values.one_of(("allow", "refuse")),
        "when the store cannot answer in time: `allow` the request (counted in "
        "`aleacc_gateway_rate_limit_store_errors_total`) or `refuse` it (503 "
        "`rate_limit_store_unavailable`); while the store is down it is not waited on",
        "allow",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggingSettings:
    """What the log explains beyond one line per request."""

    explain_rejections_every_s: float = key(
        values.seconds_or_zero,
        "on an upstream 401 or 403, an `upstream_rejected` event with what was signed and the "
        "likeliest cause, at most once per status and path this often; 0: never",
        10.0,
    )
    explain_rejections_per_s: float = key(
        values.rate,
        "at most this many `upstream_rejected` events a second for every path and tenant "
        "together (a worker its share); the others are counted in "
        "`aleacc_gateway_rejections_suppressed_total` and summed up in one "
        "`upstream_rejections_suppressed` event a second while there are any",
        5.0,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class TracingSettings:
    """OpenTelemetry traces, exported over OTLP/HTTP (needs the `otel` extra)."""

    otlp_endpoint: URL | None = key(
        values.collector_url,
        "the collector's OTLP/HTTP base URL, like `http://otel-collector:4318` (spans go "
        "to `/v1/traces`); unset: no tracing, and nothing of it is loaded",
        None,
        shown="none (off)",
    )
    sample_ratio: float = key(
        Range(0, 1),
        "the share of traces started here that are recorded; a caller's "
        "`traceparent` decides for its own trace (parent-based)",
        0.1,
    )
    service_name: str = key(values.service_name, "`service.name` of the spans", "aleacc-gateway")


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantSettings:
    """One more brand: its credential, how its requests are recognised, and its limits."""

    name: str = key(
        values.tenant_name,
        "`a-z`, `0-9` and `-`, unique; the `tenant` label in metrics and logs "
        "(`default` is `[signing]`'s)",
    )
    api_id: str = use(_API_ID)
    secret_file: Path | None = use(_SECRET_FILE, None)
    secret_env: str | None = use(_SECRET_ENV, None)
    listen: ListenAddress | None = key(
        parse_listen,
        "its own proxy listener: every request arriving there is this tenant's",
        None,
    )
    hosts: frozenset[str] | None = key(
        values.hosts,
        "on `server.listen`: the `Host` values that choose it (case, port and one trailing "
        "dot ignored); pair with `allowed_clients` or `client_names`, as a `Host` is the "
        "caller's to write",
        None,
    )
    client_names: frozenset[str] | None = key(
        values.names,
        "on `server.listen`: the client certificate identities that choose it (with "
        "`server.tls_client_ca_file`); when set, a request this tenant's by listener or "
        "`Host` must also present one of them",
        None,
    )
    allowed_clients: tuple[Network, ...] | None = key(
        values.networks,
        "CIDRs of the peers that may use this tenant, within `access.allowed_clients`; "
        "others get 403",
        None,
        shown="`access.allowed_clients`",
    )
    upstream_url: URL | None = key(
        values.upstream_url, "its Aleacc base URL, as `upstream.url`", None, shown="`upstream.url`"
    )
    scheme: signing.Scheme = group(signing.Scheme, SCHEME_KEYS, signing.Scheme())
    rate_per_s: float | None = use(_RATE, None)
    burst: int | None = use(_BURST, None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything the gateway needs, validated: one field per table."""

    server: ServerSettings = field(default_factory=ServerSettings)
    upstream: UpstreamSettings
    signing: SigningSettings
    client_ip: ClientIpSettings = field(default_factory=ClientIpSettings)
    access: AccessSettings = field(default_factory=AccessSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)
    tenants: tuple[TenantSettings, ...] = ()  # [[tenants]], [signing]'s scheme filled in

    @property
    def default_tenant(self) -> TenantSettings | None:
        """[signing]'s credential as a tenant (None when it has no api_id)."""
        sign = self.signing
        if sign.api_id is None:
            return None
        return TenantSettings(
            name=DEFAULT_TENANT,
            api_id=sign.api_id,
            secret_file=sign.secret_file,
            secret_env=sign.secret_env,
            scheme=sign.scheme,
            rate_per_s=sign.rate_per_s,
            burst=sign.burst,
        )

    @property
    def every_tenant(self) -> tuple[TenantSettings, ...]:
        """The default tenant (if any) first, then [[tenants]] in the file's order."""
        default = self.default_tenant
        return ((default,) if default else ()) + self.tenants

    def tenant(self, name: str) -> TenantSettings:
        """The tenant called ``name``; KeyError naming the ones there are."""
        for tenant in self.every_tenant:
            if tenant.name == name:
                return tenant
        names = ", ".join(t.name for t in self.every_tenant) or "none"
        raise KeyError(f"no tenant {name!r} (there are: {names})")

    def table_of(self, tenant: TenantSettings) -> str:
        """Where ``tenant`` is in the file, for messages: ``signing`` or ``tenants[i]``."""
        if tenant.name == DEFAULT_TENANT:
            return "signing"
        return f"tenants[{[t.name for t in self.tenants].index(tenant.name)}]"

    @property
    def listeners(self) -> list[tuple[str, ListenAddress]]:
        """Every listener: its setting and its address."""
        own = [(f"{self.table_of(t)}.listen", t.listen) for t in self.tenants if t.listen]
        return [
            ("server.listen", self.server.listen),
            ("server.admin_listen", self.server.admin_listen),
            *own,
        ]

    def upstream_of(self, tenant: TenantSettings) -> URL:
        """The Aleacc base URL ``tenant``'s requests go to."""
        return tenant.upstream_url or self.upstream.url


def tables() -> list[tuple[str, type]]:
    """Each table's name and its settings class, in the file's order."""
    hints = get_type_hints(Settings)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(Settings) if f.name != "tenants"]
