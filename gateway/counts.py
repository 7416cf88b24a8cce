"""The per-request metrics as plain numbers, and their two ways out to Prometheus.

A request adds to integers and a bucket array here: no lock, no ``labels()`` lookup, no
metric object. The numbers are turned into metrics only when someone looks:

- one process: ``CountsCollector``, a custom prometheus-client collector (the library's
  way for exporters), builds the families from the numbers at scrape time;
- a worker (``server.workers > 1``): ``SharedCounts.fold`` adds what changed since its
  last call to prometheus-client's multi-process metrics (files the supervisor's
  /metrics sums), called just before buffered log lines are written, so a request whose
  access line can be read is counted there too.

Names, labels, help texts and buckets are those of the metrics they stand for (SPEC §7).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# From 100 µs (the gateway's own overhead) to a minute (a slow upstream call).
DURATION_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
_LE = [*map(floatToGoString, DURATION_BUCKETS), "+Inf"]

CLIENT_IP_SOURCES = ("xff", "peer", "fallback")

REQUESTS = ("aleacc_gateway_requests", "Answers sent to callers, by method and status.")
UPSTREAM_RESPONSES = ("aleacc_gateway_upstream_responses", "Statuses received from the upstream.")
CLIENT_IP = ("aleacc_gateway_client_ip", "How X-Client-Ip was derived: xff, peer or fallback.")
REQUEST_DURATION = (
    "aleacc_gateway_request_duration_seconds",
    "Time from a request's arrival to the end of its answer.",
)
UPSTREAM_DURATION = (
    "aleacc_gateway_upstream_duration_seconds",
    "Time from sending upstream to the upstream's response headers.",
)
IN_FLIGHT = ("aleacc_gateway_in_flight_requests", "Requests being handled now.")


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
    """What requests add to, per process; read by a collector or folded into shared files."""

    __slots__ = (
        "client_ip",
        "in_flight",
        "request_duration",
        "requests",
        "upstream_duration",
        "upstream_responses",
    )

    def __init__(self) -> None:
        self.in_flight = 0
        self.requests: dict[tuple[str, int], int] = {}  # (method label, status)
        self.upstream_responses: dict[int, int] = {}
        self.client_ip = dict.fromkeys(CLIENT_IP_SOURCES, 0)  # zero series from the start
        self.request_duration = Durations()
        self.upstream_duration = Durations()


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
        yield _counter(*REQUESTS, ["method", "status"], counts.requests)
        yield _counter(*UPSTREAM_RESPONSES, ["status"], counts.upstream_responses)
        yield _histogram(*REQUEST_DURATION, counts.request_duration)
        yield _histogram(*UPSTREAM_DURATION, counts.upstream_duration)
        yield GaugeMetricFamily(*IN_FLIGHT, value=counts.in_flight)
        yield _counter(*CLIENT_IP, ["source"], counts.client_ip)


def _counter(
    name: str, documentation: str, labels: list[str], counts: dict[Any, int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for key, value in counts.items():
        family.add_metric(_labels(key), value)
    return family


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

    def __init__(self, counts: RequestCounts, registry: CollectorRegistry) -> None:
        self._counts = counts
        self._folded = RequestCounts()
        self._requests = Counter(*REQUESTS, ["method", "status"], registry=registry)
        self._responses = Counter(*UPSTREAM_RESPONSES, ["status"], registry=registry)
        self._client_ip = Counter(*CLIENT_IP, ["source"], registry=registry)
        self._request_duration = Histogram(
            *REQUEST_DURATION, buckets=DURATION_BUCKETS, registry=registry
        )
        self._upstream_duration = Histogram(
            *UPSTREAM_DURATION, buckets=DURATION_BUCKETS, registry=registry
        )
        self._in_flight = Gauge(*IN_FLIGHT, registry=registry, multiprocess_mode="livesum")
        for source in CLIENT_IP_SOURCES:
            self._client_ip.labels(source)

    def fold(self) -> None:
        """Add what requests counted since the last call to the shared metrics."""
        counts, folded = self._counts, self._folded
        _fold_counter(self._requests, counts.requests, folded.requests)
        _fold_counter(self._responses, counts.upstream_responses, folded.upstream_responses)
        _fold_counter(self._client_ip, counts.client_ip, folded.client_ip)
        _fold_histogram(self._request_duration, counts.request_duration, folded.request_duration)
        _fold_histogram(self._upstream_duration, counts.upstream_duration, folded.upstream_duration)
        self._in_flight.set(counts.in_flight)


def _labels(key: object) -> list[str]:
    """A count's key as label values: a status, a source, or (method, status)."""
    return [str(part) for part in key] if isinstance(key, tuple) else [str(key)]


def _fold_counter(counter: Counter, counts: dict[Any, int], folded: dict[Any, int]) -> None:
    for key, value in counts.items():
        delta = value - folded.get(key, 0)
        if delta:
            counter.labels(*_labels(key)).inc(delta)
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
