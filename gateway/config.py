"""Settings: frozen typed data, named defaults, one loader that reports every problem.

No I/O beyond reading the TOML file: the secret itself is loaded by ``secret.py``.
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from yarl import URL

from . import signing
from .client_ip import Network, parse_network

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_ADMIN_LISTEN = "127.0.0.1:9090"
# Delay + timeout must fit in the pod's terminationGracePeriodSeconds (30 s by default).
DEFAULT_DRAIN_DELAY_S = 5.0
DEFAULT_DRAIN_TIMEOUT_S = 20.0
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRIES = 1
DEFAULT_MAX_CONNECTIONS = 256
# Shorter than common servers' keep-alive timeouts (Node 5 s, nginx 75 s): a pooled
# connection the upstream closes first can fail the request that picks it up.
DEFAULT_IDLE_TIMEOUT_S = 4.0
DEFAULT_CLOCK_SKEW_WARNING_S = 30.0
DEFAULT_SECRET_POLL_S = 1.0
DEFAULT_LOOPBACK = ("127.0.0.0/8", "::1/128")
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_CLIENT_CONNECTIONS = 1024
DEFAULT_HEADER_TIMEOUT_S = 10.0
# A connection that has sent nothing (since accept, or since its last answer) this long
# is closed: below Node's and nginx's keep-alive defaults, above a browser's think time
# between pooled requests.
DEFAULT_CLIENT_IDLE_TIMEOUT_S = 5.0
# A caller that takes no answer bytes for this long is cut (and its upstream connection
# closed), so a reader that never reads cannot hold an upstream connection.
DEFAULT_SEND_TIMEOUT_S = 30.0
DEFAULT_BODY_TIMEOUT_S = 30.0
DEFAULT_RETRY_BACKOFF_S = 0.1
MAX_RETRIES = 5

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ConfigError(Exception):
    """The configuration has problems; ``problems`` lists every one of them."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """A host and port to bind."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


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


@dataclass(frozen=True, slots=True)
class ServerSettings:
    listen: ListenAddress
    admin_listen: ListenAddress
    drain_delay_s: float = DEFAULT_DRAIN_DELAY_S
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S
    workers: int = 1
    tls: TlsSettings | None = None  # None: the proxy listener speaks plain HTTP


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    url: URL
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    timeout_s: float = DEFAULT_TIMEOUT_S
    retries: int = DEFAULT_RETRIES
    retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    forward_proxy_headers: bool = False
    clock_skew_warning_s: float = DEFAULT_CLOCK_SKEW_WARNING_S
    # Egress through an HTTP proxy: this one, or the environment's (HTTPS_PROXY, ...).
    proxy_url: URL | None = None
    proxy_auth_file: Path | None = None  # user:password, never in the URL
    proxy_from_env: bool = False

    @property
    def host_header(self) -> str:
        """The Host header sent upstream (and signed as ``host``)."""
        host = (self.url.raw_host or "").lower()
        if ":" in host:
            host = f"[{host}]"
        return host if self.url.is_default_port() else f"{host}:{self.url.port}"

    @property
    def base_path(self) -> str:
        """The URL's raw path without a trailing ``/`` ("" for the root)."""
        return self.url.raw_path.rstrip("/")


@dataclass(frozen=True, slots=True)
class SigningSettings:
    api_id: str
    secret_file: Path | None = None
    secret_env: str | None = None
    scheme: signing.Scheme = field(default_factory=signing.Scheme)
    secret_poll_s: float = DEFAULT_SECRET_POLL_S


@dataclass(frozen=True, slots=True)
class ClientIpSettings:
    trusted_proxies: tuple[Network, ...] = field(
        default_factory=lambda: tuple(parse_network(n) for n in DEFAULT_LOOPBACK)
    )


@dataclass(frozen=True, slots=True)
class Route:
    """One allowed route: a method (or ``*``) and a path pattern (``*`` matches anything)."""

    method: str
    pattern: str

    def __str__(self) -> str:
        return f"{self.method} {self.pattern}"


@dataclass(frozen=True, slots=True)
class AccessSettings:
    allowed_clients: tuple[Network, ...] = field(
        default_factory=lambda: tuple(parse_network(n) for n in DEFAULT_LOOPBACK)
    )
    routes: tuple[Route, ...] | None = None  # None: every route is allowed
    # With client certificates: the identities allowed (None: any the CA issued).
    allowed_client_names: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_connections: int = DEFAULT_MAX_CLIENT_CONNECTIONS
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    idle_timeout_s: float = DEFAULT_CLIENT_IDLE_TIMEOUT_S
    send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the gateway needs, validated."""

    server: ServerSettings
    upstream: UpstreamSettings
    signing: SigningSettings
    client_ip: ClientIpSettings = field(default_factory=ClientIpSettings)
    access: AccessSettings = field(default_factory=AccessSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)


def load_settings(path: Path) -> Settings:
    """Read and validate a TOML file; raise ConfigError listing every problem."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror or exc})"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: invalid TOML: {exc}"]) from None
    return parse_settings(data)


def parse_settings(data: Mapping[str, Any]) -> Settings:
    """Validate parsed TOML; raise ConfigError listing every problem."""
    r = _Reader(data)
    server = ServerSettings(
        listen=r.get("server", "listen", parse_listen, parse_listen(DEFAULT_LISTEN)),
        admin_listen=r.get(
            "server", "admin_listen", parse_listen, parse_listen(DEFAULT_ADMIN_LISTEN)
        ),
        drain_delay_s=r.get("server", "drain_delay_s", _seconds_or_zero, DEFAULT_DRAIN_DELAY_S),
        drain_timeout_s=r.get("server", "drain_timeout_s", _seconds, DEFAULT_DRAIN_TIMEOUT_S),
        workers=r.get("server", "workers", _int_range(1, 64), 1),
        tls=_tls(r),
    )
    url = r.get("upstream", "url", _upstream_url, None)
    upstream = UpstreamSettings(
        url=url or URL("http://invalid"),
        connect_timeout_s=r.get(
            "upstream", "connect_timeout_s", _seconds, DEFAULT_CONNECT_TIMEOUT_S
        ),
        timeout_s=r.get("upstream", "timeout_s", _seconds, DEFAULT_TIMEOUT_S),
        retries=r.get("upstream", "retries", _int_range(0, MAX_RETRIES), DEFAULT_RETRIES),
        retry_backoff_s=r.get(
            "upstream", "retry_backoff_s", _seconds_or_zero, DEFAULT_RETRY_BACKOFF_S
        ),
        max_connections=r.get(
            "upstream", "max_connections", _int_range(1, 65535), DEFAULT_MAX_CONNECTIONS
        ),
        idle_timeout_s=r.get("upstream", "idle_timeout_s", _seconds, DEFAULT_IDLE_TIMEOUT_S),
        forward_proxy_headers=r.get("upstream", "forward_proxy_headers", _bool, False),
        clock_skew_warning_s=r.get(
            "upstream", "clock_skew_warning_s", _seconds, DEFAULT_CLOCK_SKEW_WARNING_S
        ),
        proxy_url=r.get("upstream", "proxy_url", _proxy_url, None),
        proxy_auth_file=r.get("upstream", "proxy_auth_file", _path, None),
        proxy_from_env=r.get("upstream", "proxy_from_env", _bool, False),
    )
    if upstream.proxy_url is not None and upstream.proxy_from_env:
        r.problem("upstream: set proxy_url or proxy_from_env, not both")
    elif upstream.proxy_auth_file is not None and not (
        upstream.proxy_url or upstream.proxy_from_env
    ):
        r.problem("upstream.proxy_auth_file: needs proxy_url or proxy_from_env")
    secret_file = r.get("signing", "secret_file", _path, None)
    secret_env = r.get("signing", "secret_env", _env_name, None)
    if (
        (secret_file is None) == (secret_env is None)
        and r.valid("signing", "secret_file")
        and r.valid("signing", "secret_env")
    ):
        r.problem("signing: set exactly one of secret_file and secret_env")
    sign = SigningSettings(
        api_id=r.get("signing", "api_id", _api_id, None) or "",
        secret_file=secret_file,
        secret_env=secret_env,
        scheme=_scheme(r),
        secret_poll_s=r.get("signing", "secret_poll_s", _seconds, DEFAULT_SECRET_POLL_S),
    )
    client_ip = ClientIpSettings(
        trusted_proxies=r.get(
            "client_ip", "trusted_proxies", _networks, ClientIpSettings().trusted_proxies
        )
    )
    access = AccessSettings(
        allowed_clients=r.get(
            "access", "allowed_clients", _networks, AccessSettings().allowed_clients
        ),
        routes=r.get("access", "routes", _routes, None),
        allowed_client_names=r.get("access", "allowed_client_names", _names, None),
    )
    if access.allowed_client_names is not None and (
        server.tls is None or server.tls.client_ca_file is None
    ):
        r.problem("access.allowed_client_names: needs server.tls_client_ca_file")
    limits = LimitsSettings(
        max_body_bytes=r.get(
            "limits", "max_body_bytes", _int_range(0, 1 << 30), DEFAULT_MAX_BODY_BYTES
        ),
        max_connections=r.get(
            "limits", "max_connections", _int_range(1, 1 << 20), DEFAULT_MAX_CLIENT_CONNECTIONS
        ),
        header_timeout_s=r.get("limits", "header_timeout_s", _seconds, DEFAULT_HEADER_TIMEOUT_S),
        body_timeout_s=r.get("limits", "body_timeout_s", _seconds, DEFAULT_BODY_TIMEOUT_S),
        idle_timeout_s=r.get("limits", "idle_timeout_s", _seconds, DEFAULT_CLIENT_IDLE_TIMEOUT_S),
        send_timeout_s=r.get("limits", "send_timeout_s", _seconds, DEFAULT_SEND_TIMEOUT_S),
    )
    if server.workers > 1 and server.listen.port == 0:
        r.problem("server.workers: more than one worker needs a fixed server.listen port")
    r.check_required("upstream", "url")
    r.check_required("signing", "api_id")
    r.check_unknown()
    if r.problems:
        raise ConfigError(r.problems)
    return Settings(server, upstream, sign, client_ip, access, limits)


T = TypeVar("T")


class _Reader:
    """Reads ``table.key`` values through converters, collecting every problem."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data
        self.problems: list[str] = []
        self.seen: dict[str, set[str]] = {}
        self.invalid: set[tuple[str, str]] = set()

    def problem(self, message: str) -> None:
        self.problems.append(message)

    def _table(self, table: str) -> Mapping[str, Any]:
        value = self.data.get(table, {})
        if not isinstance(value, Mapping):
            if table not in self.seen:
                self.problem(f"[{table}]: must be a table")
            self.seen.setdefault(table, set())
            return {}
        self.seen.setdefault(table, set())
        return value

    def get(self, table: str, key: str, convert: Callable[[Any], T], default: T) -> T:
        section = self._table(table)
        self.seen[table].add(key)
        if key not in section:
            return default
        try:
            return convert(section[key])
        except ValueError as exc:
            self.invalid.add((table, key))
            self.problem(f"{table}.{key}: {exc}")
            return default

    def valid(self, table: str, key: str) -> bool:
        return (table, key) not in self.invalid

    def check_required(self, table: str, key: str) -> None:
        if key not in self._table(table) and self.valid(table, key):
            self.problem(f"{table}.{key}: required")

    def check_unknown(self) -> None:
        for table, value in self.data.items():
            if table not in self.seen:
                self.problem(f"[{table}]: unknown table")
                continue
            if isinstance(value, Mapping):
                for key in value:
                    if key not in self.seen[table]:
                        self.problem(f"{table}.{key}: unknown key")


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


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number of seconds")
    if not math.isfinite(value) or not 0 < value <= 3600:
        raise ValueError(f"{value} must be more than 0 and at most 3600")
    return float(value)


def _seconds_or_zero(value: Any) -> float:
    return 0.0 if value == 0 and not isinstance(value, bool) else _seconds(value)


def _int_range(low: int, high: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be a whole number")
        if not low <= value <= high:
            raise ValueError(f"{value} must be from {low} to {high}")
        return value

    return convert


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


def _tls(r: _Reader) -> TlsSettings | None:
    cert = r.get("server", "tls_cert_file", _path, None)
    key = r.get("server", "tls_key_file", _path, None)
    client_ca = r.get("server", "tls_client_ca_file", _path, None)
    if cert is None and key is None:
        if client_ca is not None:
            r.problem("server.tls_client_ca_file: needs server.tls_cert_file and tls_key_file")
        return None
    if cert is None or key is None:
        if r.valid("server", "tls_cert_file") and r.valid("server", "tls_key_file"):
            r.problem("server: set both tls_cert_file and tls_key_file, or neither")
        return None
    return TlsSettings(cert, key, client_ca)


def _names(value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError(
            'must be a non-empty list like ["frontend.casino.svc", "spiffe://casino/frontend"]'
        )
    return frozenset(value)


def _scheme(r: _Reader) -> signing.Scheme:
    """The signing scheme's keys (SPEC §2.1); every bad expression is its own problem."""
    default = signing.Scheme()
    scheme = signing.Scheme(
        fields=r.get("signing", "fields", _fields, default.fields),
        separator=r.get("signing", "separator", _string, default.separator),
        secret_encoding=r.get(
            "signing", "secret_encoding", _one_of(signing.SECRET_ENCODINGS), default.secret_encoding
        ),
        signature_encoding=r.get(
            "signing",
            "signature_encoding",
            _one_of(signing.SIGNATURE_ENCODINGS),
            default.signature_encoding,
        ),
        timestamp_unit=r.get(
            "signing", "timestamp_unit", _one_of(signing.TIMESTAMP_UNITS), default.timestamp_unit
        ),
    )
    for problem in signing.scheme_problems(scheme):
        r.problem(f"signing.fields: {problem}")
    return scheme


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
