"""What ``check-config`` and ``serve`` share: the files a valid configuration names,
loaded once, with every problem and warning found on the way.

The settings are already valid (gateway/config); here the secrets, the listener's TLS
pair, the egress proxy's credentials and the rate-limit store's password are read.
``serve`` hands what was loaded on to the gateway instead of reading the files again.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from . import tls
from .config import Settings
from .egress import EgressError, EgressFileMissing, EgressProxy, egress_proxy
from .ratelimit_store import StoreConfigError, StorePasswordMissing, store_password
from .secret import LoadedKey, SecretInvalid, SecretUnavailable, loaded_key


@dataclass(frozen=True, slots=True)
class Preflight:
    """What was loaded, and what stands in the way.

    ``problems``: the configuration cannot work. ``missing``: a TLS or egress file, or
    the store's password, not there (yet): ``serve`` cannot start, ``check-config`` (run
    where it is not mounted) warns. ``secret_missing``: a tenant's secret is not there
    (yet): ``serve`` starts unready.
    """

    settings: Settings
    problems: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    secret_missing: list[str] = field(default_factory=list)
    certificate: tls.Loaded | None = None
    egress: EgressProxy | None = None
    store_password: str | None = None
    keys: dict[str, LoadedKey] = field(default_factory=dict)  # by tenant name


def preflight(settings: Settings, environ: Mapping[str, str] = os.environ) -> Preflight:
    """Load what ``settings`` names; never raises for a file's problem."""
    problems: list[str] = []
    missing: list[str] = []
    secret_missing: list[str] = []
    certificate = egress = None
    keys: dict[str, LoadedKey] = {}
    for tenant in settings.every_tenant:
        try:
            keys[tenant.name] = loaded_key(tenant, environ)
        except SecretInvalid as exc:
            # There, but it cannot be the key: a configuration error.
            problems.append(f"{settings.table_of(tenant)}: {exc}")
        except SecretUnavailable as exc:
            # Not a configuration error: in Kubernetes the secret is mounted only where
            # it runs.
            secret_missing.append(f"{settings.table_of(tenant)}: {exc}")
    if settings.server.tls is not None:
        try:
            certificate = tls.load(settings.server.tls)
        except tls.TlsFileMissing as exc:
            missing.append(str(exc))
        except tls.TlsError as exc:
            problems.append(str(exc))
    if settings.tracing.otlp_endpoint is not None and not otel_installed():
        problems.append(
            "tracing.otlp_endpoint: tracing needs the otel extra: "
            "pip install 'aleacc-gateway[otel]'"
        )
    try:
        egress = egress_proxy(settings.upstream, environ)  # reads proxy_auth_file
    except EgressFileMissing as exc:
        missing.append(str(exc))
    except EgressError as exc:
        problems.append(str(exc))
    password = None
    try:
        password = store_password(settings.limits, environ)
    except StorePasswordMissing as exc:
        missing.append(str(exc))
    except StoreConfigError as exc:
        problems.append(str(exc))
    return Preflight(
        settings, problems, missing, secret_missing, certificate, egress, password, keys
    )


def otel_installed() -> bool:
    """Whether the otel extra (OpenTelemetry's SDK and OTLP/HTTP exporter) is there,
    found without importing it."""
    try:
        return all(
            importlib.util.find_spec(name) is not None
            for name in ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http")
        )
    except (ImportError, ValueError):  # a parent package that is missing or broken
        return False
