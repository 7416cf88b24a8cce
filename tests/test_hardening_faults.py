"""Upstream faults (through the test relay), retries, slow and vanishing clients, limits."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from gateway.config import Route
from gateway.mock.upstream import journal

from .support import (
    Gateway,
    Mock,
    RawUpstream,
    StartGateway,
    log_events,
    serve_handler,
    settings_for,
)
from .test_hardening import exchange_raw, status_of
from .wire import Relay, check_framing

FAST = {"connect_timeout_s": 0.5, "timeout_s": 0.3, "retry_backoff_s": 0.0}


async def big_upstream(chunked: bool) -> tuple[web.AppRunner, int]:
    """An upstream answering 200 KB, with Content-Length or chunked."""
    payload = b"x" * 200_000

    async def handler(request: web.Request) -> web.StreamResponse:
        if not chunked:
            return web.Response(body=payload)
        response = web.StreamResponse()
        await response.prepare(request)
        for i in range(0, len(payload), 10_000):
            await response.write(payload[i : i + 10_000])
        await response.write_eof()
        return response

    runner, url = await serve_handler(handler)
    return runner, url.port or 0


def relay_settings(relay: Relay, **upstream: float) -> object:
    return settings_for(f"http://127.0.0.1:{relay.port}", upstream={**FAST, **upstream})


async def test_refused_connection_is_502_within_the_connect_timeout(
    start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gw = await start_gateway(settings_for(f"http://127.0.0.1:{port}", upstream=FAST))
    started = time.monotonic()
    async with client.get(gw.url / "x") as r:
        assert r.status == 502
        assert (await r.json())["error"] == "upstream_unavailable"
    assert time.monotonic() - started < FAST["connect_timeout_s"]


async def test_blackhole_is_504_at_the_configured_timeout(
    start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    relay = await Relay(("127.0.0.1", 9), mode="blackhole").start()
    try:
        gw = await start_gateway(relay_settings(relay))
        started = time.monotonic()
        async with client.post(gw.url / "x", data=b"body") as r:
            assert r.status == 504
        elapsed = time.monotonic() - started
        assert FAST["timeout_s"] <= elapsed < FAST["timeout_s"] + 1
        assert len(relay.streams) == 1  # not retried: the request was sent
        assert check_framing(bytes(relay.streams[0])) == 1
    finally:
        await relay.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_reset_mid_answer_aborts_the_caller(
    start_gateway: StartGateway, client: aiohttp.ClientSession, chunked: bool
) -> None:
    runner, port = await big_upstream(chunked)
    relay = await Relay(("127.0.0.1", port), mode="cut_response", cut_after=50_000).start()
    try:
        gw = await start_gateway(relay_settings(relay, timeout_s=5))
        async with client.get(gw.url / "big") as r:
            assert r.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()  # never a short body that looks complete
        assert gw.sample("aleacc_gateway_upstream_errors_total", kind="cut") == 1
        # The same answer, uncut, arrives whole.
        relay.mode = "pass"
        async with client.get(gw.url / "big") as r:
            assert len(await r.read()) == 200_000
    finally:
        await relay.close()
        await runner.cleanup()


async def test_reset_after_the_request_was_sent_is_never_retried(
    start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    relay = await Relay(("127.0.0.1", 9), mode="reset_on_request").start()
    try:
        gw = await start_gateway(relay_settings(relay, retries=3))
        for method in ("GET", "POST", "PUT", "DELETE"):
            async with client.request(method, gw.url / "x") as r:
                assert r.status == 502
        # One connection per request: idempotent or not, bytes that may have arrived are
        # never sent again (the pool has no stale-connection retry of its own).
        assert len(relay.streams) == 4
    finally:
        await relay.close()


async def test_connect_failure_is_retried_signed_afresh(
    mock: Mock, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    # A bound socket that does not listen yet refuses connections (ECONNREFUSED).
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    gw = await start_gateway(
        settings_for(
            f"http://127.0.0.1:{port}/api",
            upstream={**FAST, "retries": 1, "retry_backoff_s": 1.0},
        )
    )
    capture = capture_logs()
    logs = capture.__enter__()
    pending = asyncio.create_task(client.get(gw.url / "echo"))
    # Wait for the first attempt to fail (the gateway's own counter), then start listening
    # before the backoff ends: the retry finds the relay in front of the stand-in.
    for _ in range(500):
        if gw.sample("aleacc_gateway_upstream_errors_total", kind="connect") == 1:
            break
        await asyncio.sleep(0.005)
    relay = await Relay(("127.0.0.1", mock.relay.port)).start(sock=sock)
    try:
        async with await pending as r:
            assert r.status == 200
            request_id = r.headers["X-Request-Id"]
        capture.__exit__(None, None, None)
        seen = journal(mock.app)[-1]
        assert seen.authorization is not None
        assert seen.authorization.split(":")[2] == request_id
        (failed,) = [entry for entry in logs if entry["event"] == "upstream_attempt_failed"]
        assert (failed["attempt"], failed["kind"]) == (1, "connect")
        # The failed attempt was signed with its own id; the retry got a new one.
        assert failed["request_id"] != request_id
        assert gw.sample("aleacc_gateway_upstream_errors_total", kind="connect") == 1
        assert len(relay.streams) == 1
    finally:
        await relay.close()


async def test_a_slow_upstream_call_does_not_hold_up_others(
    start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        if request.path == "/slow":
            await release.wait()
        return web.Response(text=request.path)

    runner, url = await serve_handler(handler)
    try:
        gw = await start_gateway(settings_for(url))
        slow = asyncio.create_task(client.get(gw.url / "slow"))
        for i in range(20):
            async with client.get(gw.url / f"fast{i}") as r:
                assert await r.text() == f"/fast{i}"
        assert not slow.done()
        release.set()
        async with await slow as r:
            assert await r.text() == "/slow"
    finally:
        await runner.cleanup()


async def test_slow_headers_and_slow_bodies_are_cut_off(
    raw_upstream: RawUpstream, start_gateway: StartGateway
) -> None:
    gw = await start_gateway(
        settings_for(raw_upstream.url, limits={"header_timeout_s": 0.3, "body_timeout_s": 0.3})
    )
    port = gw.bound.proxy[1]
    slow_headers = b"GET /x HTTP/1.1\r\nHost: gw\r\nX-Drip: a"
    slow_body = b"POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: 50\r\n\r\nabc"
    for partial, status, message in (
        (slow_headers, 408, "the request headers took too long"),
        (slow_body, 408, "the request body took too long"),
    ):
        started = time.monotonic()
        answer = await exchange_raw(port, partial)
        assert status_of(answer) == status
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["message"] == message
        assert time.monotonic() - started < 3
    assert raw_upstream.connections == 0


async def test_an_idle_keep_alive_connection_is_not_a_slow_header(
    raw_upstream: RawUpstream, start_gateway: StartGateway
) -> None:
    gw = await start_gateway(settings_for(raw_upstream.url, limits={"header_timeout_s": 0.2}))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.bound.proxy[1])
    request = b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n"
    writer.write(request)
    assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200")
    # Idle past the header timeout: the connection stays usable (keep-alive is governed
    # by aiohttp's keepalive timeout, not by the header deadline).
    await asyncio.sleep(0.4)
    writer.write(request)
    assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200")
    writer.close()


async def test_concurrent_connections_are_bounded(
    raw_upstream: RawUpstream, start_gateway: StartGateway
) -> None:
    gw = await start_gateway(settings_for(raw_upstream.url, limits={"max_connections": 3}))
    port = gw.bound.proxy[1]
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    answer = await exchange_raw(port, b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert status_of(answer) == 503
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "overloaded"
    assert raw_upstream.connections == 0
    _, writer = held.pop()
    writer.close()
    # Once the gateway has seen that close, a new connection is served again.
    for _ in range(200):
        answer = await exchange_raw(
            port, b"GET /x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
        )
        if status_of(answer) == 200:
            break
        await asyncio.sleep(0.01)
    assert status_of(answer) == 200
    for _, writer in held:
        writer.close()


async def test_an_oversized_streamed_body_is_refused_with_bounded_reading(
    raw_upstream: RawUpstream,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
    logs: io.StringIO,
) -> None:
    limit = 64 * 1024
    gw = await start_gateway(settings_for(raw_upstream.url, limits={"max_body_bytes": limit}))
    sent = 0

    async def twenty_megabytes() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(320):
            sent += 65536
            yield b"z" * 65536

    try:
        async with client.post(gw.url / "x", data=twenty_megabytes()) as r:
            assert r.status == 413
    except aiohttp.ClientOSError:
        pass  # the gateway may close while the client is still sending
    (line,) = log_events(logs, "request")
    assert line["status"] == 413
    # Read at most the limit plus aiohttp's read buffer (high-water mark 128 KiB).
    assert limit < line["bytes_in"] <= limit + 128 * 1024 + 65536
    assert raw_upstream.connections == 0


async def test_a_caller_hanging_up_cancels_the_upstream_call(
    start_gateway: StartGateway, logs: io.StringIO
) -> None:
    entered = asyncio.Event()

    async def held(request: web.Request) -> web.Response:
        entered.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    runner, url = await serve_handler(held)
    relay = await Relay(("127.0.0.1", url.port or 0)).start()
    try:
        gw = await start_gateway(settings_for(f"http://127.0.0.1:{relay.port}"))
        baseline = len(asyncio.all_tasks())
        _, writer = await asyncio.open_connection("127.0.0.1", gw.bound.proxy[1])
        writer.write(b"GET /held HTTP/1.1\r\nHost: gw\r\n\r\n")
        await entered.wait()
        writer.transport.abort()  # the caller vanishes
        await relay.client_closed.wait()  # the gateway closed its upstream connection
        (line,) = log_events(logs, "request")
        assert (line["status"], line["error"]) == (499, "client_disconnected")
        assert relay.open_connections == 0
        assert gw.server.proxy.pool.open_connections == 0  # closed, not pooled
        assert gw.sample("aleacc_gateway_in_flight_requests") == 0
        for _ in range(100):  # the cancelled handler task finishes on the next turns
            if len(asyncio.all_tasks()) <= baseline:
                break
            await asyncio.sleep(0)
        assert len(asyncio.all_tasks()) <= baseline
    finally:
        await relay.close()
        await runner.cleanup()


async def test_expect_100_continue_is_honoured_for_acceptable_bodies(
    raw_upstream: RawUpstream, start_gateway: StartGateway
) -> None:
    gw = await start_gateway(settings_for(raw_upstream.url))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.bound.proxy[1])
    writer.write(
        b"POST /x HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\nContent-Length: 4\r\n"
        b"Connection: close\r\n\r\n"
    )
    assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"body")
    assert (await reader.read()).startswith(b"HTTP/1.1 200")
    writer.close()
    assert raw_upstream.requests[0].body == b"body"
    assert raw_upstream.requests[0].header("Expect") == []


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "evil.example"},
        {"Host": "169.254.169.254"},
        {"Host": "127.0.0.1:9090"},
        {"X-Forwarded-Host": "evil.example", "Forwarded": "host=evil.example"},
    ],
)
async def test_the_upstream_is_only_ever_the_configured_one(
    raw_upstream: RawUpstream, start_gateway: StartGateway, headers: dict[str, str]
) -> None:
    gw = await start_gateway(settings_for(raw_upstream.url))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    if "Host" not in headers:
        head = "Host: gw\r\n" + head
    answer = await exchange_raw(
        gw.bound.proxy[1], f"GET /x HTTP/1.1\r\n{head}Connection: close\r\n\r\n".encode()
    )
    assert status_of(answer) == 200
    (recorded,) = raw_upstream.requests
    assert recorded.header("Host") == [f"127.0.0.1:{raw_upstream.url.port}"]
    assert "evil" not in recorded.head.decode()


ROUTES = (Route("POST", "/player/*"), Route("GET", "/player/balance"), Route("*", "/echo"))


@pytest.mark.parametrize(
    ("method", "target", "allowed"),
    [
        ("GET", "/player/balance", True),
        ("POST", "/player/signin", True),
        ("POST", "/player/a/b", True),
        ("PUT", "/echo", True),
        ("GET", "/player/%62alance", True),  # decoded before matching
        ("GET", "/player//balance", True),  # repeated slashes collapse
        ("GET", "/player/signin", False),  # method not allowed there
        ("GET", "/admin", False),
        ("GET", "/admin?r=/player/balance", False),  # the query never matches
        ("GET", "/player/balance/extra", False),
        ("GET", "/Player/balance", False),  # case-sensitive
        ("POST", "/player", False),
        ("GET", "/echo%2F..", False),  # decodes to a dot segment: 400 before matching
    ],
)
async def test_route_allowlist(
    gateway_with_routes: Gateway, mock: Mock, method: str, target: str, allowed: bool
) -> None:
    before = len(journal(mock.app))
    head = f"{method} {target} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
    answer = await exchange_raw(
        gateway_with_routes.bound.proxy[1], f"{head}Content-Length: 0\r\n\r\n".encode()
    )
    status = status_of(answer)
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    if allowed:
        assert len(journal(mock.app)) == before + 1  # reached the stand-in, signed
        assert body.get("error") != "route_not_allowed"
    else:
        assert status in (400, 404)
        assert body["error"] in ("route_not_allowed", "bad_request")
        assert body["request_id"] is None  # never signed
        assert len(journal(mock.app)) == before


@pytest.fixture
async def gateway_with_routes(mock: Mock, start_gateway: StartGateway) -> Gateway:
    return await start_gateway(settings_for(mock.url, access={"routes": ROUTES}))
