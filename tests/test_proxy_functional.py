"""The gateway between a real client and a real upstream, through loopback sockets."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from gateway.mock.upstream import DEMO_API_ID, journal

from .support import (
    SESSION_ID,
    Gateway,
    Mock,
    RawUpstream,
    StartGateway,
    networks,
    serve_handler,
    settings_for,
    verify_recorded,
)

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
        "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "forwarded", "connection",
        "x-hop-secret", "keep-alive", "te", "proxy-authorization", "proxy-connection",
        "upgrade", "expect", "transfer-encoding", "user-agent", "content-type",
    ):  # fmt: skip
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
    assert wrong.sample("aleacc_gateway_upstream_responses_total", status="403") == 1


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
    # outright; large ones stream and abort the caller (test_hardening_faults).
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
    assert gw.sample("aleacc_gateway_signing_failures_total", reason="secret_unavailable") == 1


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
