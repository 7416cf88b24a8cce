"""The gateway's counters and histograms as plain numbers, and their two ways out.

A request adds to integers and a bucket array here: no lock, no ``labels()`` lookup, no
metric object. The numbers are turned into metrics only when someone looks:

- one process: ``CountsCollector``, a custom prometheus-client collector (the library's
  way for exporters), builds the families from the numbers at scrape time;
- a worker (``server.workers > 1``): ``SharedCounts.fold`` adds what changed since its
  last call to prometheus-client's multi-process metrics (files the supervisor's
  /metrics sums), called just before buffered log lines are written, so a request whose
  access line can be read is counted there too.

Every counter is bumped one way, ``add()``; gauges that are set, not counted (the clock
skew, the certificate's expiry), are prometheus-client objects in metrics.py. Names,
labels, help texts and buckets are the documented ones (docs/observability.md).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any, NamedTuple, TypeVar

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


class Count(NamedTuple):
    """One counter: the RequestCounts attribute, name, help, labels, and the label values
    whose zero series are shown from the start (so rate() and alerts work at once). A
    counter whose first label is ``tenant`` is keyed by (tenant, ...), and its zero series
    are there for every tenant."""

    attribute: str
    name: str
    documentation: str
    labels: tuple[str, ...]
    zero: tuple[str, ...] = ()

    def zero_keys(self, tenants: tuple[str, ...]) -> list[Any]:
        if not self.labels:
            return [()]  # one series, shown from the start
        if self.labels[0] == "tenant":
            return [(tenant, value) for tenant in tenants for value in self.zero]
        return list(self.zero)


COUNTERS = (
    Count("requests", "aleacc_gateway_requests",
          "Answers sent to callers, by tenant, method and status.", ("tenant", "method", "status")),
    Count("upstream_responses", "aleacc_gateway_upstream_responses",
          "Statuses received from the upstream, by tenant.", ("tenant", "status")),
    Count("client_ip", "aleacc_gateway_client_ip",
          "How X-Client-Ip was derived: xff, peer or fallback.", ("source",), CLIENT_IP_SOURCES),
    Count("signing_failures", "aleacc_gateway_signing_failures",
          "Requests that could not be signed, by tenant and reason.", ("tenant", "reason"),
          SIGNING_FAILURES),
    Count("upstream_errors", "aleacc_gateway_upstream_errors",
          f"Failed upstream attempts, by kind ({', '.join(FAULT_KINDS)}).", ("kind",)),
    Count("connections_closed", "aleacc_gateway_connections_closed",
          "Client connections the gateway closed itself, by reason: overloaded, "
          "not_allowed, idle_timeout, header_timeout, send_timeout.", ("reason",), CLOSE_REASONS),
    Count("tls_refusals", "aleacc_gateway_tls_refusals",
          "TLS clients refused, by reason: handshake (no or untrusted certificate, "
          "protocol) or name (not in access.allowed_client_names).", ("reason",), TLS_REFUSALS),
    Count("secret_reloads", "aleacc_gateway_secret_reloads",
          "Secret (re)loads, by tenant and result: loaded or error.", ("tenant", "result"),
          RELOAD_RESULTS),
    Count("rate_limited", "aleacc_gateway_rate_limited",
          "Requests answered 429, by tenant and scope: tenant (its rate_per_s) or player "
          "(limits.player_rate_per_s).", ("tenant", "scope"), RATE_LIMIT_SCOPES),
    Count("spans_dropped", "aleacc_gateway_spans_dropped",
          "Trace spans not exported, by reason: queue_full (more waiting than the export "
          "queue holds) or export_failed (the collector did not take them).", ("reason",),
          SPAN_DROPS),
    Count("tls_reloads", "aleacc_gateway_tls_reloads",
          "Listener certificate (re)loads, by result: loaded or error.", ("result",),
          RELOAD_RESULTS),
    Count("rejections_suppressed", "aleacc_gateway_rejections_suppressed",
          "upstream_rejected events left out by logging.explain_rejections_per_s.", ()),
    Count("clock_disagreements", "aleacc_gateway_clock_disagreements",
          "Upstream Date offsets that disagreed with the recent ones: the clock "
          "correction was held.", ()),
    Count("store_errors", "aleacc_gateway_rate_limit_store_errors",
          "Requests not checked against the rate-limit store (let through or refused, as "
          "limits.on_store_error says), by reason: timeout, refused, auth or other.",
          ("reason",), STORE_ERRORS),
)  # fmt: skip
REQUEST_DURATION = (
    "aleacc_gateway_request_duration_seconds",
    "Time from a request's arrival to the end of its answer.",
)
UPSTREAM_DURATION = (
    "aleacc_gateway_upstream_duration_seconds",
    "Time from sending upstream to the upstream's response headers.",
)
STORE_DURATION = (
    "aleacc_gateway_rate_limit_store_duration_seconds",
    "Round trips to the rate-limit store (limits.store_url), answered or timed out.",
)
IN_FLIGHT = ("aleacc_gateway_in_flight_requests", "Requests being handled now.")

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


class RequestCounts:
    """What requests and connections add to, per process; read by a collector or folded
    into shared files. Each counter of COUNTERS is a dict from its label values (one
    value, or a tuple of them) to a count."""

    __slots__ = (
        "client_ip",
        "clock_disagreements",
        "connections_closed",
        "in_flight",
        "rate_limited",
        "rejections_suppressed",
        "request_duration",
        "requests",
        "secret_reloads",
        "signing_failures",
        "spans_dropped",
        "store_duration",
        "store_errors",
        "tls_refusals",
        "tls_reloads",
        "upstream_duration",
        "upstream_errors",
        "upstream_responses",
    )

    def __init__(self, tenants: tuple[str, ...] = (DEFAULT_TENANT,)) -> None:
        self.in_flight = 0
        self.requests: dict[tuple[str, str, int], int] = {}  # (tenant, method label, status)
        self.upstream_responses: dict[tuple[str, int], int] = {}
        self.client_ip: dict[str, int] = {}
        self.signing_failures: dict[tuple[str, str], int] = {}
        self.upstream_errors: dict[str, int] = {}
        self.connections_closed: dict[str, int] = {}
        self.tls_refusals: dict[str, int] = {}
        self.secret_reloads: dict[tuple[str, str], int] = {}
        self.tls_reloads: dict[str, int] = {}
        self.rate_limited: dict[tuple[str, str], int] = {}
        self.rejections_suppressed: dict[tuple[()], int] = {}  # no labels: the key is ()
        self.clock_disagreements: dict[tuple[()], int] = {}
        # Added to from the span exporter's thread: its keys all exist from the start,
        # so a fold or a scrape iterating over it never meets a new one.
        self.spans_dropped: dict[str, int] = {}
        self.store_errors: dict[str, int] = {}
        for count in COUNTERS:
            getattr(self, count.attribute).update(dict.fromkeys(count.zero_keys(tenants), 0))
        self.request_duration = Durations()
        self.upstream_duration = Durations()
        self.store_duration = Durations()

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
        for count in COUNTERS:
            family = CounterMetricFamily(count.name, count.documentation, labels=count.labels)
            for key, value in getattr(counts, count.attribute).items():
                family.add_metric(_labels(key), value)
            yield family
        yield _histogram(*REQUEST_DURATION, counts.request_duration)
        yield _histogram(*UPSTREAM_DURATION, counts.upstream_duration)
        yield _histogram(*STORE_DURATION, counts.store_duration)
        yield GaugeMetricFamily(*IN_FLIGHT, value=counts.in_flight)


def _histogram(name: str, documentation: str, durations: Durations) -> HistogramMetricFamily:
    cumulative, buckets = 0, []
    for le, count in zip(_LE, durations.counts, strict=True):
        cumulative += count
        buckets.append((le, cumulative))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=durations.sum)


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
        self._counters = [
            (Counter(c.name, c.documentation, c.labels, registry=registry), c.attribute)
            for c in COUNTERS
        ]
        for (counter, _), count in zip(self._counters, COUNTERS, strict=True):
            for key in count.zero_keys(tenants):
                _series(counter, key)
        self._request_duration = Histogram(
            *REQUEST_DURATION, buckets=DURATION_BUCKETS, registry=registry
        )
        self._upstream_duration = Histogram(
            *UPSTREAM_DURATION, buckets=DURATION_BUCKETS, registry=registry
        )
        self._store_duration = Histogram(
            *STORE_DURATION, buckets=DURATION_BUCKETS, registry=registry
        )
        self._in_flight = Gauge(*IN_FLIGHT, registry=registry, multiprocess_mode="livesum")

    def fold(self) -> None:
        """Add what requests counted since the last call to the shared metrics."""
        counts, folded = self._counts, self._folded
        for counter, attribute in self._counters:
            _fold_counter(counter, getattr(counts, attribute), getattr(folded, attribute))
        _fold_histogram(self._request_duration, counts.request_duration, folded.request_duration)
        _fold_histogram(self._upstream_duration, counts.upstream_duration, folded.upstream_duration)
        _fold_histogram(self._store_duration, counts.store_duration, folded.store_duration)
        self._in_flight.set(counts.in_flight)


def _labels(key: object) -> list[str]:
    """A count's key as label values: a status, a source, or (tenant, method, status)."""
    return [str(part) for part in key] if isinstance(key, tuple) else [str(key)]


def _series(counter: Counter, key: object) -> Counter:
    """The child of ``counter`` for ``key``; a counter without labels is its own."""
    return counter.labels(*_labels(key)) if key != () else counter


def _fold_counter(counter: Counter, counts: dict[Any, int], folded: dict[Any, int]) -> None:
    for key, value in counts.items():
        delta = value - folded.get(key, 0)
        if delta:
            _series(counter, key).inc(delta)
            folded[key] = value


def _fold_histogram(histogram: Histogram, durations: Durations, folded: Durations) -> None:
    # prometheus-client offers no way to add many observations at once; a Histogram keeps
    # one value per bucket (not cumulative) and one for the sum, which observe() adds to.
    if durations.counts == folded.counts:
        return
    for i, (count, before) in enumerate(zip(durations.counts, folded.counts, strict=True)):
        if count != before:
            histogram._buckets[i].inc(count - before)
    histogram._sum.inc(durations.sum - folded.sum)
    folded.counts[:] = durations.counts
    folded.sum = durations.sum
