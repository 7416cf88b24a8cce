"""The fixtures every test module may ask for; the helpers they use are in support.py.

Hypothesis runs deterministically in CI (``CI=true``: the ``ci`` profile, derandomized,
no example database), so a CI run never fails on an example no one can replay; local
runs keep exploring new examples. Neither profile has a deadline: on a shared, loaded
machine one example can take several times its idle time, and a deadline turns that into
a failure that says nothing about the code.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from hypothesis import settings
from prometheus_client import CollectorRegistry
from yarl import URL

from gateway.config import Settings
from gateway.logs import configure_logging
from gateway.mock.upstream import DEMO_SECRET, STATE, MockSettings, create_mock_app, journal
from gateway.server import GatewayServer

from .support import (
    ENVIRON,
    SENSITIVE,
    SESSION_ID,
    SIGNATURE,
    Gateway,
    GatewayProcess,
    Mock,
    Pki,
    RawUpstream,
    RedisServer,
    StartGateway,
    StartProcess,
    StartRedis,
    remember_sensitive,
    serve_app,
    settings_for,
    tcp_server,
)
from .wire import Relay, check_framing

settings.register_profile("ci", derandomize=True, database=None, print_blob=True, deadline=None)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI", "").lower() == "true" else "dev")


@pytest.fixture(autouse=True)
def logs() -> Iterator[io.StringIO]:
    """Every test's log output, checked afterwards for secrets, sessions and signatures."""
    buffer = io.StringIO()
    configure_logging("json", stream=buffer, cache=False)
    SENSITIVE.clear()
    SENSITIVE.update({DEMO_SECRET.decode(), SESSION_ID})
    yield buffer
    text = buffer.getvalue()
    leaked = sorted(value for value in SENSITIVE if value and value in text)
    assert not leaked, f"sensitive values in the logs: {leaked}\n{text}"
    assert not SIGNATURE.search(text), "a signature in the logs"


@pytest.fixture
async def start_gateway() -> AsyncIterator[StartGateway]:
    """Start gateways for ``settings``; all are stopped after the test."""
    started: list[GatewayServer] = []

    async def start(settings: Settings, environ: dict[str, str] | None = None) -> Gateway:
        registry = CollectorRegistry()
        server = GatewayServer(
            settings, registry=registry, environ=ENVIRON if environ is None else environ
        )
        started.append(server)
        return Gateway(server, await server.start(), registry)

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
async def mock() -> AsyncIterator[Mock]:
    """The Aleacc stand-in under /api, faults enabled, behind a recording relay.

    Afterwards every byte the gateway sent it is parsed again with h11: as many clean
    messages as the stand-in answered requests, no more.
    """
    app = create_mock_app(MockSettings(faults=True, base_path="/api"))
    runner, url = await serve_app(app)
    relay = await Relay(("127.0.0.1", url.port or 0)).start()
    yield Mock(app, URL(f"http://127.0.0.1:{relay.port}/api"), relay)
    await relay.close()
    await runner.cleanup()
    for seen in journal(app):
        remember_sensitive(seen.authorization, seen.session_id)
    # As many messages as the stand-in's own parser received, no more.
    assert sum(check_framing(bytes(s)) for s in relay.streams) == app[STATE].received


@pytest.fixture
async def gateway(mock: Mock, start_gateway: StartGateway) -> Gateway:
    """A gateway in front of the stand-in, with default settings."""
    return await start_gateway(settings_for(mock.url))


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """A caller that sees bytes as sent: no decompression, no cookies kept."""
    async with aiohttp.ClientSession(
        auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        yield session


@pytest.fixture
async def raw_upstream() -> AsyncIterator[RawUpstream]:
    upstream = RawUpstream()
    async with tcp_server(upstream.handle, upstream.open_writers) as upstream.url:
        yield upstream
    for recorded in upstream.requests:
        for value in recorded.header("Authorization"):
            remember_sensitive(value, None)
    for stream in upstream.streams:
        assert check_framing(stream) == 1


@pytest.fixture
async def gateway_process() -> AsyncIterator[StartProcess]:
    """Start ``serve`` processes; each is killed after the test if still running."""
    started: list[GatewayProcess] = []

    async def start(config: Path | None, env: dict[str, str] | None = None) -> GatewayProcess:
        process = await GatewayProcess.start(config, env)
        started.append(process)
        return process

    yield start
    for process in started:
        await process.kill()
        text = json.dumps(process.lines)
        leaked = sorted(value for value in SENSITIVE if value and value in text)
        assert not leaked, f"sensitive values in a gateway's log: {leaked}"


@pytest.fixture
async def redis_server() -> AsyncIterator[StartRedis]:
    """Start redis-servers (``password``: with one); each is killed after the test."""
    started: list[tuple[RedisServer, str]] = []

    async def start(password: str | None = None) -> RedisServer:
        # A short directory: a Unix socket's path is at most 107 bytes.
        directory = tempfile.mkdtemp(prefix="aleacc-redis-")
        server = RedisServer(Path(directory), password)
        started.append((server, directory))
        await server.start()
        return server

    yield start
    for server, directory in started:
        await server.kill()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    client_ca = tmp_path / "client-ca.pem"
    ca.cert_pem.write_to_path(str(client_ca))
    pki = Pki(ca, tmp_path / "tls.crt", tmp_path / "tls.key", client_ca, tmp_path)
    pki.issue_server()
    return pki
