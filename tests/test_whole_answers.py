"""Answers sent whole (gateway/edge.py's send_whole) through real sockets: the bytes the
caller gets are the bytes aiohttp's ``web.Response`` frames for the same answer, the
framing the gateway used before it wrote them itself; and a caller that takes none of
them is cut after send_timeout_s."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.forwarding import downstream_headers

from .support import RawUpstream, StartGateway, settings_for
from .test_pool import until

OK_JSON = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Tue, 01 Dec 2026 00:00:00 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: 11\r\nConnection: keep-alive\r\n"
    b'Keep-Alive: timeout=5\r\n\r\n{"ok":true}'
)
BARE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
EMPTY = b"HTTP/1.1 201 Made It\r\nContent-Length: 0\r\n\r\n"
# Not ASCII: a UTF-8 value, bytes that are not UTF-8, a Latin-1 reason phrase.
TEXT = (
    b"HTTP/1.1 200 D\xe9j\xe0 vu\r\nX-Name: caf\xc3\xa9\r\nX-Raw: a\xff\xfeb\r\n"
    b"Content-Length: 2\r\n\r\nok"
)
# Hop-by-hop fields, ones the upstream's Connection names (Date among them), its own
# X-Request-Id, and a repeated field kept in order.
HOP = (
    b"HTTP/1.1 200 OK\r\nConnection: X-Secret, Date\r\nX-Secret: s\r\nDate: Mon\r\n"
    b"Set-Cookie: a=1\r\nX-Request-Id: theirs\r\nSet-Cookie: b=2\r\nKeep-Alive: timeout=5\r\n"
    b"Content-Length: 2\r\n\r\nok"
)
GET_11 = b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n"
GET_11_CLOSE = b"GET /x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
GET_10 = b"GET /x HTTP/1.0\r\nHost: gw\r\n\r\n"
GET_10_KEEP = b"GET /x HTTP/1.0\r\nHost: gw\r\nConnection: keep-alive\r\n\r\n"

_DATE = re.compile(rb"\r\nDate: [^\r]*")


async def read_answer(port: int, request: bytes) -> bytes:
    """One answer's bytes (head and Content-Length's body) to ``request``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        async with asyncio.timeout(10):  # a guard, not a wait
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"\r\nContent-Length: (\d+)", head)
            assert length is not None
            return head + await reader.readexactly(int(length.group(1)))
    finally:
        writer.close()


@pytest.fixture
async def reference() -> AsyncIterator[tuple[int, RawUpstream, list[str]]]:
    """aiohttp's low-level server answering what the old code returned for a whole
    answer: ``web.Response`` with the upstream's status, reason, headers for the caller
    (less Content-Length, which aiohttp frames from the body) and body."""
    upstream = RawUpstream()
    request_ids: list[str] = []

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        head, _, body = upstream.response.partition(b"\r\n\r\n")
        status_line, *lines = head.split(b"\r\n")
        _, status, reason = status_line.split(b" ", 2)
        received: CIMultiDict[str] = CIMultiDict(
            (name.decode("ascii"), value.strip().decode("utf-8", "surrogateescape"))
            for name, _, value in (line.partition(b":") for line in lines)
        )
        headers = downstream_headers(CIMultiDictProxy(received), request_ids[-1])
        headers.popall("Content-Length", None)
        return web.Response(
            status=int(status), reason=reason.decode("latin-1"), headers=headers, body=body
        )

    server = web.Server(handle)
    listener = await asyncio.get_running_loop().create_server(server, "127.0.0.1", 0)
    yield listener.sockets[0].getsockname()[1], upstream, request_ids
    listener.close()
    await server.shutdown()


@pytest.mark.parametrize("answer", [OK_JSON, BARE, EMPTY, TEXT, HOP])
@pytest.mark.parametrize("request_bytes", [GET_11, GET_11_CLOSE, GET_10, GET_10_KEEP])
async def test_a_whole_answer_is_the_bytes_aiohttp_frames(
    raw_upstream: RawUpstream,
    start_gateway: StartGateway,
    reference: tuple[int, RawUpstream, list[str]],
    answer: bytes,
    request_bytes: bytes,
) -> None:
    raw_upstream.response = answer
    gw = await start_gateway(settings_for(raw_upstream.url))
    sent = await read_answer(gw.bound.proxy[1], request_bytes)
    port, upstream, request_ids = reference
    upstream.response = answer
    request_id = re.search(rb"\r\nX-Request-Id: ([^\r]*)", sent)
    assert request_id is not None
    request_ids.append(request_id.group(1).decode())
    expected = await read_answer(port, request_bytes)
    if b"\r\nDate: " not in answer or b"Date\r\n" in answer:  # aiohttp's own Date: now
        sent, expected = _DATE.sub(b"\r\nDate: *", sent), _DATE.sub(b"\r\nDate: *", expected)
    assert sent == expected


async def test_draining_a_whole_answer_says_close(
    raw_upstream: RawUpstream,
    start_gateway: StartGateway,
) -> None:
    raw_upstream.response = BARE
    gw = await start_gateway(settings_for(raw_upstream.url))
    gw.server.lifecycle.draining = True
    sent = await read_answer(gw.bound.proxy[1], GET_11)
    assert b"\r\nConnection: close\r\n" in sent


async def test_a_caller_that_never_reads_a_whole_answer_is_cut(
    raw_upstream: RawUpstream, start_gateway: StartGateway
) -> None:
    """Answers of 64 KB, pipelined and never read: once the socket buffers are full the
    gateway waits send_timeout_s for the caller, then closes the connection."""
    body = b"x" * (64 * 1024)
    raw_upstream.response = (
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    gw = await start_gateway(settings_for(raw_upstream.url, limits={"send_timeout_s": 0.3}))
    _, writer = await asyncio.open_connection("127.0.0.1", gw.bound.proxy[1])
    writer.write(GET_11 * 400)  # 25 MiB of answers: far more than any socket buffer
    await until(
        lambda: gw.sample("aleacc_gateway_connections_closed_total", reason="send_timeout") == 1
    )
    writer.close()
