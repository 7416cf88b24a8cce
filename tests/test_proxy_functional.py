"""The gateway between a real client and a real upstream, through loopback sockets."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs
from yarl import URL

from gateway.config import Route
from gateway.mock.upstream import DEMO_API_ID, journal

from .support import (
    FAST,
    GET_CLOSE,
    SESSION_ID,
    Gateway,
    Mock,
    RawUpstream,
    StartGateway,
    log_events,
    networks,
    relay_settings,
    serve_handler,
    settings_for,
    verify_recorded,
)
from .test_hardening import exchange_raw, status_of
from .wire import Relay

XFF = {"X-Forwarded-For": "198.51.100.23, 10.0.0.5"}
PLAYER = {"username": "ann", "password": "pw"}


async def signin(client: aiohttp.ClientSession, gateway: Gateway) -> str:
    body = json.dumps(PLAYER)
    hdrs = {**XFF, "Content-Type": "application/json"}
    async with client.post(gateway.url / "player/signup", data=body, headers=hdrs) as r:
        assert r.status == 201
    async with client.post(gateway.url / "player/signin", data=body, headers=hdrs) as r:
        assert r.status == 200
        return str((await r.json())["session_id"])


async def test_player_walk_through_the_stand_in(
    gateway: Gateway, mock: Mock, client: aiohttp.ClientSession
) -> None:
    session_id = await signin(client, gateway)
    headers = {**XFF, "X-Player-Session-Id": session_id}
    async with client.get(gateway.url / "player/balance", headers=headers) as r:
        assert r.status == 200
        assert (await r.json())["balance"] == "100.00"
        request_id = r.headers["X-Request-Id"]
    seen = journal(mock.app)[-1]
    assert seen.client_ip == "198.51.100.23"
    assert seen.session_id == session_id
    assert seen.authorization is not None
    assert f":{request_id}:" in seen.authorization
    async with client.post(gateway.url / "player/signout", headers=headers) as r:
        assert r.status == 200


async def test_bytes_sent_are_the_bytes_signed(
    raw_upstream: RawUpstream, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(settings_for(raw_upstream.url / "api"))
    target = "/player/a%7e%7E/b%20c;p=1?z=1&a=%20x+y&a=2&&b=%2F"
    body = b'{"b": 2,  "a": [1,2]}\n'
    async with client.post(
        URL(f"{gw.url}{target}", encoded=True),
        data=body,
        headers={"Content-Type": "application/json; charset=utf-8", **XFF},
    ) as r:
        assert r.status == 200
        request_id = r.headers["X-Request-Id"]
    recorded = raw_upstream.requests[0]
    assert recorded.request_line == f"POST /api{target} HTTP/1.1".encode()
    assert recorded.body == body
    assert recorded.header("Content-Length") == [str(len(body))]
    assert recorded.header("Host") == [f"127.0.0.1:{raw_upstream.url.port}"]
    auth = verify_recorded(recorded)
    assert auth.request_id == request_id
    assert auth.api_id == DEMO_API_ID


@pytest.mark.parametrize(
    ("base", "target", "sent"),
    [
        ("/api", "/x", "/api/x"),
        ("/api/", "/x", "/api/x"),
        ("", "/x?a=1", "/x?a=1"),
        ("/", "/", "/"),
        ("/api", "/x?", "/api/x"),  # an empty query is no query
        ("/a%20b", "/c%2Fd", "/a%20b/c%2Fd"),
    ],
)
async def test_base_path_joins_without_doubled_or_dropped_slash(
    raw_upstream: RawUpstream,
    start_gateway: StartGateway,
    base: str,
    target: str,
    sent: str,
) -> None:
    gw = await start_gateway(settings_for(f"{raw_upstream.url}{base}"))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.bound.proxy[1])
    writer.write(f"GET {target} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".encode())
    assert (await reader.read()).startswith(b"HTTP/1.1 200")
    writer.close()
    assert raw_upstream.requests[0].target == sent
    verify_recorded(raw_upstream.requests[0])


async def test_headers_forwarded_dropped_and_replaced(
    raw_upstream: RawUpstream, start_gateway: StartGateway
) -> None:
    gw = await start_gateway(settings_for(raw_upstream.url))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.bound.proxy[1])
    writer.write(
        b"POST /x HTTP/1.1\r\n"
        b"Host: evil.example\r\n"
        b"Authorization: Bearer caller-token\r\n"
        b"X-Client-Ip: 6.6.6.6\r\n"
        b"X-Player-Session-Id: " + SESSION_ID.encode() + b"\r\n"
        b"X-Forwarded-For: 198.51.100.23\r\n"
        b"X-Forwarded-Host: internal.example\r\n"
        b"X-Forwarded-Proto: http\r\n"
        b"Forwarded: for=10.0.0.1\r\n"
        b"Connection: close, X-Hop-Secret\r\n"
        b"X-Hop-Secret: internal\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"TE: trailers\r\n"
        b"Proxy-Authorization: Basic x\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"Expect: 100-continue\r\n"
        b"Accept-Encoding: gzip\r\n"
        b"X-Custom: one\r\n"
        b"X-Custom: two\r\n"
        b"Content-Length: 2\r\n"
        b"\r\n{}"
    )
    await reader.read()
    writer.close()
    recorded = raw_upstream.requests[0]
    names = [name.lower() for name, _ in recorded.headers]
    for dropped in (
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "forwarded",
        "connection",
        "x-hop-secret",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
        "expect",
        "transfer-encoding",
        "user-agent",
        "content-type",
    ):
        assert dropped not in names, dropped
    assert recorded.header("Host") == [f"127.0.0.1:{raw_upstream.url.port}"]
    assert recorded.header("X-Client-Ip") == ["198.51.100.23"]
    assert recorded.header("X-Player-Session-Id") == [SESSION_ID]
    assert recorded.header("X-Custom") == ["one", "two"]
    assert recorded.header("Accept-Encoding") == ["gzip"]
    assert recorded.header("Content-Length") == ["2"]
    assert len(recorded.header("Authorization")) == 1
    assert recorded.header("Authorization")[0].startswith(f"amx {DEMO_API_ID}:")
    verify_recorded(recorded)


async def test_proxy_headers_forwarded_when_configured(
    raw_upstream: RawUpstream, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(
        settings_for(raw_upstream.url, upstream={"forward_proxy_headers": True})
    )
    async with client.get(gw.url / "x", headers={**XFF, "Forwarded": "for=1.2.3.4"}) as r:
        assert r.status == 200
    recorded = raw_upstream.requests[0]
    assert recorded.header("X-Forwarded-For") == [XFF["X-Forwarded-For"]]
    assert recorded.header("Forwarded") == ["for=1.2.3.4"]


async def test_untrusted_peer_ignores_forwarded_for(
    raw_upstream: RawUpstream, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(
        settings_for(raw_upstream.url, client_ip={"trusted_proxies": networks("10.0.0.0/8")})
    )
    async with client.get(gw.url / "x", headers=XFF) as r:
        assert r.status == 200
    assert raw_upstream.requests[0].header("X-Client-Ip") == ["127.0.0.1"]
    assert gw.sample("aleacc_gateway_client_ip_total", source="peer") == 1


async def test_response_relayed_with_hop_by_hop_removed(
    raw_upstream: RawUpstream, start_gateway: StartGateway
) -> None:
    raw_upstream.response = (
        b"HTTP/1.1 302 Found\r\n"
        b"Location: https://elsewhere.example/\r\n"
        b"Set-Cookie: a=1\r\n"
        b"Set-Cookie: b=2\r\n"
        b"Connection: close, X-Upstream-Hop\r\n"
        b"X-Upstream-Hop: 1\r\n"
        b"Keep-Alive: timeout=3\r\n"
        b"X-Request-Id: upstream-made-this\r\n"
        b"Content-Type: text/plain\r\n"
        b"Content-Length: 5\r\n\r\nmoved"
    )
    gw = await start_gateway(settings_for(raw_upstream.url))
    async with (
        aiohttp.ClientSession() as client,
        client.get(gw.url / "x", allow_redirects=False) as r,
    ):
        assert r.status == 302  # not followed by the gateway
        assert await r.read() == b"moved"
        assert r.headers["Location"] == "https://elsewhere.example/"
        assert r.headers.getall("Set-Cookie") == ["a=1", "b=2"]
        assert "X-Upstream-Hop" not in r.headers
        assert "Keep-Alive" not in r.headers
        assert len(r.headers.getall("X-Request-Id")) == 1
        auth = verify_recorded(raw_upstream.requests[0])
        assert r.headers["X-Request-Id"] == auth.request_id
    assert len(raw_upstream.requests) == 1


async def test_gzip_passes_through_compressed(
    start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    payload = gzip.compress(b'{"balance": "1.00"}' * 100)

    async def handler(request: web.Request) -> web.Response:
        assert request.headers["Accept-Encoding"] == "gzip"
        return web.Response(body=payload, headers={"Content-Encoding": "gzip"})

    runner, url = await serve_handler(handler)
    try:
        gw = await start_gateway(settings_for(url))
        async with client.get(gw.url / "x", headers={"Accept-Encoding": "gzip"}) as r:
            assert r.status == 200
            assert r.headers["Content-Encoding"] == "gzip"
            assert await r.read() == payload
    finally:
        await runner.cleanup()


async def test_response_streams_chunk_by_chunk(
    start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    release = asyncio.Event()
    finished = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first chunk;")
        await release.wait()  # the upstream holds the rest until the caller saw the first
        await response.write(b"second chunk")
        await response.write_eof()
        finished.set()
        return response

    runner, url = await serve_handler(handler)
    try:
        gw = await start_gateway(settings_for(url))
        async with client.get(gw.url / "stream") as r:
            assert r.status == 200
            first = await r.content.readuntil(b";")
            assert first == b"first chunk;"
            assert not finished.is_set()
            release.set()
            assert await r.read() == b"second chunk"
    finally:
        await runner.cleanup()


async def test_upstream_401_and_403_relayed_unchanged(
    mock: Mock, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(settings_for(mock.url))
    async with client.get(gw.url / "player/balance", headers=XFF) as r:
        assert r.status == 401
        assert await r.json() == {"error": "missing_session_id"}
    wrong = await start_gateway(settings_for(mock.url), environ={"TEST_ALEACC_SECRET": "ab" * 32})
    async with client.get(wrong.url / "player/balance", headers=XFF) as r:
        assert r.status == 403
        assert await r.json() == {"error": "invalid_signature"}
    assert (
        wrong.sample("aleacc_gateway_upstream_responses_total", tenant="default", status="403") == 1
    )


async def test_a_replayed_caller_request_is_signed_afresh(
    gateway: Gateway, mock: Mock, client: aiohttp.ClientSession
) -> None:
    request_ids = set()
    for _ in range(3):
        async with client.post(gateway.url / "echo", data=b"same", headers=XFF) as r:
            assert r.status == 200  # the stand-in refuses a replayed request_id with 403
            request_ids.add(r.headers["X-Request-Id"])
    assert len(request_ids) == 3
    assert len({seen.authorization for seen in journal(mock.app)}) == 3


async def test_client_not_allowed(
    raw_upstream: RawUpstream, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(
        settings_for(raw_upstream.url, access={"allowed_clients": networks("10.0.0.0/8")})
    )
    async with client.get(gw.url / "x", headers={"X-Forwarded-For": "10.0.0.1"}) as r:
        assert r.status == 403
        assert await r.json() == {
            "error": "client_not_allowed",
            "message": "this client may not use the gateway",
            "request_id": None,
        }
    assert raw_upstream.connections == 0


async def test_body_over_the_limit_is_refused(
    raw_upstream: RawUpstream, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(settings_for(raw_upstream.url, limits={"max_body_bytes": 1000}))
    async with client.post(gw.url / "x", data=b"x" * 1000) as r:
        assert r.status == 200  # exactly the limit is fine
    async with client.post(gw.url / "x", data=b"x" * 1001) as r:
        assert r.status == 413
        assert (await r.json())["error"] == "body_too_large"

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"y" * 100

    async with client.post(gw.url / "x", data=chunked()) as r:
        assert r.status == 413
    assert len(raw_upstream.requests) == 1


async def test_upstream_refused_is_502(
    start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gw = await start_gateway(settings_for(f"http://127.0.0.1:{port}"))
    async with client.get(gw.url / "x") as r:
        assert r.status == 502
        body = await r.json()
        assert body["error"] == "upstream_unavailable"
        assert body["request_id"] == r.headers.get("X-Request-Id", body["request_id"])
        assert len(body["request_id"]) == 32
    # One retry by default, each attempt counted: the connection was never made.
    assert gw.sample("aleacc_gateway_upstream_errors_total", kind="connect") == 2


async def test_upstream_stalled_is_504(
    raw_upstream: RawUpstream, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    raw_upstream.answer = False
    gw = await start_gateway(settings_for(raw_upstream.url, upstream={"timeout_s": 0.2}))
    async with client.get(gw.url / "x") as r:
        assert r.status == 504
        assert (await r.json())["error"] == "upstream_timeout"
    # The request reached the upstream, so it must not have been retried.
    assert len(raw_upstream.requests) == 1
    assert gw.sample("aleacc_gateway_upstream_errors_total", kind="timeout") == 1


async def test_a_small_answer_cut_mid_body_is_a_502(
    mock: Mock, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    # Small answers are read whole before anything is sent, so a cut one is refused
    # outright; large ones stream and abort the caller (test_reset_mid_answer_aborts_the_caller).
    gw = await start_gateway(settings_for(mock.url))
    async with client.get(gw.url / "echo", headers={"X-Mock-Fault": "cut"}) as r:
        assert r.status == 502
        assert (await r.json())["error"] == "upstream_unavailable"
    assert gw.sample("aleacc_gateway_upstream_errors_total", kind="cut") == 1


async def test_upstream_reset_before_answer_is_502(
    mock: Mock, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(settings_for(mock.url))
    async with client.get(gw.url / "echo", headers={"X-Mock-Fault": "reset"}) as r:
        assert r.status == 502
    assert gw.sample("aleacc_gateway_upstream_errors_total", kind="reset") == 1
    assert (
        len(journal(mock.app)) == 1
    )  # sent once: a request that may have arrived is never retried


async def test_missing_secret_is_signing_failed(
    raw_upstream: RawUpstream, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(settings_for(raw_upstream.url), environ={})
    async with client.get(gw.url / "x") as r:
        assert r.status == 500
        assert await r.json() == {
            "error": "signing_failed",
            "message": "the request could not be signed",
            "request_id": None,
        }
    assert raw_upstream.connections == 0
    assert (
        gw.sample(
            "aleacc_gateway_signing_failures_total", tenant="default", reason="secret_unavailable"
        )
        == 1
    )


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET http://evil.example/x HTTP/1.1",
        b"GET //evil.example/x HTTP/1.1",
        b"CONNECT evil.example:443 HTTP/1.1",
        b"OPTIONS * HTTP/1.1",
        b"GET /a/../b HTTP/1.1",
        b"GET /a/%2e%2e/b HTTP/1.1",
        b"GET /a/.%2E/b HTTP/1.1",
        b"GET /a/./b HTTP/1.1",
        b"GET /a/..%2fb/%2e%2e%2f HTTP/1.1",
        b"GET /a/..\\b HTTP/1.1",
        b"GET /a%zz HTTP/1.1",
        b"GET /a?b=%2 HTTP/1.1",
        b"GET /a%0d%0aX-Injected:%201 HTTP/1.1",
        b"GET /a%00 HTTP/1.1",
    ],
)
async def test_bad_targets_are_400_and_never_reach_upstream(
    raw_upstream: RawUpstream, start_gateway: StartGateway, request_line: bytes
) -> None:
    gw = await start_gateway(settings_for(raw_upstream.url))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.bound.proxy[1])
    writer.write(request_line + b"\r\nHost: gw\r\nConnection: close\r\n\r\n")
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), response
    assert json.loads(body)["error"] == "bad_request"
    assert b"evil" not in body
    assert raw_upstream.connections == 0


async def test_head_and_no_content_answers(
    raw_upstream: RawUpstream, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    raw_upstream.response = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nConnection: close\r\n\r\n"
    gw = await start_gateway(settings_for(raw_upstream.url))
    async with client.head(gw.url / "x") as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == "1234"
        assert await r.read() == b""
    raw_upstream.response = b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
    async with client.delete(gw.url / "x") as r:
        assert r.status == 204
        assert await r.read() == b""


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


@pytest.fixture
async def gateway_with_routes(mock: Mock, start_gateway: StartGateway) -> Gateway:
    return await start_gateway(settings_for(mock.url, access={"routes": ROUTES}))


ROUTES = (Route("POST", "/player/*"), Route("GET", "/player/balance"), Route("*", "/echo"))


# 5. A caller that never reads is cut after send_timeout_s; its upstream connection goes.
async def test_a_caller_that_never_reads_is_cut_and_frees_the_upstream(
    start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    chunk = b"x" * 65536

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        if request.path == "/short":
            await response.write(b"ok")
        else:
            for _ in range(4096):  # 256 MiB: far more than any socket buffer
                await response.write(chunk)
        await response.write_eof()
        return response

    runner, url = await serve_handler(endless)
    try:
        gw = await start_gateway(
            settings_for(url, upstream={"max_connections": 1}, limits={"send_timeout_s": 0.3})
        )
        _, writer = await asyncio.open_connection("127.0.0.1", gw.bound.proxy[1])
        writer.write(b"GET /big HTTP/1.1\r\nHost: gw\r\n\r\n")
        # Never read: the gateway gives up and closes; then the one upstream connection
        # is free for the next caller.
        async with client.get(gw.url / "short") as r:
            assert (r.status, await r.read()) == (200, b"ok")
        assert gw.sample("aleacc_gateway_connections_closed_total", reason="send_timeout") == 1
        writer.close()
    finally:
        await runner.cleanup()


# 9. A zone id from X-Forwarded-For never reaches X-Client-Ip.
async def test_a_zone_id_in_x_forwarded_for_is_malformed(
    raw_upstream: RawUpstream, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(settings_for(raw_upstream.url))
    headers = {"X-Forwarded-For": "198.51.100.4, fe80::2%25'\"{}"}
    async with client.get(gw.url / "x", headers=headers) as r:
        assert r.status == 200
    # The malformed entry stops the walk; nothing valid was seen after it: the peer.
    assert raw_upstream.requests[0].header("X-Client-Ip") == ["127.0.0.1"]


# Decided with the defects: TRACE would echo the signed Authorization to the caller.
async def test_trace_is_refused_and_never_signed(
    raw_upstream: RawUpstream, start_gateway: StartGateway
) -> None:
    gw = await start_gateway(settings_for(raw_upstream.url))
    reply = await exchange_raw(gw.bound.proxy[1], GET_CLOSE.replace(b"GET", b"TRACE", 1))
    assert status_of(reply) == 400
    assert raw_upstream.connections == 0


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
        assert gw.pool.open_connections == 0  # closed, not pooled
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
