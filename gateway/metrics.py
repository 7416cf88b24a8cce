"""Every metric the gateway exports, built on a registry that is passed in.

Labels are low-cardinality by construction: methods outside the standard set become
``OTHER``, statuses are three digits, and no path, address or session ever is a label.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from .counts import CountsCollector, RequestCounts, SharedCounts
from .errors import FAULT_KINDS

TLS_REFUSALS = ("handshake", "name")
CLOSE_REASONS = ("overloaded", "not_allowed", "idle_timeout", "header_timeout", "send_timeout")

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})


def method_label(method: str) -> str:
    """The method as a label value; anything unusual collapses to ``OTHER``."""
    return method if method in _METHODS else "OTHER"


class Metrics:
    """The gateway's metrics, registered on ``registry``.

    The per-request ones are plain numbers in ``counts`` (gateway/counts.py); as one of
    several workers (``shared``), ``fold()`` adds them to the multi-process files.
    """

    def __init__(self, registry: CollectorRegistry, *, shared: bool = False) -> None:
        self.registry = registry
        self._children: dict[tuple[Counter, tuple[str, ...]], Counter] = {}
        self.counts = RequestCounts()
        self._shared = SharedCounts(self.counts, registry) if shared else None
        if self._shared is None:
            registry.register(CountsCollector(self.counts))
        self.signing_failures = Counter(
            "aleacc_gateway_signing_failures",
            "Requests that could not be signed, by reason.",
            ["reason"],
            registry=registry,
        )
        self.upstream_errors = Counter(
            "aleacc_gateway_upstream_errors",
            f"Failed upstream attempts, by kind ({', '.join(FAULT_KINDS)}).",
            ["kind"],
            registry=registry,
        )
        # The multiprocess modes apply with server.workers > 1 (prometheus-client's
        # multi-process mode); a single process ignores them.
        self.clock_skew = Gauge(
            "aleacc_gateway_clock_skew_seconds",
            "The upstream's Date header minus the local clock, from the last response.",
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.secret_reloads = Counter(
            "aleacc_gateway_secret_reloads",
            "Secret (re)loads, by result: loaded or error.",
            ["result"],
            registry=registry,
        )
        self.connections_closed = Counter(
            "aleacc_gateway_connections_closed",
            "Client connections the gateway closed itself, by reason: overloaded, "
            "not_allowed, idle_timeout, header_timeout, send_timeout.",
            ["reason"],
            registry=registry,
        )
        self.tls_reloads = Counter(
            "aleacc_gateway_tls_reloads",
            "Listener certificate (re)loads, by result: loaded or error.",
            ["result"],
            registry=registry,
        )
        self.tls_refusals = Counter(
            "aleacc_gateway_tls_refusals",
            "TLS clients refused, by reason: handshake (no or untrusted certificate, "
            "protocol) or name (not in access.allowed_client_names).",
            ["reason"],
            registry=registry,
        )
        self.tls_certificate_expiry = Gauge(
            "aleacc_gateway_tls_certificate_expiry_seconds",
            "When the listener's certificate expires, as a Unix time.",
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        # Make the zero series visible before the first event, so rate() and alerts work.
        for result in ("loaded", "error"):
            self.secret_reloads.labels(result)
            self.tls_reloads.labels(result)
        for reason in TLS_REFUSALS:
            self.tls_refusals.labels(reason)
        for reason in ("secret_unavailable", "invalid_request"):
            self.signing_failures.labels(reason)
        for reason in CLOSE_REASONS:
            self.connections_closed.labels(reason)

    def count(self, counter: Counter, *labels: str) -> None:
        """``counter.labels(*labels).inc()`` with the child cached, for per-request counts.

        ``labels()`` takes a lock and builds tuples on every call; label values here are
        few by construction, so the cache stays small.
        """
        key = (counter, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = counter.labels(*labels)
        child.inc()

    def fold(self) -> None:
        """A worker: add the per-request counts to the shared files (else nothing to do)."""
        if self._shared is not None:
            self._shared.fold()
