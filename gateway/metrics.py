"""Every metric the gateway exports, built on a registry that is passed in.

Labels are low-cardinality by construction: methods outside the standard set become
``OTHER``, statuses are three digits, and no path, address or session ever is a label.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

TLS_REFUSALS = ("handshake", "name")
CLOSE_REASONS = ("overloaded", "not_allowed", "idle_timeout", "header_timeout", "send_timeout")

# From 100 µs (the gateway's own overhead) to a minute (a slow upstream call).
DURATION_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})


def method_label(method: str) -> str:
    """The method as a label value; anything unusual collapses to ``OTHER``."""
    return method if method in _METHODS else "OTHER"


class Metrics:
    """The gateway's metrics, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._children: dict[tuple[Counter, tuple[str, ...]], Counter] = {}
        self.requests = Counter(
            "aleacc_gateway_requests",
            "Answers sent to callers, by method and status.",
            ["method", "status"],
            registry=registry,
        )
        self.upstream_responses = Counter(
            "aleacc_gateway_upstream_responses",
            "Statuses received from the upstream.",
            ["status"],
            registry=registry,
        )
        self.signing_failures = Counter(
            "aleacc_gateway_signing_failures",
            "Requests that could not be signed, by reason.",
            ["reason"],
            registry=registry,
        )
        self.upstream_errors = Counter(
            "aleacc_gateway_upstream_errors",
            "Failed upstream attempts, by kind (connect, connect_timeout, timeout, "
            "pool_timeout, reset, cut, protocol, proxy).",
            ["kind"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "aleacc_gateway_request_duration_seconds",
            "Time from a request's arrival to the end of its answer.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.upstream_duration = Histogram(
            "aleacc_gateway_upstream_duration_seconds",
            "Time from sending upstream to the upstream's response headers.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        # The multiprocess modes apply with server.workers > 1 (prometheus-client's
        # multi-process mode); a single process ignores them.
        self.in_flight = Gauge(
            "aleacc_gateway_in_flight_requests",
            "Requests being handled now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.client_ip = Counter(
            "aleacc_gateway_client_ip",
            "How X-Client-Ip was derived: xff, peer or fallback.",
            ["source"],
            registry=registry,
        )
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
        for source in ("xff", "peer", "fallback"):
            self.client_ip.labels(source)
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
