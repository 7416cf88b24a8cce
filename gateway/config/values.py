"""The value types of the settings and the converters that read them.

Each converter reads one TOML value or raises ValueError with the message an operator
sees; the tables (settings.py) name one for each key.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yarl import URL

from ..client_ip import Network, parse_network
from ..forwarding import Route, host_name

DEFAULT_TENANT = "default"  # [signing]'s credential, in labels and logs
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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


def upstream_url(value: Any) -> URL:
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


def _url(value: Any, example: str) -> URL:
    """``value`` as a URL with a valid port, or ValueError naming ``example``."""
    if not isinstance(value, str):
        raise ValueError(f"must be a string {example}")
    try:
        url = URL(value, encoded=True)
        url.port  # noqa: B018 - an out-of-range port raises here
    except ValueError:
        raise ValueError(f"must be a URL {example}") from None
    return url


def proxy_url(value: Any) -> URL:
    example = "like 'http://proxy.internal:3128'"
    url = _url(value, example)
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


seconds = Range(0, 3600, "seconds", above_low=True)
seconds_or_zero = Range(0, 3600, "seconds")
rate = Range(0, 1_000_000, "requests per second", above_low=True)


def int_range(low: int, high: int) -> Range:
    """The whole numbers from ``low`` to ``high``."""
    return Range(low, high, whole=True)


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def path(value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty path")
    return Path(value)


def env_name(value: Any) -> str:
    if not isinstance(value, str) or not _ENV_NAME.match(value):
        raise ValueError("must be an environment variable name like 'ALEACC_API_SECRET'")
    return value


def api_id(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    if not value.isascii() or not value.isprintable() or ":" in value or " " in value:
        raise ValueError("must be printable ASCII without ':' or spaces")
    return value


def names(value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError(
            'must be a non-empty list like ["frontend.casino.svc", "spiffe://casino/frontend"]'
        )
    return frozenset(value)


_HOST = re.compile(r"^(\[[0-9a-f:.]+\]|[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?)$")


def hosts(value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError('must be a non-empty list like ["aleacc-brand-b.payments.svc"]')
    bad = [repr(v) for v in value if not _HOST.match(host_name(v))]
    if bad:
        raise ValueError(f"not a host name: {', '.join(bad)}")
    return frozenset(map(host_name, value))


_TENANT_NAME = re.compile(r"^[a-z0-9-]{1,63}$")


def tenant_name(value: Any) -> str:
    if not isinstance(value, str) or not _TENANT_NAME.match(value):
        raise ValueError("must be 1 to 63 of a-z, 0-9 and '-', like 'brand-b'")
    if value == DEFAULT_TENANT:
        raise ValueError(f"{DEFAULT_TENANT!r} is [signing]'s name")
    return value


def field_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a non-empty list of field expressions")
    return tuple(value)


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def one_of(allowed: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"{value!r} must be one of {', '.join(map(repr, allowed))}")
        return str(value)

    return convert


STORE_SCHEMES = ("redis", "rediss", "unix")
_KEY_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def store_url(value: Any) -> str:
    example = "like 'redis://redis.cache:6379/0' or 'unix:///run/redis/redis.sock'"
    url = _url(value, example)
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
    return str(value)  # as written: yarl would shorten unix:///path to unix:/path


def key_prefix(value: Any) -> str:
    if not isinstance(value, str) or not _KEY_PREFIX.match(value):
        raise ValueError("must be 1 to 64 of A-Z, a-z, 0-9, '_', '.', ':' and '-'")
    return value


_ROUTE = re.compile(r"^(\*|[A-Z]+) (/[\x21-\x7e]*)$")


def routes(value: Any) -> tuple[Route, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError('must be a list like ["POST /player/*", "GET /player/balance"]')
    bad = [repr(v) for v in value if not _ROUTE.match(v)]
    if bad:
        raise ValueError(f"expected 'METHOD /path' (METHOD may be *): {', '.join(bad)}")
    return tuple(Route(*v.split(" ", 1)) for v in value)


def networks(value: Any) -> tuple[Network, ...]:
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


def collector_url(value: Any) -> URL:
    url = upstream_url(value)
    if url.raw_path not in ("", "/"):
        raise ValueError(
            f"{value!r}: the collector's base URL, like 'http://otel-collector:4318' "
            "(/v1/traces is added)"
        )
    return url


def service_name(value: Any) -> str:
    if not isinstance(value, str) or not value or not value.isprintable():
        raise ValueError("must be a non-empty printable string")
    return value
