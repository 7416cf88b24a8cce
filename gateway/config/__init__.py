"""Settings: each configuration key declared once, read by one walk that reports every problem.

One concern a module: ``declare`` (the machinery: ``key()``, ``group()``, the environment
variable of each key), ``values`` (the value types and the converters), ``settings`` (the
tables, each key with its doc: the reference's source), ``load`` (the TOML file, then the
``ALEACC_GATEWAY_*`` variables over it), ``rules`` (what joins several keys, over the
typed settings) and ``describe`` (the reference page and ``check-config --show``).
"""

from __future__ import annotations

from ..forwarding import Route
from .declare import declared_keys
from .describe import effective_toml, reference
from .load import ConfigError, Effective, load_file, load_mapping
from .rules import listener_clashes
from .settings import (
    AccessSettings,
    ClientIpSettings,
    LimitsSettings,
    LoggingSettings,
    ServerSettings,
    Settings,
    SigningSettings,
    TenantSettings,
    TracingSettings,
    UpstreamSettings,
    tables,
)
from .values import DEFAULT_TENANT, ListenAddress, TlsSettings, parse_listen

__all__ = [
    "DEFAULT_TENANT",
    "AccessSettings",
    "ClientIpSettings",
    "ConfigError",
    "Effective",
    "LimitsSettings",
    "ListenAddress",
    "LoggingSettings",
    "Route",
    "ServerSettings",
    "Settings",
    "SigningSettings",
    "TenantSettings",
    "TlsSettings",
    "TracingSettings",
    "UpstreamSettings",
    "declared_keys",
    "effective_toml",
    "listener_clashes",
    "load_file",
    "load_mapping",
    "parse_listen",
    "reference",
    "tables",
]
