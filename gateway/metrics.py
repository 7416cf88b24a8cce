"""Every metric the gateway exports, built on a registry that is passed in.

Counters and histograms are plain numbers in ``counts`` (gateway/counts.py), bumped one
way; the gauges, which are set rather than counted, are prometheus-client objects here.
Labels are low-cardinality by construction: methods outside the standard set become
``OTHER``, statuses are three digits, and no path, address or session ever is a label.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

from .config import DEFAULT_TENANT
from .counts import CountsCollector, RequestCounts, SharedCounts

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})


def method_label(method: str) -> str:
    """The method as a label value; anything unusual collapses to ``OTHER``."""
    return method if method in _METHODS else "OTHER"


class Metrics:
    """The gateway's metrics, registered on ``registry``.

    As one of several workers (``shared``), ``fold()`` adds the counts to the
    multi-process files; one process exposes them through a collector at scrape time.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        shared: bool = False,
        tenants: tuple[str, ...] = (DEFAULT_TENANT,),
        store: bool = False,
    ) -> None:
        """``tenants``: the names whose zero series are shown from the start; ``store``:
        the buckets are in a shared store (limits.store_url), whose state is a gauge."""
        self.registry = registry
        self.counts = RequestCounts(tenants)
        self._shared = SharedCounts(self.counts, registry, tenants) if shared else None
        if self._shared is None:
            registry.register(CountsCollector(self.counts))
        # The multiprocess modes apply with server.workers > 1 (prometheus-client's
        # multi-process mode); a single process ignores them.
        self.clock_skew = Gauge(
            "aleacc_gateway_clock_skew_seconds",
            "The upstream's Date header minus the local clock, from the last response.",
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.clock_correction = Gauge(
            "aleacc_gateway_clock_correction_seconds",
            "Seconds added to the local clock when signing (signing.correct_clock_skew).",
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.tls_certificate_expiry = Gauge(
            "aleacc_gateway_tls_certificate_expiry_seconds",
            "When the listener's certificate expires, as a Unix time.",
            registry=registry,
            multiprocess_mode="livemostrecent",
        )

        # Only with a store: a 0 from every gateway without one would read as "down".
        self.store_up = (
            Gauge(
                "aleacc_gateway_rate_limit_store_up",
                "1 while the rate-limit store answers, 0 while it is known down.",
                registry=registry,
                # Any live worker that cannot reach the store makes it 0.
                multiprocess_mode="livemin",
            )
            if store
            else None
        )

    def fold(self) -> None:
        """A worker: add the counts to the shared files (else nothing to do)."""
        if self._shared is not None:
            self._shared.fold()
