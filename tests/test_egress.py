"""Egress through a real forward proxy (Debian's tinyproxy, from scripts/install-test-tools):
a CONNECT tunnel to an https upstream, absolute-form requests to an http one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import trustme
from yarl import URL

from .support import (
    ENVIRON,
    SENSITIVE,
    StartGateway,
    config_file,
    run_cli,
    settings_for,
    system_tool,
    tcp_server,
    unused_port,
    verify_recorded,
)
from .test_pool import ScriptedUpstream, tls_upstream

USER, PASSWORD = "gw", "s3cret-proxy-password"


@dataclass
class Tinyproxy:
    url: URL
    log: Path

    def requests(self, method: str) -> list[str]:
        """The request lines of ``method`` the proxy logged."""
        return [
            line.split("): ", 1)[1]
            for line in self.log.read_text().splitlines()
            if "Request (file descriptor" in line and f"): {method} " in line
        ]


StartProxy = Callable[..., Awaitable[Tinyproxy]]


@pytest.fixture
async def start_proxy(tmp_path: Path) -> AsyncIterator[StartProxy]:
    """Start tinyproxy processes on loopback; ``auth``: require USER:PASSWORD; ``lines``:
    more configuration (say, ``ConnectPort 443`` to refuse tunnels to other ports)."""
    binary = system_tool("tinyproxy")
    processes: list[asyncio.subprocess.Process] = []

    async def start(auth: bool = True, lines: tuple[str, ...] = ()) -> Tinyproxy:
        port = unused_port()
        log = tmp_path / f"tinyproxy-{port}.log"
        config = tmp_path / f"tinyproxy-{port}.conf"
        config.write_text(
            "\n".join(
                [
                    f"Port {port}",
                    "Listen 127.0.0.1",
                    "Timeout 30",
                    "LogLevel Connect",
                    f'LogFile "{log}"',
                    "MaxClients 50",
                    "DisableViaHeader Yes",
                    *([f"BasicAuth {USER} {PASSWORD}"] if auth else []),
                    *lines,
                ]
            )
            + "\n"
        )
        process = await asyncio.create_subprocess_exec(
            binary,
            "-d",
            "-c",
            str(config),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        processes.append(process)
        # Ready once it accepts a connection (it logs nothing when it starts listening).
        async with asyncio.timeout(10):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except ConnectionRefusedError:
                    await asyncio.sleep(0.01)
                    continue
                writer.close()
                break
        return Tinyproxy(URL(f"http://127.0.0.1:{port}"), log)

    SENSITIVE.add(PASSWORD)
    yield start
    for process in processes:
        process.terminate()
        await process.wait()


@pytest.fixture
def auth_file(tmp_path: Path) -> Path:
    path = tmp_path / "proxy-auth"
    path.write_text(f"{USER}:{PASSWORD}\n")
    return path


@contextlib.asynccontextmanager
async def https_upstream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[URL, ScriptedUpstream]]:
    """A TLS upstream whose CA the gateway trusts (SSL_CERT_FILE, as for the system's)."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    upstream = ScriptedUpstream()
    async with tls_upstream(ca, upstream) as url:
        yield url, upstream


async def get(client: aiohttp.ClientSession, url: URL) -> tuple[int, str]:
    async with client.get(url / "player" / "balance") as r:
        body = await r.json() if r.content_type == "application/json" else {}
        return r.status, str(body.get("error", ""))


async def test_an_https_upstream_through_a_connect_tunnel(
    start_proxy: StartProxy,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
    auth_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = await start_proxy()
    async with https_upstream(tmp_path, monkeypatch) as (url, upstream):
        settings = settings_for(
            url / "api", upstream={"proxy_url": proxy.url, "proxy_auth_file": auth_file}
        )
        gateway = await start_gateway(settings)
        for _ in range(3):
            assert await get(client, gateway.url) == (200, "")
    # One tunnel, kept alive and reused; inside it the requests as ever (origin form,
    # signed, no proxy credentials).
    assert proxy.requests("CONNECT") == [f"CONNECT 127.0.0.1:{url.port} HTTP/1.1"]
    assert upstream.connections == 1
    assert [r.target for r in upstream.requests] == ["/api/player/balance"] * 3
    for recorded in upstream.requests:
        assert recorded.header("Proxy-Authorization") == []
        verify_recorded(recorded)


async def test_an_http_upstream_gets_absolute_form_requests(
    start_proxy: StartProxy,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
    auth_file: Path,
) -> None:
    proxy = await start_proxy()
    upstream = ScriptedUpstream()
    async with tcp_server(upstream.handle, upstream.writers) as url:
        settings = settings_for(
            url / "api", upstream={"proxy_url": proxy.url, "proxy_auth_file": auth_file}
        )
        gateway = await start_gateway(settings)
        async with client.post(gateway.url / "player" / "signin", json={"Username": "u"}) as r:
            assert r.status == 200
    assert proxy.requests("POST") == [f"POST {url}/api/player/signin HTTP/1.1"]
    # What the proxy passed on is signed as the gateway sent it (in origin form).
    (recorded,) = upstream.requests
    assert recorded.target == "/api/player/signin"
    assert recorded.header("Proxy-Authorization") == []
    verify_recorded(recorded)


async def test_the_environment_names_the_proxy_and_no_proxy_bypasses_it(
    start_proxy: StartProxy,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = await start_proxy()
    # Credentials in the URL: the environment's convention (curl's too).
    environ = {**ENVIRON, "https_proxy": f"http://{USER}:{PASSWORD}@127.0.0.1:{proxy.url.port}"}
    async with https_upstream(tmp_path, monkeypatch) as (url, upstream):
        settings = settings_for(url, upstream={"proxy_from_env": True})
        via_proxy = await start_gateway(settings, environ)
        assert await get(client, via_proxy.url) == (200, "")
        assert len(proxy.requests("CONNECT")) == 1
        direct = await start_gateway(settings, {**environ, "NO_PROXY": "localhost,127.0.0.1"})
        assert await get(client, direct.url) == (200, "")
        assert len(proxy.requests("CONNECT")) == 1
        assert upstream.connections == 2


@pytest.mark.parametrize(
    ("lines", "why"),
    [
        (("ConnectPort 443",), "a tunnel to another port is forbidden (403)"),
        ((), "no credentials (407)"),
    ],
)
async def test_a_refusing_proxy_is_a_502_and_never_retried(
    start_proxy: StartProxy,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
    auth_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    lines: tuple[str, ...],
    why: str,
) -> None:
    proxy = await start_proxy(lines=lines)
    credentials = {"proxy_auth_file": auth_file} if lines else {}
    async with https_upstream(tmp_path, monkeypatch) as (url, upstream):
        settings = settings_for(url, upstream={"proxy_url": proxy.url, "retries": 2, **credentials})
        gateway = await start_gateway(settings)
        assert await get(client, gateway.url) == (502, "upstream_unavailable"), why
    assert gateway.sample("aleacc_gateway_upstream_errors_total", kind="proxy") == 1
    assert len(proxy.requests("CONNECT")) == 1  # not retried
    assert upstream.connections == 0


async def test_an_http_upstream_behind_a_proxy_wanting_credentials(
    start_proxy: StartProxy, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy()
    upstream = ScriptedUpstream()
    async with tcp_server(upstream.handle, upstream.writers) as url:
        gateway = await start_gateway(settings_for(url, upstream={"proxy_url": proxy.url}))
        # The proxy's 407 is the proxy's, not Aleacc's: a 502, counted as a proxy fault.
        assert await get(client, gateway.url) == (502, "upstream_unavailable")
    assert gateway.sample("aleacc_gateway_upstream_errors_total", kind="proxy") == 1
    assert upstream.connections == 0


async def test_an_unreachable_proxy_is_a_502(
    start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    closed = URL(f"http://127.0.0.1:{unused_port()}")
    for upstream in ("https://aleacc.example.com/api", "http://aleacc.example.com/api"):
        gateway = await start_gateway(settings_for(upstream, upstream={"proxy_url": closed}))
        assert await get(client, gateway.url) == (502, "upstream_unavailable")
        assert gateway.sample("aleacc_gateway_upstream_errors_total", kind="proxy") == 1


async def test_serve_names_an_unusable_proxy_setting(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("ab" * 32)
    config = config_file(tmp_path / "gw.toml", URL("https://aleacc.example.com/api"), secret)
    missing = tmp_path / "no-such-file"
    config.write_text(
        config.read_text().replace(
            "[signing]",
            f'proxy_url = "http://127.0.0.1:3128"\nproxy_auth_file = "{missing}"\n[signing]',
        )
    )
    code, out, err = await run_cli("serve", "--config", str(config))
    assert (code, out) == (1, "")
    assert err == f"{config}: upstream.proxy_auth_file {missing}: No such file or directory\n"
    # check-config, perhaps run where the file is not mounted, only warns about it...
    code, out, _ = await run_cli("check-config", "--config", str(config))
    assert code == 0
    assert f"warning: upstream.proxy_auth_file {missing}: No such file or directory" in out
    # ...but one that is there and wrong is a problem.
    missing.write_text("no colon here")
    code, _, err = await run_cli("check-config", "--config", str(config))
    assert code == 1
    assert "must hold one line user:password" in err
    # From the environment, the variable is named: an https:// proxy is not supported.
    config.write_text(
        config.read_text()
        .replace(f'proxy_auth_file = "{missing}"\n', "")
        .replace('proxy_url = "http://127.0.0.1:3128"', "proxy_from_env = true")
    )
    code, _, err = await run_cli(
        "serve", "--config", str(config), env={"https_proxy": "https://proxy.internal:3129"}
    )
    assert (code, err) == (
        1,
        f"{config}: https_proxy: must be an http:// proxy URL like http://proxy:3128\n",
    )
