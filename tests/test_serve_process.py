"""``serve`` as a real process: draining on SIGTERM, one line for a busy port or a second
instance, and no traceback when its log pipe closes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway.mock.upstream import DEMO_SECRET

from .support import (
    RawUpstream,
    StartProcess,
    config_file,
    readiness,
    run_cli,
    serve_handler,
    unused_port,
)


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


async def test_drain_finishes_in_flight_requests_then_refuses(
    gateway_process: StartProcess, tmp_path: Path
) -> None:
    held = 20
    entered = 0
    all_entered, release = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        nonlocal entered
        entered += 1
        if entered == held:
            all_entered.set()
        await release.wait()
        return web.Response(text="done")

    runner, upstream = await serve_handler(slow)
    secret = tmp_path / "secret"
    secret.write_bytes(DEMO_SECRET)
    config = config_file(
        tmp_path / "gw.toml",
        upstream,
        secret,
        server={"drain_delay_s": 0.5, "drain_timeout_s": 10},
    )
    gateway = await gateway_process(config)
    try:
        async with aiohttp.ClientSession() as client:
            in_flight = [
                asyncio.create_task(client.get(gateway.proxy / f"r{i}")) for i in range(held)
            ]
            await all_entered.wait()
            assert await readiness(client, gateway) == 200

            signalled = time.monotonic()
            gateway.signal(signal.SIGTERM)
            await gateway.wait_for("draining")
            assert await readiness(client, gateway) == 503  # at once

            # During the drain delay the listener still serves, closing each connection.
            release.set()
            async with client.get(gateway.proxy / "late") as r:
                assert r.status == 200
                assert r.headers["Connection"] == "close"

            responses = await asyncio.gather(*in_flight)
            assert [r.status for r in responses] == [200] * held  # zero failed in flight
            for r in responses:
                assert await r.text() == "done"
                r.release()

            assert await gateway.exit_code() == 0
            elapsed = time.monotonic() - signalled
            assert elapsed < 0.5 + 10  # inside delay + timeout
            stopped = gateway.events("stopped")
            assert stopped, "no 'stopped' line"
            assert gateway.events("stopping")[0]["signal"] == "SIGTERM"
            # And now the port is closed: new connections are refused.
            try:
                async with client.get(gateway.proxy / "after"):
                    raise AssertionError("the listener is still open")
            except aiohttp.ClientConnectorError:
                pass
    finally:
        await runner.cleanup()


async def test_drain_timeout_bounds_a_stuck_request(
    gateway_process: StartProcess, tmp_path: Path
) -> None:
    entered, test_over = asyncio.Event(), asyncio.Event()

    async def stuck(request: web.Request) -> web.Response:
        entered.set()
        await test_over.wait()  # never answers while the gateway drains
        return web.Response()

    runner, upstream = await serve_handler(stuck)
    secret = tmp_path / "secret"
    secret.write_bytes(DEMO_SECRET)
    config = config_file(
        tmp_path / "gw.toml", upstream, secret, server={"drain_delay_s": 0, "drain_timeout_s": 1}
    )
    gateway = await gateway_process(config)
    try:
        async with aiohttp.ClientSession() as client:
            pending = asyncio.create_task(client.get(gateway.proxy / "stuck"))
            await entered.wait()
            signalled = time.monotonic()
            gateway.signal(signal.SIGTERM)
            assert await gateway.exit_code() == 0
            assert time.monotonic() - signalled < 5  # the 1 s deadline, plus start-up slack
            # The stuck request was cut at the deadline, as configured.
            with contextlib.suppress(aiohttp.ClientError):
                (await pending).release()
    finally:
        test_over.set()
        await runner.cleanup()
