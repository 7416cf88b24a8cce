"""The secret (gateway/secret.py) as a running gateway sees it: readiness follows its source
at every poll, and a rotation (file change, symlink swap, SIGHUP) loses no request."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from gateway.mock.upstream import DEMO_SECRET, MockSettings, create_mock_app, journal
from gateway.preflight import preflight
from gateway.server import GatewayServer

from .support import (
    SENSITIVE,
    Gateway,
    RawUpstream,
    StartGateway,
    StartProcess,
    config_file,
    readiness,
    remember_sensitive,
    serve_app,
    settings_for,
)


# 1. Readiness follows the secret source at every poll.
async def gateway_with_secret_file(
    tmp_path: Path, start_gateway: StartGateway, raw_upstream: RawUpstream
) -> tuple[Path, Gateway]:
    secret = tmp_path / "secret"
    secret.write_bytes(DEMO_SECRET)
    settings = settings_for(raw_upstream.url, signing={"secret_file": secret, "secret_env": None})
    return secret, await start_gateway(settings)


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


NEW_SECRET = b"0123456789abcdef" * 4  # a rotated key, 64 hex characters


async def test_serve_signs_with_the_secret_its_preflight_read(tmp_path: Path) -> None:
    """The secret file is read once at start (what the pre-flight checked is what signs),
    and a change after that read is seen at the next poll."""
    secret = tmp_path / "secret"
    secret.write_bytes(DEMO_SECRET)
    settings = settings_for(
        "http://127.0.0.1:1", signing={"secret_file": secret, "secret_env": None}
    )
    loaded = preflight(settings, {})
    replacement = tmp_path / "replacement"
    replacement.write_bytes(NEW_SECRET)
    os.replace(replacement, secret)  # after the pre-flight's read, before the server's
    server = GatewayServer(settings, environ={}, loaded=loaded)
    try:
        store = server.secrets["default"]
        assert store.current == bytes.fromhex(DEMO_SECRET.decode())
        assert store.refresh() == "loaded"
        assert store.current == bytes.fromhex(NEW_SECRET.decode())
    finally:
        await server.stop()


async def test_readiness_recovers_when_the_secret_file_comes_back_unchanged(
    tmp_path: Path, start_gateway: StartGateway, raw_upstream: RawUpstream
) -> None:
    secret, gw = await gateway_with_secret_file(tmp_path, start_gateway, raw_upstream)
    store = gw.server.secrets["default"]

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
    gw.server.secrets["default"].refresh()
    assert gw.server.secrets["default"].problem is not None
    secret.chmod(0o600)
    gw.server.secrets["default"].refresh()
    assert gw.server.secrets["default"].problem is None


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
            assert (
                'aleacc_gateway_secret_reloads_total{result="loaded",tenant="default"} 2.0'
                in metrics
            )
            assert (
                'aleacc_gateway_secret_reloads_total{result="error",tenant="default"} 1.0'
                in metrics
            )
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
