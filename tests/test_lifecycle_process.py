"""Graceful drain and hot secret rotation, on a real gateway process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web

from gateway.mock.upstream import DEMO_SECRET, MockSettings, create_mock_app, journal

from .support import (
    SENSITIVE,
    GatewayProcess,
    config_file,
    remember_sensitive,
    serve_app,
    serve_handler,
)

StartProcess = Callable[[Path], Awaitable[GatewayProcess]]
NEW_SECRET = b"0123456789abcdef" * 4  # a rotated key, 64 hex characters


async def readiness(client: aiohttp.ClientSession, gateway: GatewayProcess) -> int:
    async with client.get(gateway.admin / "readyz") as r:
        return r.status


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


def kubernetes_secret_dir(root: Path, value: bytes, generation: str) -> None:
    """Lay out or update a secret volume the way the kubelet does: an atomic symlink swap."""
    data = root / f"..{generation}"
    data.mkdir()
    (data / "api-secret").write_bytes(value)
    link = root / "..data_tmp"
    link.symlink_to(data.name)
    os.replace(link, root / "..data")  # rename(2) over the old "..data": atomic
    if not (root / "api-secret").is_symlink():
        (root / "api-secret").symlink_to("..data/api-secret")


async def test_symlink_swap_rotation_without_a_failed_request(
    gateway_process: StartProcess, tmp_path: Path
) -> None:
    SENSITIVE.add(NEW_SECRET.decode())
    mock_app = create_mock_app(MockSettings(secrets=(DEMO_SECRET, NEW_SECRET)))
    runner, upstream = await serve_app(mock_app)
    volume = tmp_path / "secret-volume"
    volume.mkdir()
    kubernetes_secret_dir(volume, DEMO_SECRET, "2026_11_24_1")
    config = config_file(tmp_path / "gw.toml", upstream, volume / "api-secret")
    gateway = await gateway_process(config)
    statuses: list[int] = []
    stop = asyncio.Event()

    async def load(client: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            async with client.post(gateway.proxy / "echo", data=b"x") as r:
                statuses.append(r.status)

    try:
        async with aiohttp.ClientSession() as client:
            loader = asyncio.create_task(load(client))
            await gateway.wait_for("secret_loaded")
            swapped = time.monotonic()
            kubernetes_secret_dir(volume, NEW_SECRET, "2026_11_24_2")
            await gateway.wait_for("secret_loaded", count=2)
            picked_up = time.monotonic() - swapped
            # The next signed requests use the new secret (index 1 at the stand-in).
            while not any(seen.secret_index == 1 for seen in journal(mock_app)):
                async with client.post(gateway.proxy / "echo", data=b"x") as r:
                    statuses.append(r.status)
            assert picked_up < 2.0

            # A rotation that leaves an empty file keeps the last good secret.
            kubernetes_secret_dir(volume, b"", "2026_11_24_3")
            failed = await gateway.wait_for("secret_reload_failed")
            assert "is empty" in failed["problem"]
            assert await readiness(client, gateway) == 503
            stop.set()
            await loader
            async with client.post(gateway.proxy / "echo", data=b"x") as r:
                assert r.status == 200
            assert journal(mock_app)[-1].secret_index == 1
            async with client.get(gateway.admin / "metrics") as r:
                metrics = await r.text()
            assert 'aleacc_gateway_secret_reloads_total{result="loaded"} 2.0' in metrics
            assert 'aleacc_gateway_secret_reloads_total{result="error"} 1.0' in metrics
        assert statuses
        assert set(statuses) == {200}, "a request failed during the rotation"
        assert not any(seen.error == "invalid_signature" for seen in journal(mock_app))
    finally:
        stop.set()
        await runner.cleanup()
        for seen in journal(mock_app):
            remember_sensitive(seen.authorization, None)


async def test_sighup_reloads_the_secret(gateway_process: StartProcess, tmp_path: Path) -> None:
    SENSITIVE.add(NEW_SECRET.decode())
    mock_app = create_mock_app(MockSettings(secrets=(DEMO_SECRET, NEW_SECRET)))
    runner, upstream = await serve_app(mock_app)
    secret = tmp_path / "secret"
    secret.write_bytes(DEMO_SECRET)
    # Polling effectively off: only the signal can make the gateway notice.
    config = config_file(tmp_path / "gw.toml", upstream, secret, signing={"secret_poll_s": 3600})
    gateway = await gateway_process(config)
    try:
        async with aiohttp.ClientSession() as client:
            secret.write_bytes(NEW_SECRET)
            async with client.get(gateway.proxy / "echo") as r:
                assert r.status == 200
            assert journal(mock_app)[-1].secret_index == 0  # not noticed yet
            gateway.signal(signal.SIGHUP)
            await gateway.wait_for("secret_loaded", count=2)
            assert gateway.events("secret_reload_requested")
            async with client.get(gateway.proxy / "echo") as r:
                assert r.status == 200
            assert journal(mock_app)[-1].secret_index == 1
    finally:
        await runner.cleanup()
        for seen in journal(mock_app):
            remember_sensitive(seen.authorization, None)
