"""Every metric the gateway exports, and the per-request counts behind them.

A request adds to plain numbers in ``RequestCounts``: integers in dicts and a bucket
array, no lock, no ``labels()`` lookup, no metric object. Each counter, histogram and the
in-flight gauge is declared once, as a field of ``RequestCounts`` that carries its
metric's name, help text and labels; the numbers become metrics only when someone looks:

- one process: ``CountsCollector``, a custom prometheus-client collector (the library's
  way for exporters), builds the families from the numbers at scrape time;
- a worker (``server.workers > 1``): ``SharedCounts.fold`` adds what changed since its
  last call to prometheus-client's multi-process metrics (files the supervisor's
  /metrics sums), called just before buffered log lines are written, so a request whose
  access line can be read is counted there too.

Every counter is bumped one way, ``add()``. Gauges that are set, not counted (the clock
skew, the certificate's expiry), are prometheus-client objects on ``Metrics``. Labels are
low-cardinality by construction: methods outside the standard set become ``OTHER``,
statuses are three digits, and no path, address or session ever is a label. Names,
labels, help texts and buckets are the documented ones (docs/observability.md).
"""

from __future__ import annotations

import dataclasses
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import InitVar, dataclass, field
from typing import Any, Literal, NamedTuple, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .config import DEFAULT_TENANT
from .errors import FAULT_KINDS

# From 100 µs (the gateway's own overhead) to a minute (a slow upstream call).
DURATION_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
_LE = [*map(floatToGoString, DURATION_BUCKETS), "+Inf"]

CLIENT_IP_SOURCES = ("xff", "peer", "fallback")
SIGNING_FAILURES = ("secret_unavailable", "invalid_request")
CLOSE_REASONS = ("overloaded", "not_allowed", "idle_timeout", "header_timeout", "send_timeout")
TLS_REFUSALS = ("handshake", "name")
RELOAD_RESULTS = ("loaded", "error")
RATE_LIMIT_SCOPES = ("tenant", "player")
STORE_ERRORS = ("timeout", "refused", "auth", "other")
SPAN_DROPS = ("queue_full", "export_failed")

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})


def method_label(method: str) -> str:
    """The method as a label value; anything unusual collapses to ``OTHER``."""
    return method if method in _METHODS else "OTHER"


Kind = Literal["counter", "histogram", "gauge"]


class Declared(NamedTuple):
    """One metric of RequestCounts: its attribute, kind, name, help and labels, and for
    a counter the label values whose zero series are shown from the start (so rate() and
    alerts work at once). A counter whose first label is ``tenant`` is keyed by (tenant,
    ...), and its zero series are there for every tenant."""

    attribute: str
    kind: Kind
    name: str
    documentation: str
    labels: tuple[str, ...] = ()
    zero: tuple[str, ...] = ()

    def zero_keys(self, tenants: tuple[str, ...]) -> list[Any]:
        """The keys a counter holds from the start, each at 0."""
        if not self.labels:
            return [()]  # one series, shown from the start
        if self.labels[0] == "tenant":
            return [(tenant, value) for tenant in tenants for value in self.zero]
        return list(self.zero)


_DECLARED = "metric"


def counter(
    name: str, documentation: str, labels: tuple[str, ...] = (), zero: tuple[str, ...] = ()
) -> Any:
    """A counter's field: a dict from its label values (one value, a tuple of them, or ()
    for no labels) to a count."""
    spec = ("counter", name, documentation, labels, zero)
    return field(default_factory=dict, metadata={_DECLARED: spec})


def histogram(name: str, documentation: str) -> Any:
    """A histogram's field: seconds, over DURATION_BUCKETS."""
    return field(
        default_factory=Durations, metadata={_DECLARED: ("histogram", name, documentation)}
    )


def gauge(name: str, documentation: str) -> Any:
    """A gauge's field: a level the request path moves up and down."""
    return field(default=0, metadata={_DECLARED: ("gauge", name, documentation)})


K = TypeVar("K")


def add(counter: dict[K, int], key: K, count: int = 1) -> None:
    """Count ``count`` events under ``key``: the one way every counter here is bumped."""
    counter[key] = counter.get(key, 0) + count


class Durations:
    """A histogram's numbers: a count per bucket (the last is +Inf) and the sum."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        # Prometheus's buckets are "less than or equal": the first bound >= the value.
        self.counts[bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.sum += seconds


@dataclass(slots=True, eq=False, repr=False)
class RequestCounts:
    """What requests and connections add to, per process; read by a collector or folded
    into shared files. One field per metric, in the order /metrics shows them; adding a
    counter is adding a field. ``tenants``: the names whose zero series are shown."""

    tenants: InitVar[tuple[str, ...]] = (DEFAULT_TENANT,)
    # (tenant, method label, status)
    requests: dict[tuple[str, str, int], int] = counter(
        "aleacc_gateway_requests",
        "Answers sent to callers, by tenant, method and status.",
        ("tenant", "method", "status"),
    )
    upstream_responses: dict[tuple[str, int], int] = counter(
        "aleacc_gateway_upstream_responses",
        "Statuses received from the upstream, by tenant.",
        ("tenant", "status"),
    )
    client_ip: dict[str, int] = counter(
        "aleacc_gateway_client_ip",
        "How X-Client-Ip was derived: xff, peer or fallback.",
        ("source",),
        CLIENT_IP_SOURCES,
    )
    signing_failures: dict[tuple[str, str], int] = counter(
        "aleacc_gateway_signing_failures",
        "Requests that could not be signed, by tenant and reason.",
        ("tenant", "reason"),
        SIGNING_FAILURES,
    )
    upstream_errors: dict[str, int] = counter(
        "aleacc_gateway_upstream_errors",
        f"Failed upstream attempts, by kind ({', '.join(FAULT_KINDS)}).",
        ("kind",),
    )
    connections_closed: dict[str, int] = counter(
        "aleacc_gateway_connections_closed",
        "Client connections the gateway closed itself, by reason: overloaded, "
        "not_allowed, idle_timeout, header_timeout, send_timeout.",
        ("reason",),
        CLOSE_REASONS,
    )
    tls_refusals: dict[str, int] = counter(
        "aleacc_gateway_tls_refusals",
        "TLS clients refused, by reason: handshake (no or untrusted certificate, "
        "protocol) or name (not in access.allowed_client_names).",
        ("reason",),
        TLS_REFUSALS,
    )
    secret_reloads: dict[tuple[str, str], int] = counter(
        "aleacc_gateway_secret_reloads",
        "Secret (re)loads, by tenant and result: loaded or error.",
        ("tenant", "result"),
        RELOAD_RESULTS,
    )
    rate_limited: dict[tuple[str, str], int] = counter(
        "aleacc_gateway_rate_limited",
        "Requests answered 429, by tenant and scope: tenant (its rate_per_s) or player "
        "(limits.player_rate_per_s).",
        ("tenant", "scope"),
        RATE_LIMIT_SCOPES,
    )
    # Added to from the span exporter's thread: its keys all exist from the start, so a
    # fold or a scrape iterating over it never meets a new one.
    spans_dropped: dict[str, int] = counter(
        "aleacc_gateway_spans_dropped",
        "Trace spans not exported, by reason: queue_full (more waiting than the export "
        "queue holds) or export_failed (the collector did not take them).",
        ("reason",),
        SPAN_DROPS,
    )
    tls_reloads: dict[str, int] = counter(
        "aleacc_gateway_tls_reloads",
        "Listener certificate (re)loads, by result: loaded or error.",
        ("result",),
        RELOAD_RESULTS,
    )
    rejections_suppressed: dict[tuple[()], int] = counter(
        "aleacc_gateway_rejections_suppressed",
        "upstream_rejected events left out by logging.explain_rejections_per_s.",
    )
    clock_disagreements: dict[tuple[()], int] = counter(
        "aleacc_gateway_clock_disagreements",
        "Upstream Date offsets that disagreed with the recent ones: the clock correction was held.",
    )
    store_errors: dict[str, int] = counter(
        "aleacc_gateway_rate_limit_store_errors",
        "Requests not checked against the rate-limit store (let through or refused, as "
        "limits.on_store_error says), by reason: timeout, refused, auth or other.",
        ("reason",),
        STORE_ERRORS,
    )
    request_duration: Durations = histogram(
        "aleacc_gateway_request_duration_seconds",
        "Time from a request's arrival to the end of its answer.",
    )
    upstream_duration: Durations = histogram(
        "aleacc_gateway_upstream_duration_seconds",
        "Time from sending upstream to the upstream's response headers.",
    )
    store_duration: Durations = histogram(
        "aleacc_gateway_rate_limit_store_duration_seconds",
        "Round trips to the rate-limit store (limits.store_url), answered or timed out.",
    )
    in_flight: int = gauge("aleacc_gateway_in_flight_requests", "Requests being handled now.")

    def __post_init__(self, tenants: tuple[str, ...]) -> None:
        for declared in COUNTERS:
            getattr(self, declared.attribute).update(dict.fromkeys(declared.zero_keys(tenants), 0))

    def record(
        self,
        tenant: str,
        method: str,
        status: int,
        duration_s: float,
        client_ip_source: str | None,
        upstream_status: int | None,
        upstream_s: float,
    ) -> None:
        """One answered request: what it adds to the counts, all in one place."""
        add(self.requests, (tenant, method, status))
        self.request_duration.observe(duration_s)
        if client_ip_source is not None:
            add(self.client_ip, client_ip_source)
        if upstream_status is not None:
            add(self.upstream_responses, (tenant, upstream_status))
            self.upstream_duration.observe(upstream_s)


# The declarations, read back from RequestCounts' fields in their order.
DECLARED = tuple(
    Declared(f.name, *f.metadata[_DECLARED])
    for f in dataclasses.fields(RequestCounts)
    if _DECLARED in f.metadata
)
COUNTERS = tuple(d for d in DECLARED if d.kind == "counter")


class CountsCollector(Collector):
    """The numbers of one process as metric families, built at scrape time."""

    def __init__(self, counts: RequestCounts) -> None:
        self._counts = counts

    def describe(self) -> list[Metric]:
        # The names, so the registry refuses a second metric of the same name.
        return list(self._families(RequestCounts()))

    def collect(self) -> Iterator[Metric]:
        return self._families(self._counts)

    @staticmethod
    def _families(counts: RequestCounts) -> Iterator[Metric]:
        for declared in DECLARED:
            value = getattr(counts, declared.attribute)
            if declared.kind == "counter":
                family = CounterMetricFamily(
                    declared.name, declared.documentation, labels=declared.labels
                )
                for key, count in value.items():
                    family.add_metric(_labels(key), count)
                yield family
            elif declared.kind == "histogram":
                yield _histogram_family(declared, value)
            else:
                yield GaugeMetricFamily(declared.name, declared.documentation, value=value)


def _histogram_family(declared: Declared, durations: Durations) -> HistogramMetricFamily:
    cumulative, buckets = 0, []
    for le, count in zip(_LE, durations.counts, strict=True):
        cumulative += count
        buckets.append((le, cumulative))
    return HistogramMetricFamily(
        declared.name, declared.documentation, buckets=buckets, sum_value=durations.sum
    )


class SharedCounts:
    """The numbers of one worker, added to prometheus-client's multi-process metrics.

    Those metrics keep their values in files the supervisor sums; ``fold`` adds what
    changed since its last call (the in-flight gauge is set), so a request costs no file
    write. A worker killed with SIGKILL loses what came after the last fold.
    """

    def __init__(
        self, counts: RequestCounts, registry: CollectorRegistry, tenants: tuple[str, ...]
    ) -> None:
        self._counts = counts
        self._folded = RequestCounts(tenants)
        self._counters: list[tuple[Counter, str]] = []
        self._histograms: list[tuple[Histogram, str]] = []
        self._gauges: list[tuple[Gauge, str]] = []
        for d in DECLARED:
            if d.kind == "counter":
                shared_counter = Counter(d.name, d.documentation, d.labels, registry=registry)
                for key in d.zero_keys(tenants):
                    _series(shared_counter, key)
                self._counters.append((shared_counter, d.attribute))
            elif d.kind == "histogram":
                shared_histogram = Histogram(
                    d.name, d.documentation, buckets=DURATION_BUCKETS, registry=registry
                )
                self._histograms.append((shared_histogram, d.attribute))
            else:
                shared_gauge = Gauge(
                    d.name, d.documentation, registry=registry, multiprocess_mode="livesum"
                )
                self._gauges.append((shared_gauge, d.attribute))

    def fold(self) -> None:
        """Add what requests counted since the last call to the shared metrics."""
        counts, folded = self._counts, self._folded
        for shared_counter, attribute in self._counters:
            _fold_counter(shared_counter, getattr(counts, attribute), getattr(folded, attribute))
        for shared_histogram, attribute in self._histograms:
            _fold_histogram(
                shared_histogram, getattr(counts, attribute), getattr(folded, attribute)
            )
        for shared_gauge, attribute in self._gauges:
            shared_gauge.set(getattr(counts, attribute))


def _labels(key: object) -> list[str]:
    """A count's key as label values: a status, a source, or (tenant, method, status)."""
    return [str(part) for part in key] if isinstance(key, tuple) else [str(key)]


def _series(shared: Counter, key: object) -> Counter:
    """The child of ``shared`` for ``key``; a counter without labels is its own."""
    return shared.labels(*_labels(key)) if key != () else shared


def _fold_counter(shared: Counter, counts: dict[Any, int], folded: dict[Any, int]) -> None:
    for key, value in counts.items():
        delta = value - folded.get(key, 0)
        if delta:
            _series(shared, key).inc(delta)
            folded[key] = value


def _fold_histogram(shared: Histogram, durations: Durations, folded: Durations) -> None:
    # prometheus-client offers no way to add many observations at once, and one observe()
    # per request would be a file write per request: its private per-bucket values (not
    # cumulative) and sum, which observe() adds to, are added to here instead. Hence the
    # upper bound on prometheus-client in pyproject.toml, raised once tests/test_metrics.py
    # passes on the next minor release.
    if durations.counts == folded.counts:
        return
    for i, (count, before) in enumerate(zip(durations.counts, folded.counts, strict=True)):
        if count != before:
            shared._buckets[i].inc(count - before)
    shared._sum.inc(durations.sum - folded.sum)
    folded.counts[:] = durations.counts
    folded.sum = durations.sum


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
