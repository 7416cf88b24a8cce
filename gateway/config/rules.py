"""The rules that join several keys, one function per area, each over the typed
settings and returning its problems.

The settings are read as far as they go: a required key without a value is None in them
(its own problem says so). A rule whose key was refused by its converter stays quiet:
that key has its problem already.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

from .. import signing
from .settings import Settings
from .values import ListenAddress


@dataclass(frozen=True, slots=True)
class Read:
    """What the walk read, for the rules."""

    settings: Settings
    refused: frozenset[str]  # "table.key" of every value its converter refused
    own_scheme: tuple[bool, ...]  # per tenant: whether it sets a scheme key of its own

    def set_or_refused(self, table: str, name: str, value: object) -> bool:
        """Whether ``table.name`` was given: it has a value, or one that was refused."""
        return value is not None or f"{table}.{name}" in self.refused


def cross_key_problems(read: Read) -> list[str]:
    """Every rule's problems, area by area."""
    areas: list[Callable[[Read], list[str]]] = [
        _server,
        _upstream,
        _signing,
        _limits,
        _access,
        _listeners,
        _tenants,
    ]
    return [problem for area in areas for problem in area(read)]


def _server(read: Read) -> list[str]:
    server, problems = read.settings.server, []
    cert = server.tls.cert_file if server.tls else None
    key = server.tls.key_file if server.tls else None
    if cert is None and key is None:
        if server.tls is not None and server.tls.client_ca_file is not None:
            problems.append(
                "server.tls_client_ca_file: needs server.tls_cert_file and tls_key_file"
            )
    elif (cert is None or key is None) and not read.refused & {
        "server.tls_cert_file",
        "server.tls_key_file",
    }:
        problems.append("server: set both tls_cert_file and tls_key_file, or neither")
    if server.workers > 1 and server.listen.port == 0:
        problems.append("server.workers: more than one worker needs a fixed server.listen port")
    return problems


def _upstream(read: Read) -> list[str]:
    upstream = read.settings.upstream
    if upstream.proxy_url is not None and upstream.proxy_from_env:
        return ["upstream: set proxy_url or proxy_from_env, not both"]
    if upstream.proxy_auth_file is not None and not (
        upstream.proxy_url is not None or upstream.proxy_from_env
    ):
        return ["upstream.proxy_auth_file: needs proxy_url or proxy_from_env"]
    return []


def _signing(read: Read) -> list[str]:
    """[signing] is a credential unless [[tenants]] take its place."""
    sign, tenants, problems = read.settings.signing, read.settings.tenants, []
    has_id = read.set_or_refused("signing", "api_id", sign.api_id)
    if not tenants and not has_id:
        problems.append("signing.api_id: required (or [[tenants]] to sign as)")
    if has_id or not tenants:
        problems += _one_secret(read, "signing", sign.secret_file, sign.secret_env)
    elif sign.secret_file is not None or sign.secret_env is not None:
        problems.append("signing.api_id: required with a secret_file or secret_env")
    problems += _burst_needs_rate("signing", sign.rate_per_s, sign.burst, "rate_per_s", "burst")
    return problems + [
        f"signing.fields: {problem}" for problem in signing.scheme_problems(sign.scheme)
    ]


def _limits(read: Read) -> list[str]:
    """A player bucket's size needs its rate; the store's password has one source, and
    the store's keys need its URL."""
    limits = read.settings.limits
    problems = _burst_needs_rate(
        "limits", limits.player_rate_per_s, limits.player_burst, "player_rate_per_s", "player_burst"
    )
    if limits.store_url is None:
        if "limits.store_url" in read.refused:
            return problems
        others = {
            "store_password_file": limits.store_password_file,
            "store_password_env": limits.store_password_env,
            "store_ca_file": limits.store_ca_file,
        }
        return problems + [
            f"limits.{name}: needs limits.store_url"
            for name, value in others.items()
            if value is not None
        ]
    if limits.store_password_file is not None and limits.store_password_env is not None:
        problems.append("limits: set store_password_file or store_password_env, not both")
    if limits.store_ca_file is not None and not limits.store_url.startswith("rediss:"):
        problems.append("limits.store_ca_file: needs a rediss:// store_url")
    return problems


def _access(read: Read) -> list[str]:
    if read.settings.access.allowed_client_names is not None and not _client_ca(read):
        return ["access.allowed_client_names: needs server.tls_client_ca_file"]
    return []


def _listeners(read: Read) -> list[str]:
    """Every listener the settings give; a refused one left out."""
    server = read.settings.server
    listeners = [
        (f"server.{name}", address)
        for name, address in (("listen", server.listen), ("admin_listen", server.admin_listen))
        if f"server.{name}" not in read.refused
    ]
    listeners += [
        (f"tenants[{i}].listen", tenant.listen)
        for i, tenant in enumerate(read.settings.tenants)
        if tenant.listen is not None
    ]
    return listener_clashes(listeners)


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


def _tenants(read: Read) -> list[str]:
    """Each tenant's own rules, and the claims no two tenants may share."""
    problems: list[str] = []
    workers = read.settings.server.workers
    names: dict[Hashable, str] = {}
    hosts: dict[Hashable, str] = {}
    client_names: dict[Hashable, str] = {}
    for i, tenant in enumerate(read.settings.tenants):
        label = f"tenants[{i}]"
        problems += _one_secret(read, label, tenant.secret_file, tenant.secret_env)
        problems += _burst_needs_rate(label, tenant.rate_per_s, tenant.burst, "rate_per_s", "burst")
        if tenant.name is not None:
            problems += _claim(names, [tenant.name], f"{label}.name")
        chosen_by = {
            "listen": tenant.listen,
            "hosts": tenant.hosts,
            "client_names": tenant.client_names,
        }
        if not any(read.set_or_refused(label, name, v) for name, v in chosen_by.items()):
            problems.append(f"{label}: set listen, hosts or client_names, or no request is its")
        if tenant.listen is not None and tenant.listen.port == 0 and workers > 1:
            problems.append(f"{label}.listen: more than one worker needs a fixed port")
        problems += _claim(hosts, sorted(tenant.hosts or ()), f"{label}.hosts")
        if tenant.client_names is not None:
            if not _client_ca(read):
                problems.append(f"{label}.client_names: needs server.tls_client_ca_file")
            problems += _claim(client_names, sorted(tenant.client_names), f"{label}.client_names")
        if read.own_scheme[i]:
            problems += [f"{label}.fields: {p}" for p in signing.scheme_problems(tenant.scheme)]
    return problems


def _client_ca(read: Read) -> bool:
    """Whether the listener asks for client certificates (server.tls_client_ca_file)."""
    tls = read.settings.server.tls
    return tls is not None and tls.client_ca_file is not None


def _one_secret(read: Read, table: str, secret_file: object, secret_env: object) -> list[str]:
    if (secret_file is None) != (secret_env is None) or read.refused & {
        f"{table}.secret_file",
        f"{table}.secret_env",
    }:
        return []
    return [f"{table}: set exactly one of secret_file and secret_env"]


def _burst_needs_rate(
    table: str, rate_value: object, burst_value: object, rate: str, burst: str
) -> list[str]:
    if burst_value is not None and rate_value is None:
        return [f"{table}.{burst}: needs {rate}"]
    return []


def _claim(claimed: dict[Hashable, str], values: Iterable[Hashable], setting: str) -> list[str]:
    """Claim each of ``values`` for ``setting``; a problem for each one claimed before."""
    problems = []
    for value in values:
        owner = claimed.setdefault(value, setting)
        if owner != setting:
            problems.append(f"{setting}: {str(value)!r} is also {owner}'s")
    return problems
