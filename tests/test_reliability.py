"""Defects found by black-box runs, each through real sockets: a test per mechanism."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import Awaitable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway.mock.upstream import DEMO_SECRET

from .support import (
    Gateway,
    GatewayProcess,
    RawUpstream,
    StartGateway,
    config_file,
    log_events,
    run_cli,
    serve_handler,
    settings_for,
    unused_port,
)
from .test_hardening import exchange_raw, status_of

GET = b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n"


async def guarded(read: Awaitable[bytes]) -> bytes:
    """A guard, not a wait: each case ends with the gateway closing the connection."""
    async with asyncio.timeout(10):
        return await read


GET_CLOSE = b"GET /x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"


# 1. Readiness follows the secret source at every poll.
async def gateway_with_secret_file(
    tmp_path: Path, start_gateway: StartGateway, raw_upstream: RawUpstream
) -> tuple[Path, Gateway]:
    secret = tmp_path / "secret"
    secret.write_bytes(DEMO_SECRET)
    settings = settings_for(raw_upstream.url, signing={"secret_file": secret, "secret_env": None})
    return secret, await start_gateway(settings)


async def test_readiness_recovers_when_the_secret_file_comes_back_unchanged(
    tmp_path: Path, start_gateway: StartGateway, raw_upstream: RawUpstream
) -> None:
    secret, gw = await gateway_with_secret_file(tmp_path, start_gateway, raw_upstream)
    store = gw.server.secrets

    async def ready() -> int:
        async with aiohttp.ClientSession() as c, c.get(gw.admin_url / "readyz") as r:
            return r.status

    assert await ready() == 200
    secret.rename(tmp_path / "secret.gone")
    store.refresh()  # what the poll does every secret_poll_s
    assert await ready() == 503
    (tmp_path / "secret.gone").rename(secret)  # same inode, size, mtime, mode
    store.refresh()
    assert await ready() == 200
    assert store.problem is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
async def test_an_unreadable_secret_file_is_noticed_and_recovered(
    tmp_path: Path, start_gateway: StartGateway, raw_upstream: RawUpstream
) -> None:
    secret, gw = await gateway_with_secret_file(tmp_path, start_gateway, raw_upstream)
    secret.chmod(0)
    gw.server.secrets.refresh()
    assert gw.server.secrets.problem is not None
    secret.chmod(0o600)
    gw.server.secrets.refresh()
    assert gw.server.secrets.problem is None


# 2. Over the connection cap, a 503 under uvloop (the CLI's loop) too.
async def test_over_the_cap_a_real_process_answers_503(
    tmp_path: Path, raw_upstream: RawUpstream, gateway_process: object
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(DEMO_SECRET)
    config = config_file(tmp_path / "gw.toml", raw_upstream.url, secret,
                         limits={"max_connections": 2})  # fmt: skip
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


def networks_10() -> tuple[object, ...]:
    from gateway.client_ip import parse_network

    return (parse_network("10.0.0.0/8"),)


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
        gw = await start_gateway(settings_for(
            url, upstream={"max_connections": 1}, limits={"send_timeout_s": 0.3}
        ))  # fmt: skip
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
        gw = await start_gateway(settings_for(url, upstream={
            "max_connections": 1, "timeout_s": 0.3, "retries": 1, "retry_backoff_s": 0
        }))  # fmt: skip

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


# 7. Status codes outside 100-599, and endless interim answers: 502 at once.
@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 000 Zero\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 600 Big\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 100 Continue\r\n\r\n" * 9 + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["099", "000", "600", "nine-interim"],
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


async def test_a_few_interim_answers_are_skipped(
    raw_upstream: RawUpstream, start_gateway: StartGateway
) -> None:
    raw_upstream.response = (
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" * 2
        + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    )
    gw = await start_gateway(settings_for(raw_upstream.url))
    reply = await exchange_raw(gw.bound.proxy[1], GET_CLOSE)
    assert status_of(reply) == 200


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


# 10. A busy port: one line naming the setting, exit 1, nothing reported started.
async def serve_on_taken_port(
    tmp_path: Path, taken: socket.socket, setting: str, workers: int
) -> tuple[Path, int, str, str]:
    """``serve`` with ``server.<setting>`` on ``taken``'s port: config, exit code, output."""
    port = taken.getsockname()[1]
    secret = tmp_path / "secret"
    secret.write_bytes(DEMO_SECRET)
    other = "admin_listen" if setting == "listen" else "listen"
    config = tmp_path / "gw.toml"
    config.write_text(
        f'[server]\n{setting} = "127.0.0.1:{port}"\n{other} = "127.0.0.1:{unused_port()}"\n'
        f"workers = {workers}\n"
        '[upstream]\nurl = "http://127.0.0.1:9"\n'
        f'[signing]\napi_id = "a"\nsecret_file = "{secret}"\n'
    )
    code, out, err = await run_cli("serve", "--config", str(config))
    assert '"started"' not in out
    assert "Traceback" not in out + err
    return config, code, err, f"server.{setting} 127.0.0.1:{port}: address already in use"


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("setting", ["listen", "admin_listen"])
async def test_a_busy_port_is_one_line_naming_the_setting(
    tmp_path: Path, workers: int, setting: str
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        config, code, err, line = await serve_on_taken_port(tmp_path, taken, setting, workers)
    assert (code, err) == (1, f"{config}: {line}\n")


async def test_the_stand_in_on_a_busy_port_is_one_line() -> None:
    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        code, _, err = await run_cli("mock-upstream", "--listen", f"127.0.0.1:{port}")
    finally:
        taken.close()
    assert (code, err) == (1, f"mock-upstream: --listen 127.0.0.1:{port}: address already in use\n")


# Decided with the defects: TRACE would echo the signed Authorization to the caller.
async def test_trace_is_refused_and_never_signed(
    raw_upstream: RawUpstream, start_gateway: StartGateway
) -> None:
    gw = await start_gateway(settings_for(raw_upstream.url))
    reply = await exchange_raw(gw.bound.proxy[1], GET_CLOSE.replace(b"GET", b"TRACE", 1))
    assert status_of(reply) == 400
    assert raw_upstream.connections == 0


# A second instance on a port that workers already share is refused, not joined.
async def test_a_second_instance_does_not_join_a_shared_port(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as first:
        first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        first.bind(("127.0.0.1", 0))
        first.listen()
        config, code, err, line = await serve_on_taken_port(tmp_path, first, "listen", 2)
    assert (code, err) == (1, f"{config}: {line}\n")


# Found by the soak: a reader of the gateway's output that goes away.
async def test_a_closed_log_pipe_is_no_traceback(tmp_path: Path, raw_upstream: RawUpstream) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(DEMO_SECRET)
    config = config_file(tmp_path / "gw.toml", raw_upstream.url, secret)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stderr is not None
    while json.loads(await process.stdout.readline())["event"] != "started":
        pass
    process._transport.get_pipe_transport(1).close()  # type: ignore[attr-defined]
    process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):  # a guard: the drain delay is 5 s
        err = await process.stderr.read()
        assert await process.wait() == 0
    assert b"Traceback" not in err
