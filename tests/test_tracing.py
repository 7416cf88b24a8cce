"""OpenTelemetry traces through real sockets: the gateway exports over OTLP/HTTP to a
receiver that decodes each request with opentelemetry-proto's own messages; the upstream
records the traceparent it was sent."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from yarl import URL

from gateway.config import TracingSettings

from .support import (
    SESSION_ID,
    Gateway,
    RawUpstream,
    StartGateway,
    config_file,
    run_cli,
    serve_app,
    settings_for,
    unused_port,
)

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CALLER = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


@dataclasses.dataclass
class Span:
    """One exported span, as the receiver decoded it."""

    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, object]
    service: str


@dataclasses.dataclass
class Collector:
    """An OTLP/HTTP receiver: every span it was sent."""

    url: URL
    spans: list[Span] = dataclasses.field(default_factory=list)
    arrived: asyncio.Condition = dataclasses.field(default_factory=asyncio.Condition)

    async def wait_for(self, count: int) -> list[Span]:
        async with self.arrived:
            await self.arrived.wait_for(lambda: len(self.spans) >= count)
        return self.spans


@pytest.fixture
async def collector(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Collector]:
    # The SDK's own variable: export every 50 ms rather than every 5 s.
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    found: list[Collector] = []

    async def receive(request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        collector = found[0]
        async with collector.arrived:
            for resource_spans in export.resource_spans:
                service = next(
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                )
                for scope in resource_spans.scope_spans:
                    collector.spans.extend(_decoded(span, service) for span in scope.spans)
            collector.arrived.notify_all()
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    app = web.Application()
    app.router.add_post("/v1/traces", receive)
    runner, url = await serve_app(app)
    found.append(Collector(url))
    yield found[0]
    await runner.cleanup()


def _decoded(span: object, service: str) -> Span:
    attributes = {}
    for a in span.attributes:  # type: ignore[attr-defined]
        value = a.value
        attributes[a.key] = (
            value.string_value if value.HasField("string_value") else value.int_value
        )
    return Span(
        span.name,  # type: ignore[attr-defined]
        span.kind,  # type: ignore[attr-defined]
        span.trace_id.hex(),  # type: ignore[attr-defined]
        span.span_id.hex(),  # type: ignore[attr-defined]
        span.parent_span_id.hex(),  # type: ignore[attr-defined]
        attributes,
        service,
    )


SERVER, CLIENT = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind


async def traced_gateway(
    start_gateway: StartGateway, upstream: URL, collector_url: URL | str, ratio: float = 1.0
) -> Gateway:
    settings = settings_for(upstream)
    tracing = TracingSettings(
        otlp_endpoint=URL(str(collector_url)), sample_ratio=ratio, service_name="gw-test"
    )
    return await start_gateway(dataclasses.replace(settings, tracing=tracing))


async def test_a_callers_trace_is_continued_and_passed_upstream(
    start_gateway: StartGateway, raw_upstream: RawUpstream, collector: Collector
) -> None:
    gw = await traced_gateway(start_gateway, raw_upstream.url, collector.url)
    headers = {"traceparent": CALLER, "tracestate": "casino=1", "X-Player-Session-Id": SESSION_ID}
    async with (
        aiohttp.ClientSession() as client,
        client.get(
            gw.url / "player/balance", params={"token": "query-secret"}, headers=headers
        ) as r,
    ):
        assert r.status == 200
        request_id = r.headers["X-Request-Id"]
    server, client_span = sorted(await collector.wait_for(2), key=lambda s: s.kind)
    assert (server.kind, client_span.kind) == (SERVER, CLIENT)
    assert server.trace_id == client_span.trace_id == CALLER_TRACE
    assert server.parent_span_id == CALLER_SPAN
    assert client_span.parent_span_id == server.span_id
    assert server.service == "gw-test"
    assert server.attributes == {
        "http.request.method": "GET",
        "http.response.status_code": 200,
        "aleacc_gateway.request_id": request_id,
        "aleacc_gateway.tenant": "default",
        "aleacc_gateway.upstream_status": 200,
    }
    assert client_span.attributes == {
        "http.request.method": "GET",
        "server.address": raw_upstream.url.raw_authority,
        "http.response.status_code": 200,
        "aleacc_gateway.request_id": request_id,
    }
    # The upstream got the gateway's client span as the parent, the caller's tracestate kept.
    (recorded,) = raw_upstream.requests
    assert recorded.header("traceparent") == [f"00-{CALLER_TRACE}-{client_span.span_id}-01"]
    assert recorded.header("tracestate") == ["casino=1"]
    # Never the query, the session or the signature.
    text = json.dumps([dataclasses.asdict(s) for s in collector.spans])
    authorization = recorded.header("Authorization")[0]
    for secret in ("query-secret", SESSION_ID, authorization.split(":")[1]):
        assert secret not in text


async def test_sampling_follows_the_ratio_and_the_callers_decision(
    start_gateway: StartGateway, raw_upstream: RawUpstream, collector: Collector
) -> None:
    gw = await traced_gateway(start_gateway, raw_upstream.url, collector.url, ratio=0.0)
    async with aiohttp.ClientSession() as client:
        async with client.get(gw.url / "unsampled") as r:
            assert r.status == 200
        async with client.get(gw.url / "sampled", headers={"traceparent": CALLER}) as r:
            assert r.status == 200
    spans = await collector.wait_for(2)
    # The root the ratio left out: not recorded, yet its trace context goes upstream.
    unsampled = raw_upstream.requests[0].header("traceparent")[0]
    assert int(unsampled.rsplit("-", 1)[1], 16) & 1 == 0  # the "sampled" flag is off
    assert {s.trace_id for s in spans} == {CALLER_TRACE}


async def test_an_error_is_the_spans_error_kind(
    start_gateway: StartGateway, collector: Collector
) -> None:
    closed = URL(f"http://127.0.0.1:{unused_port()}/api")
    gw = await traced_gateway(start_gateway, closed, collector.url)
    async with aiohttp.ClientSession() as client, client.get(gw.url / "x") as r:
        assert r.status == 502
    server, client_span = sorted(await collector.wait_for(2), key=lambda s: s.kind)
    assert server.attributes["error.type"] == "upstream_unavailable"
    assert client_span.attributes["error.type"] == "upstream_connect"


async def test_a_dead_collector_costs_requests_nothing_but_their_spans(
    start_gateway: StartGateway, raw_upstream: RawUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")  # the SDK's: give up after 1 s
    gw = await traced_gateway(start_gateway, raw_upstream.url, f"http://127.0.0.1:{unused_port()}")
    async with aiohttp.ClientSession() as client:
        for _ in range(3):
            async with client.get(gw.url / "x") as r:
                assert r.status == 200
    await gw.server.stop()  # exports what is queued: the collector is not there
    assert gw.sample("aleacc_gateway_spans_dropped_total", reason="export_failed") == 6
    assert gw.sample("aleacc_gateway_spans_dropped_total", reason="queue_full") == 0


async def test_without_an_endpoint_nothing_of_opentelemetry_is_loaded(tmp_path: Path) -> None:
    # A gateway that starts, answers a request and stops, then lists what was imported.
    script = (
        "import asyncio, sys, urllib.request\n"
        "from yarl import URL\n"
        "from gateway.config import ListenAddress, ServerSettings, Settings, SigningSettings\n"
        "from gateway.config import UpstreamSettings\n"
        "from gateway.server import GatewayServer\n"
        "async def main():\n"
        "    any_port = ListenAddress('127.0.0.1', 0)\n"
        "    settings = Settings(\n"
        "        server=ServerSettings(listen=any_port, admin_listen=any_port),\n"
        "        upstream=UpstreamSettings(url=URL('http://127.0.0.1:9')),\n"
        "        signing=SigningSettings(api_id='a', secret_env='S'))\n"
        "    server = GatewayServer(settings, environ={'S': 'ab' * 32})\n"
        "    bound = await server.start()\n"
        "    reader, writer = await asyncio.open_connection(*bound.proxy)\n"
        "    writer.write(b'GET /x HTTP/1.1\\r\\nHost: gw\\r\\nConnection: close\\r\\n\\r\\n')\n"
        "    assert (await reader.read()).startswith(b'HTTP/1.1 502')\n"
        "    await server.stop()\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')), file=sys.stderr)\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate()
    assert (process.returncode, err) == (0, b"[]\n")


async def test_an_endpoint_without_the_extra_is_a_configuration_error(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("ab" * 32)
    config = config_file(tmp_path / "gw.toml", URL("http://127.0.0.1:9/api"), secret)
    config.write_text(config.read_text() + '[tracing]\notlp_endpoint = "http://collector:4318"\n')
    code, out, _ = await run_cli("check-config", "--config", str(config))
    assert code == 0, out
    # Without the extra (an opentelemetry package that cannot be imported shadows it):
    shadow = tmp_path / "no-otel" / "opentelemetry"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('not installed')\n")
    code, _, err = await run_cli(
        "check-config", "--config", str(config), env={"PYTHONPATH": str(shadow.parent)}
    )
    assert (code, err.splitlines()[1:]) == (
        1,
        [
            "  - tracing.otlp_endpoint: tracing needs the otel extra: "
            "pip install 'aleacc-gateway[otel]'"
        ],
    )
