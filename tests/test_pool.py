"""The upstream connection pool, against a scripted upstream that keeps connections open.

Each answer below is raw bytes an upstream might send; the gateway must pass on exactly
one well-framed answer per request, reuse a connection only when that is safe, and
never send a request twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web
from yarl import URL

from gateway.pool import Slots
from gateway.response import MAX_HEAD_BYTES, MAX_HEADERS

from .support import (
    FAST,
    GET_CLOSE,
    Gateway,
    RawUpstream,
    Recorded,
    StartGateway,
    log_events,
    relay_settings,
    serve_handler,
    settings_for,
    tcp_server,
)
from .test_hardening import exchange_raw, status_of
from .wire import Relay, check_framing

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class ScriptedUpstream:
    """Answers each request on a connection with ``answer(n)`` for the n-th request overall;
    keeps the connection open unless the answer is followed by ``CLOSE``."""

    answer: Callable[[int], bytes] = lambda n: OK
    requests: list[Recorded] = field(default_factory=list)
    connections: int = 0
    url: URL = field(default_factory=URL)
    writers: set[asyncio.StreamWriter] = field(default_factory=set)
    go: asyncio.Event = field(default_factory=asyncio.Event)  # cleared: hold every request
    # Every byte each connection carried, and how many requests it was answered for.
    streams: list[tuple[bytes, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.go.set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.add(writer)
        stream, answered = bytearray(), 0
        try:
            while True:
                await self.go.wait()
                head = await reader.readuntil(b"\r\n\r\n")
                recorded = Recorded(head[:-4], b"")
                length = recorded.header("Content-Length")
                recorded.body = await reader.readexactly(int(length[0]) if length else 0)
                stream += head + recorded.body
                answered += 1
                self.requests.append(recorded)
                answer = self.answer(len(self.requests))
                writer.write(answer.removesuffix(CLOSE))
                await writer.drain()
                if answer.endswith(CLOSE):
                    break
        except asyncio.IncompleteReadError as exc:
            stream += exc.partial  # a request cut short would fail the framing check
        except ConnectionError:
            pass
        finally:
            self.streams.append((bytes(stream), answered))
            self.writers.discard(writer)
            writer.close()


CLOSE = b"<close>"


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedUpstream]:
    upstream = ScriptedUpstream()
    async with tcp_server(upstream.handle, upstream.writers) as upstream.url:
        yield upstream
    # The differential check of tests/wire.py, over kept-alive connections too.
    await until(lambda: len(upstream.streams) == upstream.connections)
    for stream, answered in upstream.streams:
        assert check_framing(stream) == answered


async def start(
    start_gateway: StartGateway, upstream: ScriptedUpstream, **fields: float
) -> Gateway:
    settings = settings_for(upstream.url, upstream={"timeout_s": 2.0, **fields})
    return await start_gateway(settings)


def open_connections(gw: Gateway) -> int:
    return gw.pool.open_connections


async def get(client: aiohttp.ClientSession, gw: Gateway) -> tuple[int, bytes]:
    async with client.get(gw.url / "x") as r:
        return r.status, await r.read()


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the event loop (gateway and upstream run in it) until ``condition`` holds."""
    async with asyncio.timeout(5):
        # The pool signals nothing when the upstream closes an idle connection: poll it.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.001)


async def test_keep_alive_connections_are_reused_and_each_request_is_signed_afresh(
    scripted: ScriptedUpstream, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    gw = await start(start_gateway, scripted)
    for _ in range(5):
        async with client.post(gw.url / "player" / "balance", data=b'{"a":1}') as r:
            assert (r.status, await r.read()) == (200, b"ok")
    assert scripted.connections == 1
    assert len({r.header("Authorization")[0] for r in scripted.requests}) == 5
    assert [r.body for r in scripted.requests] == [b'{"a":1}'] * 5


async def test_each_answer_on_a_kept_alive_connection_has_its_own_head_bounds(
    scripted: ScriptedUpstream, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    """One parser per connection: what one answer's head counted is not the next one's."""
    filler = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"f" * 400) for i in range(100))  # ~41 KB
    scripted.answer = lambda n: b"HTTP/1.1 200 OK\r\n" + filler + b"Content-Length: 2\r\n\r\nok"
    gw = await start(start_gateway, scripted)
    for _ in range(3):  # 123 KB of heads in all, over MAX_HEAD_BYTES; each under it
        assert await get(client, gw) == (200, b"ok")
    assert scripted.connections == 1


async def test_an_answer_with_connection_close_is_not_reused(
    scripted: ScriptedUpstream, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    scripted.answer = lambda n: (
        # The connection is left open: the header alone must stop its reuse.
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    )
    gw = await start(start_gateway, scripted)
    for _ in range(3):
        assert await get(client, gw) == (200, b"ok")
    assert scripted.connections == 3


async def test_a_connection_the_upstream_closed_while_idle_is_not_used(
    scripted: ScriptedUpstream, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    scripted.answer = lambda n: OK + CLOSE  # closes without saying so in a header
    gw = await start(start_gateway, scripted)
    assert await get(client, gw) == (200, b"ok")
    await until(lambda: open_connections(gw) == 0)
    assert await get(client, gw) == (200, b"ok")
    assert scripted.connections == 2


async def test_idle_connections_expire_after_idle_timeout(
    scripted: ScriptedUpstream, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    gw = await start(start_gateway, scripted, idle_timeout_s=0.05)
    assert await get(client, gw) == (200, b"ok")
    await asyncio.sleep(0.1)  # the idle timeout itself is what is tested
    assert await get(client, gw) == (200, b"ok")
    assert scripted.connections == 2


async def test_a_body_delimited_by_the_end_of_the_connection_arrives_whole(
    scripted: ScriptedUpstream, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    payload = b"y" * 300_000
    scripted.answer = lambda n: b"HTTP/1.1 200 OK\r\n\r\n" + payload + CLOSE
    gw = await start(start_gateway, scripted)
    assert await get(client, gw) == (200, payload)
    assert await get(client, gw) == (200, payload)
    assert scripted.connections == 2


async def test_head_answers_carry_no_body_and_the_next_request_is_clean(
    scripted: ScriptedUpstream, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    scripted.answer = lambda n: b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" if n == 1 else OK
    gw = await start(start_gateway, scripted)
    async with client.head(gw.url / "x") as r:
        assert (r.status, r.headers["Content-Length"], await r.read()) == (200, "1000", b"")
    assert await get(client, gw) == (200, b"ok")
    # A HEAD answer's connection is not reused: llhttp cannot be told it had no body.
    assert scripted.connections == 2
    assert gw.sample("aleacc_gateway_upstream_errors_total", kind="timeout") == 0


async def test_interim_answers_are_skipped(
    scripted: ScriptedUpstream, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    scripted.answer = lambda n: b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" * 2 + OK
    gw = await start(start_gateway, scripted)
    # A guard, not a wait: passing the 103 on as the answer would leave the caller hanging.
    async with asyncio.timeout(5), client.get(gw.url / "x") as r:
        assert (r.status, await r.read()) == (200, b"ok")
        assert "Link" not in r.headers


async def test_a_second_unasked_answer_is_dropped_with_its_connection(
    scripted: ScriptedUpstream, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    smuggled = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsmuggle"
    scripted.answer = lambda n: OK + smuggled if n == 1 else OK
    gw = await start(start_gateway, scripted)
    assert await get(client, gw) == (200, b"ok")
    async with client.get(gw.url / "x") as r:
        assert await r.read() == b"ok"  # never the smuggled answer
    assert scripted.connections == 2


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * MAX_HEAD_BYTES + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-Pad: p\r\n" * (MAX_HEADERS + 1) + b"\r\n",
        # Never ends: refused once the limit is passed, not after the read timeout.
        b"HTTP/1.1 200 OK\r\nX-Pad: " + b"p" * (MAX_HEAD_BYTES + 1),
    ],
    ids=[
        "bad-status",
        "two-lengths",
        "bad-chunk",
        "gzip-coding",
        "not-http",
        "huge-header",
        "many-headers",
        "endless-header",
    ],
)
async def test_an_unparsable_answer_is_502(
    answer: bytes,
    scripted: ScriptedUpstream,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
) -> None:
    scripted.answer = lambda n: answer
    gw = await start(start_gateway, scripted)
    async with client.get(gw.url / "x") as r:
        assert (r.status, (await r.json())["error"]) == (502, "upstream_unavailable")
    assert gw.sample("aleacc_gateway_upstream_errors_total", kind="protocol") == 1
    await until(lambda: open_connections(gw) == 0)


async def test_a_busy_pool_makes_requests_wait_for_a_connection(
    scripted: ScriptedUpstream, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    scripted.go.clear()
    gw = await start(start_gateway, scripted, max_connections=1)

    async def get() -> bytes:
        async with client.get(gw.url / "x") as r:
            return await r.read()

    calls = [asyncio.create_task(get()) for _ in range(3)]
    await until(lambda: open_connections(gw) == 1)
    scripted.go.set()
    assert await asyncio.gather(*calls) == [b"ok"] * 3
    assert scripted.connections == 1


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def tls_upstream(
    ca: trustme.CA, upstream: ScriptedUpstream | None = None
) -> contextlib.AbstractAsyncContextManager[URL]:
    """``upstream`` (a new ScriptedUpstream if None) over TLS, with a certificate from ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    upstream = upstream or ScriptedUpstream()
    return tcp_server(upstream.handle, upstream.writers, tls=context)


async def test_an_https_upstream_is_verified_and_kept_alive(
    ca: trustme.CA,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
) -> None:
    # The gateway verifies with the system's CAs; OpenSSL's SSL_CERT_FILE points elsewhere.
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    async with tls_upstream(ca) as url:
        gw = await start_gateway(settings_for(url))
        for _ in range(2):
            assert await get(client, gw) == (200, b"ok")
        assert open_connections(gw) == 1


async def test_an_https_upstream_with_an_untrusted_certificate_is_502(
    ca: trustme.CA, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    async with tls_upstream(ca) as url:
        gw = await start_gateway(settings_for(url, upstream={"retries": 0}))
        async with client.get(gw.url / "x") as r:
            assert (r.status, (await r.json())["error"]) == (502, "upstream_unavailable")
        assert gw.sample("aleacc_gateway_upstream_errors_total", kind="connect") == 1


async def test_a_large_answer_waits_for_a_slow_caller_and_arrives_intact(
    start_gateway: StartGateway,
) -> None:
    payload = os.urandom(64 * 1024 * 1024)
    sent = 0
    writers: set[asyncio.StreamWriter] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        writers.add(writer)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload))
        with contextlib.suppress(ConnectionError):
            for i in range(0, len(payload), 256 * 1024):
                writer.write(payload[i : i + 256 * 1024])
                await writer.drain()
                sent = i + 256 * 1024
        writers.discard(writer)
        writer.close()

    async with (
        tcp_server(handle, writers) as url,
        aiohttp.ClientSession(read_bufsize=64 * 1024) as client,
    ):
        gw = await start_gateway(settings_for(url, upstream={"timeout_s": 10.0}))
        async with asyncio.timeout(60), client.get(gw.url / "big") as r:
            # The caller reads nothing: the upstream must stall well before the end,
            # because the gateway stops reading instead of buffering the answer.
            while True:
                before = sent
                await asyncio.sleep(0.2)  # no event marks the absence of progress
                if sent == before and sent > 0:
                    break
            assert sent < len(payload) // 2
            digest = hashlib.sha256()
            while chunk := await r.content.read(64 * 1024):
                digest.update(chunk)
        assert digest.digest() == hashlib.sha256(payload).digest()


# 6. A wait for a pooled connection: its own kind, not retried, 504.
async def test_a_pool_wait_is_not_a_connect_and_is_not_retried(
    start_gateway: StartGateway, client: aiohttp.ClientSession, logs: object
) -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def hold(request: web.Request) -> web.StreamResponse:
        # Holds the one pooled connection, a byte at a time so that its own reads
        # never time out, until released.
        response = web.StreamResponse()
        await response.prepare(request)
        entered.set()
        while not release.is_set():
            await response.write(b".")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(release.wait(), 0.05)
        await response.write_eof()
        return response

    runner, url = await serve_handler(hold)
    try:
        gw = await start_gateway(
            settings_for(
                url,
                upstream={
                    "max_connections": 1,
                    "timeout_s": 0.3,
                    "retries": 1,
                    "retry_backoff_s": 0,
                },
            )
        )

        async def first_call() -> int:
            async with client.get(gw.url / "first") as r:
                await r.read()
                return r.status

        first = asyncio.create_task(first_call())
        await entered.wait()
        async with client.get(gw.url / "second") as r:
            assert (r.status, (await r.json())["error"]) == (504, "upstream_timeout")
        release.set()
        assert await first == 200
        assert gw.sample("aleacc_gateway_upstream_errors_total", kind="pool_timeout") == 1
        assert gw.sample("aleacc_gateway_upstream_errors_total", kind="connect_timeout") == 0
        assert log_events(logs, "upstream_attempt_failed") == []  # type: ignore[arg-type]
    finally:
        release.set()
        await runner.cleanup()


# 7. Status codes outside 100-599, endless interim answers, a control in the reason: 502.
@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 000 Zero\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 600 Big\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 100 Continue\r\n\r\n" * 9 + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 O\x7fK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    ],
    ids=["099", "000", "600", "nine-interim", "control-in-reason", "control-streamed"],
)
async def test_an_invalid_upstream_status_is_502(
    raw_upstream: RawUpstream, start_gateway: StartGateway, answer: bytes
) -> None:
    raw_upstream.response = answer
    gw = await start_gateway(settings_for(raw_upstream.url, upstream={"timeout_s": 30}))
    reply = await exchange_raw(gw.bound.proxy[1], GET_CLOSE)
    assert status_of(reply) == 502
    assert json.loads(reply.partition(b"\r\n\r\n")[2])["error"] == "upstream_unavailable"
    assert gw.sample("aleacc_gateway_upstream_errors_total", kind="protocol") == 1


async def test_refused_connection_is_502_within_the_connect_timeout(
    start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gw = await start_gateway(settings_for(f"http://127.0.0.1:{port}", upstream=FAST))
    async with client.get(gw.url / "x") as r:
        assert r.status == 502
        assert (await r.json())["error"] == "upstream_unavailable"
    # Every attempt was refused at once, none waited out the connect timeout (a 504): told
    # by what the gateway counted, not by a stopwatch a loaded machine can run past.
    assert gw.sample("aleacc_gateway_upstream_errors_total", kind="connect") >= 1
    assert gw.sample("aleacc_gateway_upstream_errors_total", kind="connect_timeout") == 0


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
        # At the configured timeout, not before it, and not at the default one: a bound a
        # loaded machine cannot run past, unlike the configured timeout plus a margin.
        default = settings_for("http://127.0.0.1:9").upstream.timeout_s
        assert FAST["timeout_s"] <= elapsed < default
        assert gw.sample("aleacc_gateway_upstream_errors_total", kind="timeout") == 1
        assert len(relay.streams) == 1  # not retried: the request was sent
        assert check_framing(bytes(relay.streams[0])) == 1
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


async def test_a_slot_handed_to_a_waiter_that_gives_up_goes_to_the_next() -> None:
    slots = Slots(1)
    assert slots.take_free()
    first, second = asyncio.create_task(slots.wait()), asyncio.create_task(slots.wait())
    await asyncio.sleep(0)  # both are waiting
    slots.release()  # handed to the first...
    first.cancel()  # ...which gives up before it runs
    [outcome] = await asyncio.gather(first, return_exceptions=True)
    assert isinstance(outcome, asyncio.CancelledError)
    await second  # the slot went on to the second
    assert not slots.take_free()
    second_waiter = asyncio.create_task(slots.wait())
    await asyncio.sleep(0)
    second_waiter.cancel()  # a waiter cancelled before any release leaves no trace
    await asyncio.gather(second_waiter, return_exceptions=True)
    slots.release()
    assert slots.take_free()
