"""The admin application (/healthz, /readyz, /metrics) and the readiness state it reports.

Served on its own listener only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .secret import SecretStore
from .tls import CertificateStore

if TYPE_CHECKING:
    from .redis_store import LimitStore


@dataclass(slots=True)
class Lifecycle:
    """Process-wide state /readyz reports on (the secret and the TLS files aside)."""

    draining: bool = False
    workers_down: int = 0  # workers being restarted (server.workers > 1)


LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
SECRETS: web.AppKey[Mapping[str, SecretStore]] = web.AppKey("secrets")
REGISTRY = web.AppKey("registry", CollectorRegistry)
CERTIFICATES: web.AppKey[CertificateStore | None] = web.AppKey("certificates")
STORE: web.AppKey[LimitStore | None] = web.AppKey("store")


def create_admin_app(
    *,
    secrets: Mapping[str, SecretStore],
    registry: CollectorRegistry,
    lifecycle: Lifecycle,
    certificates: CertificateStore | None = None,
    store: LimitStore | None = None,
) -> web.Application:
    """Build the admin application; whoever owns ``secrets`` (each tenant's, by name),
    ``certificates`` (the proxy listener's TLS files) and ``store`` (the rate limits'
    shared store) keeps them fresh."""
    app = web.Application()
    app[SECRETS] = secrets
    app[CERTIFICATES] = certificates
    app[REGISTRY] = registry
    app[LIFECYCLE] = lifecycle
    app[STORE] = store
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    reasons = []
    # Problems name the tenant and the source (file or variable), never the value.
    for tenant, secrets in request.app[SECRETS].items():
        if secrets.current is None:
            reasons.append(f"tenant {tenant}: no API secret loaded: {secrets.problem}")
        elif secrets.problem is not None:
            # Still signing with the last good secret, but the source is broken: take this
            # instance out of rotation so the broken mount is noticed before it matters.
            reasons.append(
                f"tenant {tenant}: secret source broken, signing with the last good secret: "
                f"{secrets.problem}"
            )
    certificates = request.app[CERTIFICATES]
    if certificates is not None and certificates.problem is not None:
        reasons.append(
            f"TLS files broken, serving the last good certificate: {certificates.problem}"
        )
    lifecycle = request.app[LIFECYCLE]
    if lifecycle.draining:
        reasons.append("draining")
    if lifecycle.workers_down:
        reasons.append(f"{lifecycle.workers_down} worker(s) restarting")
    body: dict[str, object] = {"status": "not ready", "reasons": reasons} if reasons else {}
    # Named, never a reason: a store down takes every gateway alike, and a fleet that
    # goes unready together serves nobody; on_store_error says what requests get.
    store = request.app[STORE]
    if store is not None:
        body["rate_limit_store"] = store.state()
    if reasons:
        return web.json_response(body, status=503)
    return web.json_response({"status": "ready", **body})


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
