"""The edge (gateway/edge.py) through real sockets: the connection cap, the peer allowlist
at accept, the idle and header deadlines, and framing refused before a handler runs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable
from pathlib import Path

from gateway.mock.upstream import DEMO_SECRET

from .support import (
    GatewayProcess,
    RawUpstream,
    StartGateway,
    config_file,
    settings_for,
)
from .test_hardening import exchange_raw, status_of

GET = b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n"


async def guarded(read: Awaitable[bytes]) -> bytes:
    """A guard, not a wait: each case ends with the gateway closing the connection."""
    async with asyncio.timeout(10):
        return await read


def networks_10() -> tuple[object, ...]:
    from gateway.client_ip import parse_network

    return (parse_network("10.0.0.0/8"),)


# 2. Over the connection cap, a 503 under uvloop (the CLI's loop) too.
async def test_over_the_cap_a_real_process_answers_503(
    tmp_path: Path, raw_upstream: RawUpstream, gateway_process: object
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(DEMO_SECRET)
    config = config_file(
        tmp_path / "gw.toml", raw_upstream.url, secret, limits={"max_connections": 2}
    )
    gateway: GatewayProcess = await gateway_process(config)  # type: ignore[operator]
    port = gateway.proxy.port or 0
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    # The gateway has accepted both once it answers on one of them.
    held[0][1].write(GET)
    assert (await held[0][0].readuntil(b"ok")).startswith(b"HTTP/1.1 200")
    answers = [await exchange_raw(port, GET) for _ in range(3)]
    assert [status_of(a) for a in answers] == [503] * 3
    assert json.loads(answers[0].partition(b"\r\n\r\n")[2])["error"] == "overloaded"
    for _, writer in held:
        writer.close()
    assert not [line for line in gateway.lines if "AssertionError" in json.dumps(line)]


# 3. An idle deadline from accept and between requests; the peer checked at accept.
async def test_a_connection_that_sends_nothing_is_closed(
    raw_upstream: RawUpstream, start_gateway: StartGateway
) -> None:
    gw = await start_gateway(settings_for(raw_upstream.url, limits={"idle_timeout_s": 0.2}))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.bound.proxy[1])
    assert await guarded(reader.read()) == b""  # closed, without an answer: no request was made
    writer.close()
    # Between requests too: an answer, then silence, then the close.
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.bound.proxy[1])
    writer.write(GET)
    assert (await guarded(reader.read())).startswith(b"HTTP/1.1 200")
    writer.close()
    assert gw.sample("aleacc_gateway_connections_closed_total", reason="idle_timeout") == 2


async def test_an_idle_deadline_after_a_shorter_header_deadline_is_kept_in_full(
    raw_upstream: RawUpstream, start_gateway: StartGateway
) -> None:
    """A connection has one timer: set for the request's header deadline, it is left in
    place when the (later) idle deadline follows the answer, and must set itself again
    when it fires early rather than close the connection before idle_timeout_s."""
    limits = {"header_timeout_s": 0.2, "idle_timeout_s": 1.0}
    gw = await start_gateway(settings_for(raw_upstream.url, limits=limits))
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.bound.proxy[1])
    writer.write(GET)
    assert (await guarded(reader.readuntil(b"ok"))).startswith(b"HTTP/1.1 200")
    answered = loop.time()
    assert await guarded(reader.read()) == b""  # closed for idleness, in the end
    writer.close()
    assert loop.time() - answered >= 0.9  # not at the header deadline's 0.2 s
    assert gw.sample("aleacc_gateway_connections_closed_total", reason="idle_timeout") == 1
    assert gw.sample("aleacc_gateway_connections_closed_total", reason="header_timeout") == 0


async def test_a_peer_outside_allowed_clients_is_refused_at_accept(
    raw_upstream: RawUpstream, start_gateway: StartGateway
) -> None:
    settings = settings_for(raw_upstream.url, access={"allowed_clients": networks_10()})
    gw = await start_gateway(settings)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.bound.proxy[1])
    answer = await guarded(reader.read())  # nothing sent: the answer comes at accept
    writer.close()
    assert status_of(answer) == 403
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "client_not_allowed"
    assert gw.sample("aleacc_gateway_connections_closed_total", reason="not_allowed") == 1
    assert raw_upstream.connections == 0


# 4. Partial headers pipelined behind a full request.
async def test_partial_headers_pipelined_behind_a_request_time_out(
    raw_upstream: RawUpstream, start_gateway: StartGateway
) -> None:
    raw_upstream.response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    gw = await start_gateway(settings_for(raw_upstream.url, limits={"idle_timeout_s": 0.2}))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.bound.proxy[1])
    writer.write(GET + b"GET /b HTTP/1.1\r\nHost: gw\r\nX-Partial: ")
    answer = await guarded(reader.read())  # /x answered, then the connection closes
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200")
    assert answer.endswith(b"ok")
    assert len(raw_upstream.requests) == 1


# 8. HTTP/1.0 with Transfer-Encoding: refused, and nothing behind it is served.
async def test_http_1_0_with_transfer_encoding_is_refused_and_closed(
    raw_upstream: RawUpstream, start_gateway: StartGateway
) -> None:
    gw = await start_gateway(settings_for(raw_upstream.url))
    reply = await exchange_raw(
        gw.bound.proxy[1],
        b"POST /x HTTP/1.0\r\nHost: gw\r\nConnection: keep-alive\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + GET,
    )
    assert status_of(reply) == 400
    assert reply.count(b" 400 Bad Request\r\n") == 1
    assert b" 200 OK\r\n" not in reply
    assert raw_upstream.connections == 0


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
