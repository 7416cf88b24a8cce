"""The per-request counts expose exactly what prometheus-client's own metrics would.

For any sequence of requests, the scrape-time collector (one process) and the folded
multi-process metrics (a worker, folded at arbitrary points) give the same text as
Counter/Histogram/Gauge objects fed the same events one by one.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway import metrics as m
from gateway.metrics import CountsCollector, Metrics, RequestCounts, SharedCounts

TENANTS = ("default", "brand-b")


@dataclass
class Event:
    tenant: str
    method: str
    status: int
    duration: float
    source: str
    upstream: tuple[int, float] | None  # the upstream's status and time, if it answered
    fold_after: bool  # a worker folds here


durations = st.one_of(
    st.sampled_from(m.DURATION_BUCKETS),  # exactly on a bound: "less than or equal"
    st.floats(min_value=0, max_value=120, allow_nan=False),
)
events = st.lists(
    st.builds(
        Event,
        tenant=st.sampled_from(TENANTS),
        method=st.sampled_from(["GET", "POST", "OTHER"]),
        status=st.sampled_from([200, 403, 502]),
        duration=durations,
        source=st.sampled_from(m.CLIENT_IP_SOURCES),
        upstream=st.none() | st.tuples(st.sampled_from([200, 401, 403]), durations),
        fold_after=st.booleans(),
    ),
    max_size=40,
)


def record(counts: RequestCounts, event: Event) -> None:
    """The request path's own recording (Proxy._record calls it once per request)."""
    status, seconds = event.upstream or (None, 0.0)
    counts.record(
        event.tenant, event.method, event.status, event.duration, event.source, status, seconds
    )


def reference(history: list[Event], in_flight: int) -> str:
    """The same events through prometheus-client's own metric objects."""
    registry = CollectorRegistry()
    counters = {
        count.attribute: Counter(count.name, count.documentation, count.labels, registry=registry)
        for count in m.COUNTERS
    }
    for count in m.COUNTERS:
        for key in count.zero_keys(TENANTS):
            if count.labels:  # a counter without labels shows its one series by itself
                counters[count.attribute].labels(*(key if isinstance(key, tuple) else (key,)))
    requests, responses = counters["requests"], counters["upstream_responses"]
    client_ip = counters["client_ip"]
    histograms = {
        d.attribute: Histogram(
            d.name, d.documentation, buckets=m.DURATION_BUCKETS, registry=registry
        )
        for d in m.DECLARED
        if d.kind == "histogram"
    }
    request_duration, upstream_duration = (
        histograms["request_duration"],
        histograms["upstream_duration"],
    )
    (in_flight_gauge,) = (d for d in m.DECLARED if d.kind == "gauge")
    Gauge(in_flight_gauge.name, in_flight_gauge.documentation, registry=registry).set(in_flight)
    for event in history:
        requests.labels(event.tenant, event.method, str(event.status)).inc()
        request_duration.observe(event.duration)
        client_ip.labels(event.source).inc()
        if event.upstream is not None:
            responses.labels(event.tenant, str(event.upstream[0])).inc()
            upstream_duration.observe(event.upstream[1])
    return exposition(registry)


def exposition(registry: CollectorRegistry) -> str:
    """The text format, without the ``_created`` samples (their values are start times)."""
    lines = generate_latest(registry).decode().splitlines()
    return "\n".join(line for line in lines if "_created" not in line)


def normalised(text: str) -> tuple[str, dict[str, float]]:
    """The families in a fixed order (the two registries list them in different orders),
    with the sums apart: a sum added in folds is rounded differently, in the last bits,
    from one added value by value."""
    families: dict[str, list[str]] = {}
    sums: dict[str, float] = {}
    name = ""
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
        sample, _, value = line.rpartition(" ")
        if sample.endswith("_sum"):
            sums[sample] = float(value)
            continue
        families.setdefault(name, []).append(line)
    return "\n".join(line for key in sorted(families) for line in families[key]), sums


def assert_same(text: str, expected: str) -> None:
    lines, sums = normalised(text)
    expected_lines, expected_sums = normalised(expected)
    assert lines == expected_lines
    assert sums == pytest.approx(expected_sums, rel=1e-12)


@given(events, st.integers(min_value=0, max_value=3))
def test_the_collector_exposes_what_prometheus_client_would(
    history: list[Event], in_flight: int
) -> None:
    counts = RequestCounts(TENANTS)
    registry = CollectorRegistry()
    registry.register(CountsCollector(counts))
    for event in history:
        record(counts, event)
    counts.in_flight = in_flight
    assert_same(exposition(registry), reference(history, in_flight))


@given(events, st.integers(min_value=0, max_value=3))
def test_folding_at_any_points_adds_up_to_the_same(history: list[Event], in_flight: int) -> None:
    counts = RequestCounts(TENANTS)
    registry = CollectorRegistry()
    shared = SharedCounts(counts, registry, TENANTS)
    for event in history:
        record(counts, event)
        if event.fold_after:
            shared.fold()
    counts.in_flight = in_flight
    shared.fold()
    shared.fold()  # nothing new: adds nothing
    assert_same(exposition(registry), reference(history, in_flight))


def test_every_name_is_registered_once() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    names = {metric.name for metric in registry.collect()}
    assert {
        "aleacc_gateway_requests",
        "aleacc_gateway_upstream_responses",
        "aleacc_gateway_request_duration_seconds",
        "aleacc_gateway_upstream_duration_seconds",
        "aleacc_gateway_in_flight_requests",
        "aleacc_gateway_client_ip",
        *(count.name for count in m.COUNTERS),
    } <= names
    with pytest.raises(ValueError, match="Duplicated timeseries"):  # describe() names it
        Counter("aleacc_gateway_requests", "again", registry=registry)
