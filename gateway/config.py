"""Settings: each configuration key declared once, read by one walk that reports every problem.

A key is a dataclass field declared with ``key()``: its default, the converter that reads
its TOML value (raising ValueError with the message an operator sees), and a one-line doc.
A group (``group()``) is several keys of one table that make up one value (the signing
scheme, the listener's TLS files). ``parse_settings`` walks the declarations; rules that
join several keys are in ``validate``; ``reference`` writes docs/configuration.md from them.
No I/O beyond reading the TOML file: the secret itself is loaded by ``secret.py``.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from yarl import URL

from . import environment, signing
from .client_ip import Network, parse_network
from .toml_writer import toml_string

MAX_RETRIES = 5
DEFAULT_TENANT = "default"  # [signing]'s credential, in labels and logs
LOOPBACK = ("127.0.0.0/8", "::1/128")

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KEY = "aleacc_gateway.key"
_GROUP = "aleacc_gateway.group"


class ConfigError(Exception):
    """The configuration has problems; ``problems`` lists every one of them."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Key:
    """How one key's TOML value is read, and what it means."""

    convert: Callable[[Any], Any]
    doc: str
    shown: str | None = None  # the default as the reference shows it, where the value is unclear


@dataclass(frozen=True, slots=True)
class Group:
    """Keys of one table that together make one value: key name -> (field of ``of``, Key)."""

    of: type
    keys: Mapping[str, tuple[str, Key]]
    optional: bool  # the value is None unless one of its keys is set


def use(k: Key, default: Any = dataclasses.MISSING) -> Any:
    """A field for the key ``k``, declared once (several tables may use one)."""
    return field(default=default, metadata={_KEY: k})


def key(
    convert: Callable[[Any], Any],
    doc: str,
    default: Any = dataclasses.MISSING,
    shown: str | None = None,
) -> Any:
    """A configuration key: a field with ``default`` (none: required), read by ``convert``."""
    return use(Key(convert, doc, shown), default)


def group(of: type, keys: Mapping[str, tuple[str, Key]], default: Any) -> Any:
    """A field whose value ``of(...)`` is made from ``keys`` of the same table."""
    return field(default=default, metadata={_GROUP: Group(of, keys, optional=default is None)})


@dataclass(frozen=True, slots=True)
class Declared:
    """One key as the walk meets it."""

    table: str
    name: str
    key: Key
    default: Any  # dataclasses.MISSING: required
    kind: environment.Kind  # what its TOML value is

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING

    @property
    def variable(self) -> str:
        """The environment variable that sets it."""
        return environment.variable(self.table, self.name)


def declared_keys(section: type, table: str) -> Iterator[Declared]:
    """Every key of ``section`` (a settings dataclass), groups' keys in their place."""
    hints = get_type_hints(section)
    for f in dataclasses.fields(section):
        if _KEY in f.metadata:
            kind = environment.kind_of(hints[f.name])
            yield Declared(table, f.name, f.metadata[_KEY], f.default, kind)
        elif _GROUP in f.metadata:
            declaration: Group = f.metadata[_GROUP]
            defaults = {g.name: g.default for g in dataclasses.fields(declaration.of)}
            of_hints = get_type_hints(declaration.of)
            for name, (attribute, k) in declaration.keys.items():
                default = defaults[attribute]
                default = None if default is dataclasses.MISSING else default
                kind = environment.kind_of(of_hints[attribute])
                yield Declared(table, name, k, default, kind)


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """A host and port to bind."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """The address bound: ``localhost`` is bound as IPv4 (no ':' in it), 127.0.0.1."""
        return ipaddress.ip_address("127.0.0.1" if self.host == "localhost" else self.host)

    def overlaps(self, other: ListenAddress) -> bool:
        """Whether the two cannot both be bound: one port, and one address or a wildcard
        (0.0.0.0, ::) of its family. Port 0 is a fresh port each time. IPv6 listeners are
        bound IPv6 only (socket.create_server sets IPV6_V6ONLY), so :: and 0.0.0.0 on
        one port do not overlap."""
        if self.port == 0 or self.port != other.port or self.ip.version != other.ip.version:
            return False
        return self.ip == other.ip or self.ip.is_unspecified or other.ip.is_unspecified


@dataclass(frozen=True, slots=True)
class Route:
    """One allowed route: a method (or ``*``) and a path pattern (``*`` matches anything)."""

    method: str
    pattern: str

    def __str__(self) -> str:
        return f"{self.method} {self.pattern}"


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """TLS on the proxy listener: PEM files, re-read when they change."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None  # set: a client certificate from this CA is required

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.cert_file, self.key_file) + (
            (self.client_ca_file,) if self.client_ca_file else ()
        )


# ---------------------------------------------------------------- converters
# Each reads one TOML value or raises ValueError with the message an operator sees.


def parse_listen(value: Any) -> ListenAddress:
    """Parse ``host:port`` or ``[v6]:port``; raise ValueError naming what is wrong."""
    if not isinstance(value, str):
        raise ValueError("must be a string like '127.0.0.1:8080' or '[::1]:8080'")
    host, sep, port = value.rpartition(":")
    # Port 0 lets the OS pick a free port; the "started" log line reports the real one.
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{value!r} needs a port from 0 to 65535, like '127.0.0.1:8080'")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError(f"{value!r}: host must be an IP address or 'localhost'") from None
    return ListenAddress(host, int(port))


def _upstream_url(value: Any) -> URL:
    if not isinstance(value, str):
        raise ValueError("must be a string like 'https://aleacc.example.com/api'")
    try:
        url = URL(value, encoded=True)
    except ValueError:
        raise ValueError(f"{value!r} is not a URL") from None
    if url.scheme not in ("http", "https") or not url.raw_host:
        raise ValueError(f"{value!r} must be an absolute http:// or https:// URL")
    if url.raw_user or url.raw_password:
        raise ValueError("must not carry credentials")
    if url.raw_query_string or url.raw_fragment or "?" in value or "#" in value:
        raise ValueError("must not carry a query or fragment")
    try:
        url.port  # noqa: B018 - an out-of-range port raises here
    except ValueError:
        raise ValueError(f"{value!r} has an invalid port") from None
    return url


def _proxy_url(value: Any) -> URL:
    example = "like 'http://proxy.internal:3128'"
    if not isinstance(value, str):
        raise ValueError(f"must be a string {example}")
    try:
        url = URL(value, encoded=True)
        url.port  # noqa: B018 - an out-of-range port raises here
    except ValueError:
        raise ValueError(f"must be a URL {example}") from None
    if url.scheme != "http" or not url.raw_host:
        raise ValueError(f"must be an http:// URL {example}")
    if url.raw_user or url.raw_password:
        raise ValueError("must not carry credentials: put them in upstream.proxy_auth_file")
    if url.raw_path not in ("", "/") or url.raw_query_string or url.raw_fragment:
        raise ValueError(f"must be the proxy's address only, {example}")
    return url


@dataclass(frozen=True, slots=True)
class Range:
    """A converter for the numbers from ``low`` to ``high`` (more than ``low`` when
    ``above_low``). The one source of the message that refuses a value and of the
    reference page's text for the key, so that the two cannot disagree."""

    low: int
    high: int
    unit: str = ""  # what the number counts: "seconds"
    whole: bool = False
    above_low: bool = False

    def __str__(self) -> str:
        """What the key takes, as the reference page and a refusal say it."""
        kind = "a whole number" if self.whole else "a number"
        return f"{kind} of {self.unit} {self.bounds}" if self.unit else f"{kind} {self.bounds}"

    @property
    def bounds(self) -> str:
        """The range alone: ``from 1 to 64``, ``more than 0 and at most 3600``."""
        if self.above_low:
            return f"more than {self.low} and at most {self.high}"
        return f"from {self.low} to {self.high}"

    def __call__(self, value: Any) -> Any:
        """``value`` (an int, or a float unless ``whole``); ValueError saying the range."""
        kinds = int if self.whole else int | float
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ValueError(f"must be {self}")
        low_ok = value > self.low if self.above_low else value >= self.low
        # NaN fails every comparison; an int is compared as it is (TOML's have any length).
        if not low_ok or value > self.high:
            raise ValueError(f"{value} must be {self.bounds}")
        return value if self.whole else float(value)


_seconds = Range(0, 3600, "seconds", above_low=True)
_seconds_or_zero = Range(0, 3600, "seconds")
_rate = Range(0, 1_000_000, "requests per second", above_low=True)


def _int_range(low: int, high: int) -> Range:
    return Range(low, high, whole=True)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _path(value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty path")
    return Path(value)


def _env_name(value: Any) -> str:
    if not isinstance(value, str) or not _ENV_NAME.match(value):
        raise ValueError("must be an environment variable name like 'ALEACC_API_SECRET'")
    return value


def _api_id(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    if not value.isascii() or not value.isprintable() or ":" in value or " " in value:
        raise ValueError("must be printable ASCII without ':' or spaces")
    return value


def _names(value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError(
            'must be a non-empty list like ["frontend.casino.svc", "spiffe://casino/frontend"]'
        )
    return frozenset(value)


def host_name(value: str) -> str:
    """A Host header's name as tenants are matched on it: lower case, without a port or
    the root's trailing dot."""
    host = value.strip().lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    name, sep, port = host.rpartition(":")
    name = name if sep and port.isdigit() else host
    # "b.example." is b.example fully qualified (RFC 1034 §3.1): one host, one tenant.
    return name.removesuffix(".")


_HOST = re.compile(r"^(\[[0-9a-f:.]+\]|[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?)$")


def _hosts(value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError('must be a non-empty list like ["aleacc-brand-b.payments.svc"]')
    bad = [repr(v) for v in value if not _HOST.match(host_name(v))]
    if bad:
        raise ValueError(f"not a host name: {', '.join(bad)}")
    return frozenset(map(host_name, value))


_TENANT_NAME = re.compile(r"^[a-z0-9-]{1,63}$")


def _tenant_name(value: Any) -> str:
    if not isinstance(value, str) or not _TENANT_NAME.match(value):
        raise ValueError("must be 1 to 63 of a-z, 0-9 and '-', like 'brand-b'")
    if value == DEFAULT_TENANT:
        raise ValueError(f"{DEFAULT_TENANT!r} is [signing]'s name")
    return value


def _fields(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a non-empty list of field expressions")
    return tuple(value)


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _one_of(allowed: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"{value!r} must be one of {', '.join(map(repr, allowed))}")
        return str(value)

    return convert


STORE_SCHEMES = ("redis", "rediss", "unix")
_KEY_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def _store_url(value: Any) -> str:
    example = "like 'redis://redis.cache:6379/0' or 'unix:///run/redis/redis.sock'"
    if not isinstance(value, str):
        raise ValueError(f"must be a string {example}")
    try:
        url = URL(value, encoded=True)
        url.port  # noqa: B018 - an out-of-range port raises here
    except ValueError:
        raise ValueError(f"must be a URL {example}") from None
    if url.scheme not in STORE_SCHEMES:
        raise ValueError(f"must be a redis://, rediss:// or unix:// URL, {example}")
    # A password in the URL would be in the file, the environment and every log of it.
    if url.raw_password is not None or "password" in url.query:
        raise ValueError(
            "must not carry a password: put it in limits.store_password_file or "
            "limits.store_password_env"
        )
    if url.scheme == "unix" and url.raw_path in ("", "/"):
        raise ValueError(f"needs the socket's path, {example}")
    if url.scheme != "unix" and not url.raw_host:
        raise ValueError(f"needs a host, {example}")
    if url.scheme != "unix" and not re.fullmatch(r"/?\d*", url.raw_path):
        raise ValueError(f"the path can only be a database number, {example}")
    return value  # as written: yarl would shorten unix:///path to unix:/path


def _key_prefix(value: Any) -> str:
    if not isinstance(value, str) or not _KEY_PREFIX.match(value):
        raise ValueError("must be 1 to 64 of A-Z, a-z, 0-9, '_', '.', ':' and '-'")
    return value


_ROUTE = re.compile(r"^(\*|[A-Z]+) (/[\x21-\x7e]*)$")


def _routes(value: Any) -> tuple[Route, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError('must be a list like ["POST /player/*", "GET /player/balance"]')
    bad = [repr(v) for v in value if not _ROUTE.match(v)]
    if bad:
        raise ValueError(f"expected 'METHOD /path' (METHOD may be *): {', '.join(bad)}")
    return tuple(Route(*v.split(" ", 1)) for v in value)


def _networks(value: Any) -> tuple[Network, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a list of CIDR strings like '10.0.0.0/8'")
    networks, bad = [], []
    for text in value:
        try:
            networks.append(parse_network(text))
        except ValueError:
            bad.append(repr(text))
    if bad:
        raise ValueError(f"invalid CIDR {', '.join(bad)}")
    return tuple(networks)


# ---------------------------------------------------------------- the keys, table by table

_TLS_KEYS = {
    "tls_cert_file": (
        "cert_file",
        Key(
            _path,
            "PEM certificate (a chain allowed): with `tls_key_file`, the proxy listener speaks "
            "TLS 1.2+ only; both files are re-read when they change",
        ),
    ),
    "tls_key_file": ("key_file", Key(_path, "the certificate's unencrypted PEM private key")),
    "tls_client_ca_file": (
        "client_ca_file",
        Key(
            _path, "PEM CA certificate(s): every client must present a certificate it issued (mTLS)"
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
        _seconds_or_zero,
        "on SIGTERM, keep serving this long (unready) so endpoints can update",
        5.0,
    )
    drain_timeout_s: float = key(
        _seconds, "then how long in-flight requests may take to finish", 20.0
    )
    workers: int = key(
        _int_range(1, 64),
        "proxy processes sharing the port (SO_REUSEPORT); needs a fixed `listen` port",
        1,
    )
    tls: TlsSettings | None = group(TlsSettings, _TLS_KEYS, None)  # None: plain HTTP


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamSettings:
    """Aleacc: where it is, how long to wait for it, and how to reach it."""

    url: URL = key(
        _upstream_url,
        "Aleacc's base URL, `http` or `https`, no query or credentials; its path is prefixed "
        "to every request's path. An `https` upstream's certificate and host name are "
        "verified against the system's CAs (`SSL_CERT_FILE` / `SSL_CERT_DIR` point elsewhere)",
    )
    connect_timeout_s: float = key(_seconds, "TCP (and TLS) connect, per attempt", 5.0)
    timeout_s: float = key(
        _seconds, "waiting for the response headers, and for each body read after that", 30.0
    )
    retries: int = key(
        _int_range(0, MAX_RETRIES),
        "extra attempts, only when no connection could be made (nothing was sent); each "
        "attempt is signed afresh",
        1,
    )
    retry_backoff_s: float = key(_seconds_or_zero, "pause before a retry", 0.1)
    max_connections: int = key(
        _int_range(1, 65535),
        "connections to Aleacc at most, kept alive between requests; when all are busy a "
        "request waits up to `timeout_s` for one (then 504)",
        256,
    )
    # Shorter than common servers' keep-alive timeouts (Node 5 s, nginx 75 s): a pooled
    # connection the upstream closes first can fail the request that picks it up.
    idle_timeout_s: float = key(
        _seconds,
        "close a kept-alive connection idle this long; keep it below Aleacc's own "
        "keep-alive timeout",
        4.0,
    )
    forward_proxy_headers: bool = key(
        _bool, "pass `X-Forwarded-For/-Host/-Proto` and `Forwarded` upstream", False
    )
    clock_skew_warning_s: float = key(
        _seconds,
        "warn (once a minute at most) when Aleacc's `Date` differs from our clock by more",
        30.0,
    )
    proxy_url: URL | None = key(
        _proxy_url,
        "reach Aleacc through this HTTP proxy, `http://host:port` only",
        None,
    )
    proxy_auth_file: Path | None = key(
        _path,
        "a file holding `user:password` for the proxy (Basic), never in the URL or the "
        "logs; read at start",
        None,
    )
    proxy_from_env: bool = key(
        _bool,
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


def host_header(url: URL) -> str:
    """The Host header sent to ``url`` (and signed as ``host``)."""
    host = (url.raw_host or "").lower()
    if ":" in host:
        host = f"[{host}]"
    return host if url.is_default_port() else f"{host}:{url.port}"


def base_path(url: URL) -> str:
    """The URL's raw path without a trailing ``/`` ("" for the root)."""
    return url.raw_path.rstrip("/")


_SCHEME_KEYS = {
    "fields": (
        "fields",
        Key(_fields, "the signed field expressions, in order (docs/signing.md)", "Aleacc's"),
    ),
    "separator": (
        "separator",
        Key(_string, 'put between field values; `""` concatenates them'),
    ),
    "secret_encoding": (
        "secret_encoding",
        Key(
            _one_of(signing.SECRET_ENCODINGS),
            "how the secret becomes the HMAC key: `hex` (decoded), `utf-8` (its bytes as "
            "they are), `base64` (decoded)",
        ),
    ),
    "signature_encoding": (
        "signature_encoding",
        Key(
            _one_of(signing.SIGNATURE_ENCODINGS),
            "`base64` (44 characters, padded) or `hex` (64 lower-case)",
        ),
    ),
    "timestamp_unit": (
        "timestamp_unit",
        Key(_one_of(signing.TIMESTAMP_UNITS), "`s` or `ms`, in the header and the signed value"),
    ),
    "request_id_format": (
        "request_id_format",
        Key(
            _one_of(signing.REQUEST_ID_FORMATS),
            "the request id's form: `hex32` (32 lowercase hex characters), `decimal` (a "
            "random integer from 1 to 2^31 - 1), `uuid` (36 characters with dashes); see "
            "docs/signing.md for the odds of a repeat",
        ),
    ),
}


# The keys [signing] (the default tenant) and each [[tenants]] entry both have.
_API_ID = Key(_api_id, "your Aleacc API id (printable ASCII, no `:` or spaces)")
_SECRET_FILE = Key(
    _path,
    "where the secret is (Aleacc's: 64 hex characters), exactly one of this and "
    "`secret_env`; re-read when it changes; an empty, unreadable or undecodable new "
    "file keeps the last good secret; surrounding whitespace is stripped",
)
_SECRET_ENV = Key(
    _env_name, "instead of `secret_file`: the environment variable holding the secret"
)
_RATE = Key(
    _rate,
    "requests per second this tenant may send (a token bucket), answered 429 beyond it",
    "no limit",
)
_BURST = Key(
    _int_range(1, 1_000_000),
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
    scheme: signing.Scheme = group(signing.Scheme, _SCHEME_KEYS, signing.Scheme())
    secret_poll_s: float = key(
        _seconds, "how often every tenant's secret file is checked for a change", 1.0
    )
    correct_clock_skew: bool = key(
        _bool,
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
        _networks,
        "CIDRs of proxies whose `X-Forwarded-For` entries are believed",
        tuple(map(parse_network, LOOPBACK)),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessSettings:
    """Who may use the gateway, and for which routes."""

    allowed_clients: tuple[Network, ...] = key(
        _networks,
        "CIDRs of peers allowed to use the gateway: others get a 403 as soon as they "
        "connect, before any byte is read, and are closed",
        tuple(map(parse_network, LOOPBACK)),
    )
    routes: tuple[Route, ...] | None = key(
        _routes,
        'an allowlist like `["POST /player/*", "GET /player/balance"]` (method or `*`, path '
        "pattern with `*`), matched on the decoded path with `//` collapsed, never the query; "
        "others get 404 and are never signed",
        None,
        shown="every route",
    )
    allowed_client_names: frozenset[str] | None = key(
        _names,
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
        _int_range(0, 1 << 30), "larger request bodies get 413, also when chunked", 1024 * 1024
    )
    max_connections: int = key(
        _int_range(1, 1 << 20), "open client connections; more get 503 and are closed", 1024
    )
    header_timeout_s: float = key(
        _seconds, "a request's headers must arrive within this from their first byte (408)", 10.0
    )
    body_timeout_s: float = key(_seconds, "a request's body must arrive within this (408)", 30.0)
    # Below Node's and nginx's keep-alive defaults, above a browser's think time between
    # pooled requests.
    idle_timeout_s: float = key(
        _seconds,
        "a connection that sends nothing for this long, from accept or after an answer, is "
        "closed (also the rest of a request pipelined behind one that was answered)",
        5.0,
    )
    # So a reader that never reads cannot hold an upstream connection.
    send_timeout_s: float = key(
        _seconds,
        "a caller that takes no bytes of a streamed answer for this long is cut, and the "
        "upstream connection closed",
        30.0,
    )
    player_rate_per_s: float | None = key(
        _rate,
        "requests per second one client IP (`X-Client-Ip` as derived) may send, per tenant; "
        "answered 429 beyond it",
        None,
        shown="no limit",
    )
    player_burst: int | None = use(
        Key(_BURST.convert, "the player bucket's size", "`player_rate_per_s`, at least 1"), None
    )
    store_url: str | None = key(
        _store_url,
        "keep every bucket in this Redis, one for the whole fleet (every worker and gateway "
        "pointing at it): `redis://host:6379/0`, `rediss://` (TLS) or `unix:///path.sock`; "
        "a user name may be in it, never a password (docs/tenants.md)",
        None,
        shown="each process its own",
    )
    store_password_file: Path | None = key(
        _path, "a file holding the store's password; read at start", None
    )
    store_password_env: str | None = key(
        _env_name, "instead of `store_password_file`: the variable holding it", None
    )
    store_ca_file: Path | None = key(
        _path,
        "PEM CA certificate(s) a `rediss://` store's certificate is verified against",
        None,
        shown="the system's CAs",
    )
    store_timeout_ms: int = key(
        _int_range(1, 10_000),
        "how long a request may wait for the store (connecting included); then "
        "`on_store_error` applies",
        50,
    )
    store_key_prefix: str = key(
        _key_prefix,
        "the start of every key in the store: `<prefix>:tenant:<name>`, "
        "`<prefix>:player:<name>:<keyed hash of the client IP>`",
        "aleacc-gateway",
    )
    on_store_error: str = key(
        _one_of(("allow", "refuse")),
        "when the store cannot answer in time: `allow` the request (counted in "
        "`aleacc_gateway_rate_limit_store_errors_total`) or `refuse` it (503 "
        "`rate_limit_store_unavailable`); while the store is down it is not waited on",
        "allow",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggingSettings:
    """What the log explains beyond one line per request."""

    explain_rejections_every_s: float = key(
        _seconds_or_zero,
        "on an upstream 401 or 403, an `upstream_rejected` event with what was signed and the "
        "likeliest cause, at most once per status and path this often; 0: never",
        10.0,
    )
    explain_rejections_per_s: float = key(
        _rate,
        "at most this many `upstream_rejected` events a second for every path and tenant "
        "together (a worker its share); the others are counted in "
        "`aleacc_gateway_rejections_suppressed_total` and summed up in one "
        "`upstream_rejections_suppressed` event a second while there are any",
        5.0,
    )


def _collector_url(value: Any) -> URL:
    url = _upstream_url(value)
    if url.raw_path not in ("", "/"):
        raise ValueError(
            f"{value!r}: the collector's base URL, like 'http://otel-collector:4318' "
            "(/v1/traces is added)"
        )
    return url


def _service_name(value: Any) -> str:
    if not isinstance(value, str) or not value or not value.isprintable():
        raise ValueError("must be a non-empty printable string")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class TracingSettings:
    """OpenTelemetry traces, exported over OTLP/HTTP (needs the `otel` extra)."""

    otlp_endpoint: URL | None = key(
        _collector_url,
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
    service_name: str = key(_service_name, "`service.name` of the spans", "aleacc-gateway")


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantSettings:
    """One more brand: its credential, how its requests are recognised, and its limits."""

    name: str = key(
        _tenant_name,
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
        _hosts,
        "on `server.listen`: the `Host` values that choose it (case, port and one trailing "
        "dot ignored); pair with `allowed_clients` or `client_names`, as a `Host` is the "
        "caller's to write",
        None,
    )
    client_names: frozenset[str] | None = key(
        _names,
        "on `server.listen`: the client certificate identities that choose it (with "
        "`server.tls_client_ca_file`); when set, a request this tenant's by listener or "
        "`Host` must also present one of them",
        None,
    )
    allowed_clients: tuple[Network, ...] | None = key(
        _networks,
        "CIDRs of the peers that may use this tenant, within `access.allowed_clients`; "
        "others get 403",
        None,
        shown="`access.allowed_clients`",
    )
    upstream_url: URL | None = key(
        _upstream_url, "its Aleacc base URL, as `upstream.url`", None, shown="`upstream.url`"
    )
    scheme: signing.Scheme = group(signing.Scheme, _SCHEME_KEYS, signing.Scheme())
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


# ---------------------------------------------------------------- reading

# What the walk found: per table, the converted value of each key that is set.
Found = dict[str, dict[str, Any]]
# Where each key that is set came from, by "table.key": "file" or "environment VAR".
Origins = dict[str, str]


@dataclass(frozen=True, slots=True)
class Effective:
    """The settings, and where each value that is not a default came from."""

    settings: Settings
    origins: Origins


def load_settings(path: Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate a TOML file (None: none) with ``environ``'s ALEACC_GATEWAY_*
    variables over it; raise ConfigError listing every problem."""
    return read_settings(path, environ).settings


def read_settings(path: Path | None, environ: Mapping[str, str] | None = None) -> Effective:
    """As load_settings, with each value's origin."""
    return parse_config(_read_toml(path) if path is not None else {}, environ or {})


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror or exc})"]) from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: invalid TOML: {exc}"]) from None
    except RecursionError:  # tomllib recurses once per level of nested arrays or tables
        raise ConfigError([f"{path}: invalid TOML: nested too deeply"]) from None


def parse_settings(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """Validate parsed TOML (and ``environ``'s variables over it); raise ConfigError
    listing every problem."""
    return parse_config(data, environ or {}).settings


def parse_config(data: Mapping[str, Any], environ: Mapping[str, str]) -> Effective:
    """The one walk over the declarations: the file's tables and keys, each overridden by
    its environment variable, converted, then the rules that join keys."""
    found: Found = {}
    invalid: set[str] = set()  # "table.key" of every value its converter refused
    problems: list[str] = []
    origins: Origins = {}
    known = dict(tables())
    for table, value in data.items():
        if table == "tenants":
            continue  # an array of tables, read below
        if table not in known:
            spelt = {t: f"[{t}]" for t in known} | {"tenants": "[[tenants]]"}
            problems.append(f"[{table}]: unknown table{_did_you_mean(table, spelt)}")
        elif not isinstance(value, Mapping):
            problems.append(f"[{table}]: must be a table")
    overrides = _overrides(environ, data, problems, invalid)
    for table, section in known.items():
        raw = data.get(table, {})
        raw = dict(raw) if isinstance(raw, Mapping) else {}
        origins.update({f"{table}.{name}": "file" for name in raw})
        labels = {}
        for name, (variable, value) in overrides.get(table, {}).items():
            raw[name] = value
            origins[f"{table}.{name}"] = f"environment {variable}"
            labels[name] = f"{variable} ({table}.{name})"
        found[table] = _read(section, table, raw, problems, invalid, labels)
    tenants: list[dict[str, Any]] = []
    raw_tenants = data.get("tenants", [])
    if not isinstance(raw_tenants, list) or not all(isinstance(t, Mapping) for t in raw_tenants):
        problems.append("[[tenants]]: must be an array of tables")
    else:
        for i, raw in enumerate(raw_tenants):
            tenants.append(_read(TenantSettings, f"tenants[{i}]", raw, problems, invalid))
            origins.update({f"tenants[{i}].{name}": "file" for name in raw})
    problems += validate(found, invalid, tenants)
    if problems:
        raise ConfigError(problems)
    settings = Settings(
        **{table: _build(section, found[table]) for table, section in known.items()},
        tenants=tuple(
            _build(TenantSettings, _with_default_scheme(values, found["signing"]))
            for values in tenants
        ),
    )
    return Effective(settings, origins)


def _overrides(
    environ: Mapping[str, str], data: Mapping[str, Any], problems: list[str], invalid: set[str]
) -> dict[str, dict[str, tuple[str, Any]]]:
    """The ALEACC_GATEWAY_* variables in ``environ``: per table, key -> (variable, value
    as TOML would give it). A variable that names no key is a problem; one that a
    ``secret_env`` names holds a secret, not a setting."""
    declared = {d.variable: d for t, section in tables() for d in declared_keys(section, t)}
    secrets = {
        environ.get(environment.variable("signing", "secret_env")),
        environ.get(environment.variable("limits", "store_password_env")),
    }
    for table in [data.get("signing", {}), *data.get("tenants", [])]:
        if isinstance(table, Mapping):
            secrets.add(table.get("secret_env"))
    limits = data.get("limits", {})
    if isinstance(limits, Mapping):
        secrets.add(limits.get("store_password_env"))
    overrides: dict[str, dict[str, tuple[str, Any]]] = {}
    for variable in sorted(environ):
        if not variable.startswith(environment.PREFIX) or variable in secrets:
            continue
        d = declared.get(variable)
        if d is None:
            problems.append(_unknown_variable(variable, declared))
            continue
        try:
            value = environment.value_of(environ[variable], d.kind)
        except ValueError as exc:
            invalid.add(f"{d.table}.{d.name}")
            problems.append(f"{variable} ({d.table}.{d.name}): {exc}")
            continue
        overrides.setdefault(d.table, {})[d.name] = (variable, value)
    return overrides


def _unknown_variable(variable: str, declared: Mapping[str, Declared]) -> str:
    if variable.startswith(environment.PREFIX + "TENANTS"):
        return f"{variable}: [[tenants]] are set in the file only"
    # Compared without the prefix, which every variable shares.
    cut = len(environment.PREFIX)
    hint = _did_you_mean(variable[cut:], {v[cut:]: v for v in declared})
    return f"{variable}: no such setting{hint}"


def _did_you_mean(name: str, spelt: Mapping[str, str]) -> str:
    """`` (did you mean X?)`` for the name in ``spelt`` (name -> as it is written) close
    enough to ``name`` to be a typo of it; "" when none is."""
    close = difflib.get_close_matches(name, list(spelt), 1, 0.8)
    return f" (did you mean {spelt[close[0]]}?)" if close else ""


def _read(
    section: type,
    table: str,
    raw: Any,
    problems: list[str],
    invalid: set[str],
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The converted value of each key of ``section`` set in ``raw``, by name; each
    problem (a required key missing, a value refused, an unknown key) added to
    ``problems``, under its ``labels`` entry if it has one (a variable's name)."""
    raw = raw if isinstance(raw, Mapping) else {}
    values: dict[str, Any] = {}
    declared = {d.name: d for d in declared_keys(section, table)}
    for name, declaration in declared.items():
        if name not in raw:
            if declaration.required:
                where = "" if table.startswith("tenants") else f" (or {declaration.variable})"
                problems.append(f"{table}.{name}: required{where}")
            continue
        try:
            values[name] = declaration.key.convert(raw[name])
        except ValueError as exc:
            invalid.add(f"{table}.{name}")
            problems.append(f"{(labels or {}).get(name, f'{table}.{name}')}: {exc}")
    spelt = {name: name for name in declared}
    problems += [
        f"{table}.{name}: unknown key{_did_you_mean(name, spelt)}"
        for name in raw
        if name not in declared
    ]
    return values


def _with_default_scheme(tenant: Mapping[str, Any], sign: Mapping[str, Any]) -> dict[str, Any]:
    """A tenant's keys, with [signing]'s scheme keys where the tenant sets none of its own."""
    inherited = {name: sign[name] for name in _SCHEME_KEYS if name in sign}
    return {**inherited, **tenant}


def _build(section: type, values: Mapping[str, Any]) -> Any:
    """``section`` from the keys that are set; the declared defaults for the rest."""
    arguments: dict[str, Any] = {}
    for f in dataclasses.fields(section):
        if _KEY in f.metadata:
            if f.name in values:
                arguments[f.name] = values[f.name]
        elif _GROUP in f.metadata:
            declaration: Group = f.metadata[_GROUP]
            parts = _parts(declaration.keys, values)
            if parts or not declaration.optional:
                arguments[f.name] = declaration.of(**parts)
    return section(**arguments)


def _parts(keys: Mapping[str, tuple[str, Key]], values: Mapping[str, Any]) -> dict[str, Any]:
    """A group's arguments: its keys that are set, by field name."""
    return {attribute: values[name] for name, (attribute, _) in keys.items() if name in values}


def validate(found: Found, invalid: set[str], tenants: list[dict[str, Any]]) -> list[str]:
    """The rules that join several keys, over the values that were read.

    A rule whose key was refused by its converter stays quiet: that key has its problem.
    """
    problems = []
    server, upstream, sign = found["server"], found["upstream"], found["signing"]
    if "tls_cert_file" not in server and "tls_key_file" not in server:
        if "tls_client_ca_file" in server:
            problems.append(
                "server.tls_client_ca_file: needs server.tls_cert_file and tls_key_file"
            )
    elif ("tls_cert_file" in server) != ("tls_key_file" in server) and not invalid & {
        "server.tls_cert_file",
        "server.tls_key_file",
    }:
        problems.append("server: set both tls_cert_file and tls_key_file, or neither")
    if server.get("workers", 1) > 1 and server.get("listen", ServerSettings().listen).port == 0:
        problems.append("server.workers: more than one worker needs a fixed server.listen port")
    if "proxy_url" in upstream and upstream.get("proxy_from_env"):
        problems.append("upstream: set proxy_url or proxy_from_env, not both")
    elif "proxy_auth_file" in upstream and not (
        "proxy_url" in upstream or upstream.get("proxy_from_env")
    ):
        problems.append("upstream.proxy_auth_file: needs proxy_url or proxy_from_env")
    # [signing] is a credential unless [[tenants]] take its place.
    has_id = "api_id" in sign or "signing.api_id" in invalid
    if not tenants and not has_id:
        problems.append("signing.api_id: required (or [[tenants]] to sign as)")
    if has_id or not tenants:
        problems += _one_secret("signing", sign, invalid)
    elif "secret_file" in sign or "secret_env" in sign:
        problems.append("signing.api_id: required with a secret_file or secret_env")
    problems += _burst_needs_rate("signing", sign, "rate_per_s", "burst")
    problems += _burst_needs_rate("limits", found["limits"], "player_rate_per_s", "player_burst")
    problems += _store_problems(found["limits"], invalid)
    scheme = signing.Scheme(**_parts(_SCHEME_KEYS, sign))
    problems += [f"signing.fields: {problem}" for problem in signing.scheme_problems(scheme)]
    if "allowed_client_names" in found["access"] and "tls_client_ca_file" not in server:
        problems.append("access.allowed_client_names: needs server.tls_client_ca_file")
    problems += listener_clashes(_listeners(server, invalid, tenants))
    return problems + _tenant_problems(found, invalid, tenants)


def listener_clashes(listeners: list[tuple[str, ListenAddress]]) -> list[str]:
    """A problem for each listener (setting, address) that overlaps one before it."""
    problems = []
    for i, (setting, address) in enumerate(listeners):
        for earlier_setting, earlier in listeners[:i]:
            if not address.overlaps(earlier):
                continue
            if address.ip == earlier.ip:
                problems.append(f"{setting}: {str(address)!r} is also {earlier_setting}'s")
            else:
                wildcard = address if address.ip.is_unspecified else earlier
                problems.append(
                    f"{setting}: {str(address)!r} overlaps {earlier_setting}'s "
                    f"{str(earlier)!r}: {wildcard.host} takes port {address.port} on every "
                    f"IPv{address.ip.version} address"
                )
    return problems


def _listeners(
    server: Mapping[str, Any], invalid: set[str], tenants: list[dict[str, Any]]
) -> list[tuple[str, ListenAddress]]:
    """Every listener the settings give: (setting, address); a refused one left out."""
    listeners = [
        (f"server.{name}", server.get(name, getattr(ServerSettings(), name)))
        for name in ("listen", "admin_listen")
        if f"server.{name}" not in invalid
    ]
    return listeners + [
        (f"tenants[{i}].listen", tenant["listen"])
        for i, tenant in enumerate(tenants)
        if "listen" in tenant
    ]


def _one_secret(table: str, values: Mapping[str, Any], invalid: set[str]) -> list[str]:
    if ("secret_file" in values) != ("secret_env" in values) or invalid & {
        f"{table}.secret_file",
        f"{table}.secret_env",
    }:
        return []
    return [f"{table}: set exactly one of secret_file and secret_env"]


def _store_problems(limits: Mapping[str, Any], invalid: set[str]) -> list[str]:
    """The store's password has one source, and the store's keys need its URL."""
    if "store_url" not in limits:
        if "limits.store_url" in invalid:
            return []
        others = ("store_password_file", "store_password_env", "store_ca_file")
        return [f"limits.{name}: needs limits.store_url" for name in others if name in limits]
    problems = []
    if "store_password_file" in limits and "store_password_env" in limits:
        problems.append("limits: set store_password_file or store_password_env, not both")
    if "store_ca_file" in limits and not limits["store_url"].startswith("rediss:"):
        problems.append("limits.store_ca_file: needs a rediss:// store_url")
    return problems


def _burst_needs_rate(table: str, values: Mapping[str, Any], rate: str, burst: str) -> list[str]:
    return [f"{table}.{burst}: needs {rate}"] if burst in values and rate not in values else []


def _tenant_problems(found: Found, invalid: set[str], tenants: list[dict[str, Any]]) -> list[str]:
    """Each tenant's own rules, and the claims no two tenants may share."""
    problems: list[str] = []
    server = found["server"]
    workers = server.get("workers", 1)
    names: dict[str, str] = {}
    hosts: dict[str, str] = {}
    client_names: dict[str, str] = {}
    for i, tenant in enumerate(tenants):
        label = f"tenants[{i}]"
        problems += _one_secret(label, tenant, invalid)
        problems += _burst_needs_rate(label, tenant, "rate_per_s", "burst")
        if "name" in tenant:
            problems += _claim(names, [tenant["name"]], label, "name")
        if not {"listen", "hosts", "client_names"} & (tenant.keys() | _keys_of(invalid, label)):
            problems.append(f"{label}: set listen, hosts or client_names, or no request is its")
        if "listen" in tenant and tenant["listen"].port == 0 and workers > 1:
            problems.append(f"{label}.listen: more than one worker needs a fixed port")
        problems += _claim(hosts, sorted(tenant.get("hosts", ())), label, "hosts")
        if "client_names" in tenant:
            if "tls_client_ca_file" not in server:
                problems.append(f"{label}.client_names: needs server.tls_client_ca_file")
            problems += _claim(client_names, sorted(tenant["client_names"]), label, "client_names")
        if _SCHEME_KEYS.keys() & tenant.keys():
            scheme = signing.Scheme(
                **_parts(_SCHEME_KEYS, _with_default_scheme(tenant, found["signing"]))
            )
            problems += [f"{label}.fields: {p}" for p in signing.scheme_problems(scheme)]
    return problems


def _claim(claimed: dict[Any, str], values: list[Any], label: str, name: str) -> list[str]:
    """Claim each of ``values`` for ``label``; a problem for each one claimed before."""
    problems = []
    for value in values:
        owner = claimed.setdefault(value, f"{label}.{name}")
        if owner != f"{label}.{name}":
            problems.append(f"{label}.{name}: {str(value)!r} is also {owner}'s")
    return problems


def _keys_of(invalid: set[str], table: str) -> set[str]:
    """The keys of ``table`` whose values were refused."""
    return {k.partition(".")[2] for k in invalid if k.partition(".")[0] == table}


# ---------------------------------------------------------------- the reference page


def reference() -> str:
    """docs/configuration.md, written from the declarations (scripts/generate-docs)."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from gateway/config.py by scripts/generate-docs: edit the declarations",
        "     there, not this page. A test fails when the two differ. -->",
        "",
        "One TOML file, given to `serve` and `check-config` with `--config`. Unknown tables or",
        "keys and bad values stop the start-up, all reported at once, each with its key",
        "(`check-config` reports them without starting); a misspelt table or key is told the",
        "one it is closest to (`upstream.conect_timeout_s: unknown key (did you mean",
        "connect_timeout_s?)`). Examples: `config/sidecar.toml`, `config/standalone.toml`,",
        "`config/tenants.toml`, `config/demo.toml`.",
        "",
        "## From the environment",
        "",
        "Every key of the tables below can also be given as an environment variable,",
        "`ALEACC_GATEWAY_<TABLE>_<KEY>` in upper case: `ALEACC_GATEWAY_UPSTREAM_URL`,",
        "`ALEACC_GATEWAY_SERVER_WORKERS=4`, `ALEACC_GATEWAY_CLIENT_IP_TRUSTED_PROXIES`. A",
        "variable overrides the file; without `--config` the variables must give every",
        "required key. A list is comma-separated (`10.0.0.0/8,127.0.0.0/8`) or a JSON array",
        '(`["GET /player/*", "POST /player/signin"]`); a boolean is `true` or `false`; any',
        "other value is taken as written (a separator of a newline is a real newline, not",
        "`\\n`). Values are checked as the file's are, and a problem names the variable",
        "(`ALEACC_GATEWAY_SERVER_WORKERS (server.workers): 99 must be from 1 to 64`). An",
        "`ALEACC_GATEWAY_*` variable that names no key is a problem too, so a typo never goes",
        "unnoticed; a variable a `secret_env` names is the secret, not a setting.",
        "`[[tenants]]` are set in the file only. `check-config --show` prints the",
        "configuration in force as TOML with each value's origin (`file`, `environment",
        "VAR`, `default`) in a comment; the secret is never in it, only where it is read from.",
    ]
    for table, section in [*tables(), ("tenants", TenantSettings)]:
        heading = f"[[{table}]]" if section is TenantSettings else f"[{table}]"
        lines += ["", f"## {heading}", "", _first_line(section.__doc__), ""]
        if section is TenantSettings:
            lines += [
                "An array of tables, one per brand beyond `[signing]` (the default tenant);",
                "docs/tenants.md tells how a request's tenant is chosen. A scheme key not set",
                "here is `[signing]`'s.",
                "",
            ]
        lines += ["| key | default | meaning |", "|---|---|---|"]
        for d in declared_keys(section, table):
            default = "required" if d.required else d.key.shown or _shown(d.default)
            if section is TenantSettings and d.name in _SCHEME_KEYS:
                default = "`[signing]`'s"
            ranged = f"; {d.key.convert}" if isinstance(d.key.convert, Range) else ""
            lines.append(f"| `{d.name}` | {default} | {d.key.doc}{ranged} |")
    return "\n".join(lines) + "\n"


def effective_toml(effective: Effective) -> str:
    """The configuration in force as TOML, each value with its origin in a comment:
    ``file``, ``environment VAR``, ``[signing]`` (a tenant's scheme key) or ``default``.
    Keys without a value (none by default) are shown as comments. No secret is in the
    settings: only where each one is read from."""
    settings, origins = effective.settings, effective.origins
    lines: list[str] = []
    sections = [(f"[{t}]", t, getattr(settings, t), c) for t, c in tables()]
    sections += [
        ("[[tenants]]", f"tenants[{i}]", tenant, TenantSettings)
        for i, tenant in enumerate(settings.tenants)
    ]
    for heading, table, values, section in sections:
        lines += ["", heading] if lines else [heading]
        for d in declared_keys(section, table):
            origin = origins.get(f"{table}.{d.name}")
            if origin is None:
                inherited = section is TenantSettings and d.name in _SCHEME_KEYS
                origin = "[signing]" if inherited else "default"
            value = _value(values, d.name)
            if value is None:
                lines.append(f"# {d.name} is not set ({origin})")
            else:
                lines.append(f"{d.name} = {_toml(value)}  # {origin}")
    return "\n".join(lines) + "\n"


def _value(values: Any, name: str) -> Any:
    """Key ``name``'s value in a settings object (a group's keys inside their group)."""
    for f in dataclasses.fields(values):
        if _KEY in f.metadata and f.name == name:
            return getattr(values, name)
        if _GROUP in f.metadata and name in f.metadata[_GROUP].keys:
            part = getattr(values, f.name)
            attribute = f.metadata[_GROUP].keys[name][0]
            return None if part is None else getattr(part, attribute)
    raise KeyError(name)


def _toml(value: Any) -> str:
    """A converted value written back as TOML."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(map(_toml, value)) + "]"
    if isinstance(value, frozenset):
        return "[" + ", ".join(map(_toml, sorted(value, key=str))) + "]"
    return toml_string(str(value))


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0]


def _shown(value: Any) -> str:
    """A default as the reference shows it: as it would be written in the file."""
    if value is None:
        return "none"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"  # seconds as people write them: `5`, not `5.0`
    return f"`{_toml(value)}`"
