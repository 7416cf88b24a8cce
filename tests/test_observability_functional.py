"""Metrics, readiness and logs, observed from outside: /metrics scraped over HTTP."""

from __future__ import annotations

import asyncio
import io
import json
import re
import socket
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.logs import session_tag
from gateway.mock.demo import metrics_summary
from gateway.mock.upstream import DEMO_SECRET, MockSettings, create_mock_app

from .support import (
    SESSION_ID,
    Gateway,
    Mock,
    RawUpstream,
    StartGateway,
    log_events,
    serve_app,
    serve_handler,
    settings_for,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: aiohttp.ClientSession, gateway: Gateway) -> Samples:
    async with client.get(gateway.admin_url / "metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_counters_histograms_and_gauges_match_the_traffic(
    gateway: Gateway, mock: Mock, client: aiohttp.ClientSession
) -> None:
    before = await scrape(client, gateway)
    calls = [
        ("GET", "/echo", {}, 200),
        ("POST", "/echo", {}, 200),
        ("GET", "/player/balance", {"X-Mock-Fault": "status=401"}, 401),
        ("GET", "/echo", {"X-Mock-Fault": "status=403"}, 403),
        ("GET", "/echo", {"X-Mock-Fault": "status=500"}, 500),
        ("GET", "/echo", {"X-Mock-Fault": "delay=0.3"}, 200),
    ]
    for method, path, headers, expected in calls:
        async with client.request(method, gateway.url / path.lstrip("/"), headers=headers) as r:
            await r.read()
            assert r.status == expected
    after = await scrape(client, gateway)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("aleacc_gateway_requests_total", tenant="default", method="GET", status="200") == 2
    assert (
        delta("aleacc_gateway_requests_total", tenant="default", method="POST", status="200") == 1
    )
    for status in ("401", "403", "500"):
        assert (
            delta("aleacc_gateway_requests_total", tenant="default", method="GET", status=status)
            == 1
        )
        assert (
            delta("aleacc_gateway_upstream_responses_total", tenant="default", status=status) == 1
        )
    assert delta("aleacc_gateway_upstream_responses_total", tenant="default", status="200") == 3
    assert delta("aleacc_gateway_request_duration_seconds_count") == 6
    assert delta("aleacc_gateway_upstream_duration_seconds_count") == 6
    # Exactly one upstream call took longer than 0.25 s: the delayed one.
    assert delta("aleacc_gateway_upstream_duration_seconds_bucket", le="0.25") == 5
    assert delta("aleacc_gateway_upstream_duration_seconds_bucket", le="0.5") == 6
    assert delta("aleacc_gateway_client_ip_total", source="peer") == 6
    assert value(after, "aleacc_gateway_in_flight_requests") == 0
    assert (
        delta(
            "aleacc_gateway_signing_failures_total", tenant="default", reason="secret_unavailable"
        )
        == 0
    )
    assert (
        value(after, "aleacc_gateway_secret_reloads_total", tenant="default", result="loaded") == 1
    )


async def test_in_flight_counts_a_request_while_it_waits(
    start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        entered.set()
        await release.wait()
        return web.Response(text="done")

    runner, url = await serve_handler(handler)
    try:
        gw = await start_gateway(settings_for(url))
        pending = asyncio.create_task(client.get(gw.url / "slow"))
        await entered.wait()
        assert value(await scrape(client, gw), "aleacc_gateway_in_flight_requests") == 1
        release.set()
        async with await pending as r:
            assert await r.text() == "done"
        assert value(await scrape(client, gw), "aleacc_gateway_in_flight_requests") == 0
    finally:
        await runner.cleanup()


async def test_refused_connection_and_missing_secret_are_counted(
    start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    refused = await start_gateway(settings_for(closed))
    async with client.get(refused.url / "x") as r:
        assert r.status == 502
    samples = await scrape(client, refused)
    assert value(samples, "aleacc_gateway_upstream_errors_total", kind="connect") == 2
    assert (
        value(
            samples, "aleacc_gateway_requests_total", tenant="default", method="GET", status="502"
        )
        == 1
    )
    assert value(samples, "aleacc_gateway_upstream_duration_seconds_count") == 0

    no_secret = await start_gateway(settings_for(closed), environ={})
    async with client.post(no_secret.url / "x", data=b"{}") as r:
        assert r.status == 500
    samples = await scrape(client, no_secret)
    assert (
        value(
            samples,
            "aleacc_gateway_signing_failures_total",
            tenant="default",
            reason="secret_unavailable",
        )
        == 1
    )
    assert (
        value(
            samples, "aleacc_gateway_requests_total", tenant="default", method="POST", status="500"
        )
        == 1
    )
    assert (
        value(samples, "aleacc_gateway_secret_reloads_total", tenant="default", result="error") == 1
    )
    assert value(samples, "aleacc_gateway_upstream_errors_total", kind="connect") == 0


async def test_unusual_methods_share_one_label(
    gateway: Gateway, client: aiohttp.ClientSession
) -> None:
    # Methods aiohttp's parser accepts but the label set does not name.
    for method in ("PROPFIND", "MKCOL", "PURGE"):
        async with client.request(method, gateway.url / "echo") as r:
            await r.read()
    samples = await scrape(client, gateway)
    assert (
        value(
            samples, "aleacc_gateway_requests_total", tenant="default", method="OTHER", status="404"
        )
        == 3
    )
    assert not any(("method", "PURGE") in labels for _, labels in samples)


async def test_clock_skew_gauge_and_rate_limited_warning(
    start_gateway: StartGateway, client: aiohttp.ClientSession, logs: io.StringIO
) -> None:
    app = create_mock_app(MockSettings(base_path="/api", clock_offset_s=120))
    runner, url = await serve_app(app)
    try:
        gw = await start_gateway(settings_for(url / "api"))
        for _ in range(3):
            async with client.get(gw.url / "echo") as r:
                assert r.status == 200
        skew = value(await scrape(client, gw), "aleacc_gateway_clock_skew_seconds")
        assert 118 <= skew <= 121  # Date has one-second resolution
        warnings = [
            json.loads(line) for line in logs.getvalue().splitlines() if "clock_skew" in line
        ]
        assert len(warnings) == 1  # once a minute at most
        assert warnings[0]["level"] == "warning"
        assert warnings[0]["threshold_s"] == 30
    finally:
        await runner.cleanup()


async def test_no_skew_warning_within_the_threshold(
    gateway: Gateway, client: aiohttp.ClientSession, logs: io.StringIO
) -> None:
    async with client.get(gateway.url / "echo") as r:
        assert r.status == 200
    assert abs(value(await scrape(client, gateway), "aleacc_gateway_clock_skew_seconds")) <= 1
    assert "clock_skew" not in logs.getvalue()


async def wait_for_status(
    client: aiohttp.ClientSession, url: object, status: int
) -> dict[str, object]:
    """Poll /readyz until it answers ``status`` (the file watcher runs on its own timer)."""
    for _ in range(200):
        async with client.get(url) as r:  # type: ignore[arg-type]
            if r.status == status:
                return dict(await r.json())
        await asyncio.sleep(0.02)
    raise AssertionError(f"/readyz never answered {status}")


async def test_readiness_follows_the_secret_file(
    mock: Mock, start_gateway: StartGateway, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    secret = tmp_path / "api-secret"
    secret.write_bytes(DEMO_SECRET)
    gw = await start_gateway(
        settings_for(
            mock.url,
            signing={"secret_env": None, "secret_file": secret, "secret_poll_s": 0.05},
        )
    )
    ready = gw.admin_url / "readyz"
    async with client.get(gw.admin_url / "healthz") as r:
        assert r.status == 200
    assert (await wait_for_status(client, ready, 200))["status"] == "ready"

    secret.unlink()
    body = await wait_for_status(client, ready, 503)
    assert "signing with the last good secret" in str(body["reasons"])
    assert str(secret) in str(body["reasons"])
    async with client.get(gw.url / "echo") as r:
        assert r.status == 200  # the last good secret still signs

    secret.write_bytes(DEMO_SECRET)
    await wait_for_status(client, ready, 200)
    secret.write_bytes(b"\n")  # emptied
    body = await wait_for_status(client, ready, 503)
    assert "is empty" in str(body["reasons"])
    secret.write_bytes(DEMO_SECRET)
    await wait_for_status(client, ready, 200)

    samples = await scrape(client, gw)
    assert (
        value(samples, "aleacc_gateway_secret_reloads_total", tenant="default", result="error") == 2
    )
    # Restoring the same secret is not a new load; only the first read was.
    assert (
        value(samples, "aleacc_gateway_secret_reloads_total", tenant="default", result="loaded")
        == 1
    )
    assert DEMO_SECRET.decode() not in json.dumps(body)


async def test_readiness_without_any_secret(
    start_gateway: StartGateway, client: aiohttp.ClientSession, mock: Mock
) -> None:
    gw = await start_gateway(settings_for(mock.url), environ={})
    async with client.get(gw.admin_url / "readyz") as r:
        assert r.status == 503
        body = await r.json()
    assert body == {
        "status": "not ready",
        "reasons": [
            "tenant default: no API secret loaded: environment variable TEST_ALEACC_SECRET "
            "is unset or empty"
        ],
    }


async def test_admin_paths_are_not_on_the_proxy_port(
    gateway: Gateway, mock: Mock, client: aiohttp.ClientSession
) -> None:
    async with client.get(gateway.url / "metrics") as r:
        assert r.status == 404  # forwarded to the upstream, which has no such path
        assert await r.json() == {"error": "not_found", "base_path": "/api"}


async def test_one_access_line_per_request_with_its_fields(
    gateway: Gateway, mock: Mock, client: aiohttp.ClientSession, logs: io.StringIO
) -> None:
    async with client.post(
        (gateway.url / "echo").with_query(token="player-data"),
        data=b"12345",
        headers={"X-Player-Session-Id": SESSION_ID, "X-Forwarded-For": "198.51.100.7"},
    ) as r:
        assert r.status == 200
        request_id = r.headers["X-Request-Id"]
    async with client.get(gateway.url / "echo", headers={"X-Mock-Fault": "reset"}) as r:
        assert r.status == 502
    access = log_events(logs, "request")
    assert len(access) == 2
    ok, failed = access
    assert ok["request_id"] == request_id
    assert (ok["method"], ok["path"], ok["status"], ok["upstream_status"]) == (
        "POST",
        "/echo",
        200,
        200,
    )
    assert ok["client_ip"] == "198.51.100.7"
    assert ok["bytes_in"] == 5
    assert ok["bytes_out"] > 0
    assert ok["error"] is None
    assert isinstance(ok["duration_ms"], float)
    assert len(ok["session"]) == 12
    assert SESSION_ID not in logs.getvalue()
    assert "player-data" not in logs.getvalue()  # the query is never logged
    assert (failed["status"], failed["error"], failed["upstream_status"]) == (
        502,
        "upstream_unavailable",
        None,
    )
    assert failed["session"] is None


async def test_the_access_line_of_a_request_is_the_same_line_as_ever(
    gateway: Gateway, mock: Mock, client: aiohttp.ClientSession, logs: io.StringIO
) -> None:
    """Every key and value, in order, for one proxied request (the line as written
    through structlog before the access line was rendered on its own)."""
    headers = {
        "X-Player-Session-Id": SESSION_ID,
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    }
    url = (gateway.url / "echo").with_query(q="1")
    async with client.post(url, data=b"123", headers=headers) as r:
        assert r.status == 200
        request_id, size = r.headers["X-Request-Id"], len(await r.read())
    [line] = log_events(logs, "request")
    assert isinstance(line["duration_ms"], float)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", line["timestamp"])
    line["duration_ms"] = line["timestamp"] = "*"
    assert list(line.items()) == [
        ("level", "info"),
        ("request_id", request_id),
        ("tenant", "default"),
        ("method", "POST"),
        ("path", "/echo"),
        ("status", 200),
        ("upstream_status", 200),
        ("duration_ms", "*"),
        ("client_ip", "127.0.0.1"),
        ("client_name", None),
        ("bytes_in", 3),
        ("bytes_out", size),
        ("error", None),
        ("session", session_tag(SESSION_ID)),
        ("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("event", "request"),
        ("timestamp", "*"),
    ]


async def test_the_access_line_carries_a_valid_traceparents_trace_id(
    raw_upstream: RawUpstream, start_gateway: StartGateway, logs: io.StringIO
) -> None:
    gw = await start_gateway(settings_for(raw_upstream.url))
    valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    invalid = "00-NOT-A-TRACE-CONTEXT-VALUE-01"
    async with aiohttp.ClientSession() as client:
        for traceparent in (valid, invalid):
            async with client.get(gw.url / "x", headers={"traceparent": traceparent}) as r:
                assert r.status == 200
        async with client.get(gw.url / "x") as r:
            assert r.status == 200
    access = log_events(logs, "request")
    assert [a["trace_id"] for a in access] == ["4bf92f3577b34da6a3ce929d0e0e4736", None, None]
    assert "NOT-A-TRACE" not in logs.getvalue()  # ignored, never logged raw
    # The header itself passes through as the caller sent it, valid or not.
    sent = [r.header("traceparent") for r in raw_upstream.requests]
    assert sent == [[valid], [invalid], []]


async def test_session_tag_is_stable(
    gateway: Gateway, client: aiohttp.ClientSession, logs: io.StringIO
) -> None:
    for _ in range(2):
        async with client.get(gateway.url / "echo", headers={"X-Player-Session-Id": "s1"}):
            pass
    tags = [entry["session"] for entry in log_events(logs, "request")]
    assert len(tags) == 2
    assert len(set(tags)) == 1


MARKER = "ECHO-ME-" + SESSION_ID


@pytest.mark.parametrize(
    ("fault", "body", "status"),
    [
        ("reset", b"small", 502),
        ("delay=2", b"small", 504),
        ("", b"x" * 200, 413),
    ],
    ids=["502", "504", "413"],
)
async def test_local_error_bodies_never_echo_request_data(
    mock: Mock,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
    fault: str,
    body: bytes,
    status: int,
) -> None:
    gw = await start_gateway(
        settings_for(mock.url, upstream={"timeout_s": 0.2}, limits={"max_body_bytes": 100})
    )
    headers = {"X-Mock-Fault": fault, "X-Player-Session-Id": MARKER, "X-Anything": MARKER}
    url = (gw.url / "echo").with_query(q=MARKER)
    async with client.post(url, data=body + MARKER.encode(), headers=headers) as r:
        assert r.status == status
        answer = await r.read()
    assert set(json.loads(answer)) == {"error", "message", "request_id"}
    assert MARKER.encode() not in answer
    assert DEMO_SECRET not in answer


async def test_400_and_500_bodies_never_echo_request_data(
    mock: Mock, start_gateway: StartGateway
) -> None:
    for environ, target, status in (
        (None, f"/a/../b?q={MARKER}", 400),
        ({}, f"/echo?q={MARKER}", 500),  # no secret: signing_failed
    ):
        gw = await start_gateway(settings_for(mock.url), environ=environ)
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.bound.proxy[1])
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: {MARKER}\r\nX-Player-Session-Id: {MARKER}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        answer = await reader.read()
        writer.close()
        assert answer.startswith(f"HTTP/1.1 {status}".encode())
        assert MARKER.encode() not in answer


async def test_demo_summary_reads_real_metrics(
    gateway: Gateway, client: aiohttp.ClientSession
) -> None:
    async with client.get(
        gateway.url / "player/balance", headers={"X-Mock-Fault": "status=403"}
    ) as r:
        assert r.status == 401  # the stand-in checks the session header before faults
    async with client.get(gateway.admin_url / "metrics") as r:
        lines = metrics_summary(await r.text())
    assert lines == [
        "requests answered 1 (401: 1)",
        "upstream 401s 1, upstream 403s 0",
        "signing failures 0",
    ]


# Every family /metrics shows, in its order, with its type: the contract dashboards and
# alerts are written against, whatever the code that builds them looks like.
EXPOSED = [
    ("aleacc_gateway_requests", "counter"),
    ("aleacc_gateway_upstream_responses", "counter"),
    ("aleacc_gateway_client_ip", "counter"),
    ("aleacc_gateway_signing_failures", "counter"),
    ("aleacc_gateway_upstream_errors", "counter"),
    ("aleacc_gateway_connections_closed", "counter"),
    ("aleacc_gateway_tls_refusals", "counter"),
    ("aleacc_gateway_secret_reloads", "counter"),
    ("aleacc_gateway_rate_limited", "counter"),
    ("aleacc_gateway_spans_dropped", "counter"),
    ("aleacc_gateway_tls_reloads", "counter"),
    ("aleacc_gateway_rejections_suppressed", "counter"),
    ("aleacc_gateway_clock_disagreements", "counter"),
    ("aleacc_gateway_rate_limit_store_errors", "counter"),
    ("aleacc_gateway_request_duration_seconds", "histogram"),
    ("aleacc_gateway_upstream_duration_seconds", "histogram"),
    ("aleacc_gateway_rate_limit_store_duration_seconds", "histogram"),
    ("aleacc_gateway_in_flight_requests", "gauge"),
    ("aleacc_gateway_clock_skew_seconds", "gauge"),
    ("aleacc_gateway_clock_correction_seconds", "gauge"),
    ("aleacc_gateway_tls_certificate_expiry_seconds", "gauge"),
]


async def test_metrics_shows_every_family_with_its_type(
    gateway: Gateway, client: aiohttp.ClientSession
) -> None:
    async with client.get(gateway.admin_url / "metrics") as r:
        text = await r.text()
    families = [(f.name, f.type) for f in text_string_to_metric_families(text)]
    assert [f for f in families if f[0].startswith("aleacc_gateway_")] == EXPOSED
