"""Several brands in one gateway, through real sockets: each way a request's tenant is
chosen, the refusals that keep brand A from being signed as brand B, per-tenant secrets
and readiness, rate limits, and two workers."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from gateway import signing
from gateway.config import (
    Settings,
    SigningSettings,
    TenantSettings,
    TlsSettings,
    load_file,
)
from gateway.mock.upstream import (
    DEMO_API_ID,
    DEMO_SECRET,
    Credential,
    MockSettings,
    create_mock_app,
    journal,
)
from gateway.ratelimit import PLAYER_BUCKETS

from .support import (
    ANY_PORT,
    ENVIRON,
    SENSITIVE,
    Pki,
    StartGateway,
    StartProcess,
    config_file,
    networks,
    remember_sensitive,
    run_cli,
    serve_app,
    settings_for,
    unused_port,
)

B_ID, B_SECRET, B_HOST = "brand-b-api-id", b"bb" * 32, "aleacc-brand-b.payments.svc"
C_ID, C_SECRET, C_HOST = "brand-c-api-id", b"cc" * 32, "aleacc-brand-c.payments.svc"
C_SCHEME = signing.Scheme(signature_encoding="hex")  # brand C signs its own way
ENV = {**ENVIRON, "B_SECRET": B_SECRET.decode(), "C_SECRET": C_SECRET.decode()}


@dataclasses.dataclass
class Brands:
    """The stand-in, and its URL with the base path."""

    app: web.Application
    url: URL


@pytest.fixture
async def brands() -> AsyncIterator[Brands]:
    """The stand-in accepting the default credential, brand B's and brand C's."""
    SENSITIVE.update({B_SECRET.decode(), C_SECRET.decode()})
    others = (Credential(B_ID, (B_SECRET,)), Credential(C_ID, (C_SECRET,), C_SCHEME))
    app = create_mock_app(MockSettings(base_path="/api", others=others))
    runner, url = await serve_app(app)
    yield Brands(app, url / "api")
    await runner.cleanup()
    for seen in journal(app):
        remember_sensitive(seen.authorization, seen.session_id)


def brand_b(**values: Any) -> TenantSettings:
    return TenantSettings(name="brand-b", api_id=B_ID, secret_env="B_SECRET", **values)


def brand_c(**values: Any) -> TenantSettings:
    return TenantSettings(
        name="brand-c", api_id=C_ID, secret_env="C_SECRET", scheme=C_SCHEME, **values
    )


def with_tenants(settings: Settings, *tenants: TenantSettings, **sections: Any) -> Settings:
    return dataclasses.replace(settings, tenants=tenants, **sections)


def signed_by(mock: Brands) -> list[tuple[str, int]]:
    """Each request the stand-in received: the api_id it was signed with, and its answer."""
    seen = []
    for entry in journal(mock.app):
        auth = signing.parse_authorization(entry.authorization or "")
        seen.append((auth.api_id if auth else "", entry.status))
    return seen


async def get(
    client: aiohttp.ClientSession, url: URL, host: str, **headers: str
) -> tuple[int, dict[str, str], str]:
    """Status, headers and the error code (if the gateway answered itself)."""
    async with client.get(url / "echo", headers={"Host": host, **headers}) as r:
        body = await r.read()
        error = json.loads(body).get("error", "") if r.content_type == "application/json" else ""
        return r.status, dict(r.headers), str(error)


async def test_host_chooses_the_tenant_and_its_own_credential_signs(
    brands: Brands, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    settings = with_tenants(
        settings_for(brands.url),
        brand_b(hosts=frozenset({B_HOST})),
        brand_c(hosts=frozenset({C_HOST})),
    )
    gw = await start_gateway(settings, ENV)
    # Case and port do not matter; a Host no tenant claims is the default tenant's.
    for host in (B_HOST, "ALEACC-BRAND-C.payments.svc:8080", "frontend.casino.svc"):
        assert (await get(client, gw.url, host))[0] == 200
    assert signed_by(brands) == [(B_ID, 200), (C_ID, 200), (DEMO_API_ID, 200)]
    for tenant in ("brand-b", "brand-c", "default"):
        labels = {"tenant": tenant, "method": "GET", "status": "200"}
        assert gw.sample("aleacc_gateway_requests_total", **labels) == 1
        assert gw.sample("aleacc_gateway_upstream_responses_total", tenant=tenant, status="200")


async def test_a_fully_qualified_host_with_its_root_dot_is_the_same_tenant(
    brands: Brands, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    # Brand B's own peers (loopback here) write its name fully qualified, with the root's dot.
    b = brand_b(hosts=frozenset({B_HOST}), allowed_clients=networks("127.0.0.0/8"))
    gw = await start_gateway(with_tenants(settings_for(brands.url), b), ENV)
    for host in (B_HOST + ".", B_HOST.upper() + ".:8080"):
        assert (await get(client, gw.url, host))[0] == 200
    # Only one dot is the root's: with two it is no tenant's name, so the default's.
    assert (await get(client, gw.url, B_HOST + ".."))[0] == 200
    assert signed_by(brands) == [(B_ID, 200), (B_ID, 200), (DEMO_API_ID, 200)]


async def test_a_tenants_own_listener_chooses_it_whatever_the_host(
    brands: Brands, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    settings = with_tenants(settings_for(brands.url), brand_c(listen=ANY_PORT))
    gw = await start_gateway(settings, ENV)
    own = URL(f"http://127.0.0.1:{gw.server.tenant_addresses['brand-c'][1]}")
    assert (await get(client, own, "frontend.casino.svc"))[0] == 200
    assert (await get(client, gw.url, "frontend.casino.svc"))[0] == 200  # the shared one
    assert signed_by(brands) == [(C_ID, 200), (DEMO_API_ID, 200)]


async def test_without_a_default_an_unclaimed_host_is_421_and_never_signed(
    brands: Brands, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    settings = with_tenants(
        settings_for(brands.url), brand_b(hosts=frozenset({B_HOST})), signing=SigningSettings()
    )
    gw = await start_gateway(settings, ENV)
    status, _, error = await get(client, gw.url, "frontend.casino.svc")
    assert (status, error) == (421, "tenant_unknown")
    assert (await get(client, gw.url, B_HOST))[0] == 200
    assert signed_by(brands) == [(B_ID, 200)]
    labels = {"tenant": "unknown", "method": "GET", "status": "421"}
    assert gw.sample("aleacc_gateway_requests_total", **labels) == 1


async def test_a_forged_host_from_another_brands_peer_is_refused(
    brands: Brands, start_gateway: StartGateway, client: aiohttp.ClientSession, logs: object
) -> None:
    # Brand B's frontends are in 10.2.0.0/16; this caller (loopback) is brand A's.
    b = brand_b(hosts=frozenset({B_HOST}), allowed_clients=networks("10.2.0.0/16"))
    gw = await start_gateway(with_tenants(settings_for(brands.url), b), ENV)
    status, _, error = await get(client, gw.url, B_HOST)
    assert (status, error) == (403, "client_not_allowed")
    # X-Forwarded-For does not make a peer someone else: the peer's address is checked.
    status, _, error = await get(client, gw.url, B_HOST, **{"X-Forwarded-For": "10.2.0.9"})
    assert (status, error) == (403, "client_not_allowed")
    assert (await get(client, gw.url, "frontend.casino.svc"))[0] == 200  # its own tenant
    assert signed_by(brands) == [(DEMO_API_ID, 200)]


async def tls_get(port: int, context: ssl.SSLContext, host: str) -> tuple[int, str]:
    """Status and error code of one request over TLS with ``host`` as its Host."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    writer.write(f"GET /echo HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    error = json.loads(body).get("error", "") if b"application/json" in head else ""
    return int(head.split()[1]), str(error)


async def test_client_certificates_choose_tenants_and_cannot_cross(
    brands: Brands,
    start_gateway: StartGateway,
    pki: Pki,
) -> None:
    settings = with_tenants(
        settings_for(brands.url),
        brand_b(client_names=frozenset({"frontend-b.casino.svc"})),
        # C is chosen by Host, and also wants C's certificate.
        brand_c(hosts=frozenset({C_HOST}), client_names=frozenset({"frontend-c.casino.svc"})),
    )
    tls = TlsSettings(pki.cert, pki.key, pki.client_ca)
    gw = await start_gateway(
        dataclasses.replace(settings, server=dataclasses.replace(settings.server, tls=tls)), ENV
    )
    port = gw.bound.proxy[1]
    b = pki.client_context(pki.ca.issue_cert("frontend-b.casino.svc"))
    c = pki.client_context(pki.ca.issue_cert("frontend-c.casino.svc"))
    a = pki.client_context(pki.ca.issue_cert("frontend-a.casino.svc"))
    assert await tls_get(port, b, "gw") == (200, "")  # B by its certificate
    assert await tls_get(port, c, C_HOST) == (200, "")
    assert await tls_get(port, a, "gw") == (200, "")  # no claim: the default tenant
    # A's and B's certificates writing C's Host: chosen by Host, refused by C's names.
    assert await tls_get(port, a, C_HOST) == (403, "client_not_allowed")
    assert await tls_get(port, b, C_HOST) == (403, "client_not_allowed")
    assert signed_by(brands) == [(B_ID, 200), (C_ID, 200), (DEMO_API_ID, 200)]


async def test_each_tenants_secret_rotates_and_readiness_names_the_tenant(
    brands: Brands, start_gateway: StartGateway, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    secret = tmp_path / "brand-b" / "api-secret"
    b = dataclasses.replace(brand_b(hosts=frozenset({B_HOST})), secret_env=None, secret_file=secret)
    settings = with_tenants(settings_for(brands.url), b)
    gw = await start_gateway(settings, ENV)
    async with client.get(gw.admin_url / "readyz") as r:
        reasons = (await r.json())["reasons"]
        assert (r.status, len(reasons)) == (503, 1)
        assert reasons[0].startswith(f"tenant brand-b: no API secret loaded: secret file {secret}")
    # The default tenant signs on; brand B cannot be signed yet.
    assert (await get(client, gw.url, "frontend.casino.svc"))[0] == 200
    status, _, error = await get(client, gw.url, B_HOST)
    assert (status, error) == (500, "signing_failed")
    failures = {"tenant": "brand-b", "reason": "secret_unavailable"}
    assert gw.sample("aleacc_gateway_signing_failures_total", **failures) == 1
    secret.parent.mkdir()
    secret.write_bytes(B_SECRET + b"\n")
    gw.server.reload_secrets()
    async with client.get(gw.admin_url / "readyz") as r:
        assert r.status == 200
    assert (await get(client, gw.url, B_HOST))[0] == 200
    assert gw.sample("aleacc_gateway_secret_reloads_total", tenant="brand-b", result="loaded")
    assert gw.sample("aleacc_gateway_secret_reloads_total", tenant="default", result="error") == 0
    assert signed_by(brands) == [(DEMO_API_ID, 200), (B_ID, 200)]


async def test_a_tenants_rate_is_answered_429_locally_and_recovers(
    brands: Brands, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    b = brand_b(hosts=frozenset({B_HOST}), rate_per_s=1.0, burst=2)
    gw = await start_gateway(with_tenants(settings_for(brands.url), b), ENV)
    answers = [await get(client, gw.url, B_HOST) for _ in range(3)]
    assert [a[0] for a in answers] == [200, 200, 429]
    assert answers[2][2] == "rate_limited"
    assert answers[2][1]["Retry-After"] == "1"
    # Other tenants have their own (here: none).
    assert (await get(client, gw.url, "frontend.casino.svc"))[0] == 200
    assert gw.sample("aleacc_gateway_rate_limited_total", tenant="brand-b", scope="tenant") == 1
    assert gw.sample("aleacc_gateway_rate_limited_total", tenant="default", scope="tenant") == 0
    assert len(journal(brands.app)) == 3  # the 429 was never signed nor sent
    # A token a second: Retry-After's one second later there is one again.
    await asyncio.sleep(1.0)
    assert (await get(client, gw.url, B_HOST))[0] == 200


async def test_each_client_ip_has_its_own_bucket_within_a_tenant(
    brands: Brands, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    limits = {"player_rate_per_s": 0.5, "player_burst": 1}
    gw = await start_gateway(settings_for(brands.url, limits=limits), ENV)
    first = {"X-Forwarded-For": "203.0.113.5"}  # through a trusted proxy (loopback)
    assert (await get(client, gw.url, "gw", **first))[0] == 200
    status, headers, error = await get(client, gw.url, "gw", **first)
    assert (status, error, headers["Retry-After"]) == (429, "rate_limited", "2")
    assert (await get(client, gw.url, "gw", **{"X-Forwarded-For": "203.0.113.6"}))[0] == 200
    assert gw.sample("aleacc_gateway_rate_limited_total", tenant="default", scope="player") == 1


async def test_player_buckets_stay_bounded_past_their_capacity_of_client_ips(
    brands: Brands, start_gateway: StartGateway
) -> None:
    # The tenant's own bucket refuses all but the first request, after each client IP's
    # bucket was taken from: a thousand more buckets asked for than are kept, answered
    # locally. The eviction itself is shown at a small capacity in test_ratelimit.py.
    limits = {"player_rate_per_s": 1.0}
    settings = settings_for(brands.url, limits=limits, signing={"rate_per_s": 0.001, "burst": 1})
    gw = await start_gateway(settings, ENV)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.bound.proxy[1])
    statuses: dict[bytes, int] = {}
    total, batch = PLAYER_BUCKETS + 1_000, 1_000
    for start in range(0, total, batch):
        writer.write(
            b"".join(
                b"GET /echo HTTP/1.1\r\nHost: gw\r\nX-Forwarded-For: 198.%d.%d.%d\r\n\r\n"
                % (18 + (n >> 16), n >> 8 & 255, n & 255)
                for n in range(start, start + batch)
            )
        )
        for _ in range(batch):
            status = (await reader.readuntil(b"\r\n")).split()[1]
            statuses[status] = statuses.get(status, 0) + 1
            length = 0
            while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
    writer.close()
    assert statuses == {b"200": 1, b"429": total - 1}
    players = gw.server.tenants.by_name["default"].players
    assert players is not None
    assert len(players) == players.capacity == PLAYER_BUCKETS


async def test_two_workers_serve_every_tenant(
    tmp_path: Path, brands: Brands, gateway_process: StartProcess
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(DEMO_SECRET)
    (tmp_path / "b-secret").write_bytes(B_SECRET)
    config = config_file(tmp_path / "gw.toml", brands.url, secret, server={"workers": 2})
    text = config.read_text().replace("127.0.0.1:0", f"127.0.0.1:{unused_port()}", 1)
    b_port = unused_port()
    config.write_text(
        text
        + f'[[tenants]]\nname = "brand-b"\napi_id = "{B_ID}"\n'
        + f'secret_file = "{tmp_path / "b-secret"}"\nhosts = ["{B_HOST}"]\n'
        + f'[[tenants]]\nname = "brand-c"\napi_id = "{C_ID}"\nsecret_env = "C_SECRET"\n'
        + f'listen = "127.0.0.1:{b_port}"\nsignature_encoding = "hex"\n'
    )
    process = await gateway_process(config, ENV)
    await process.wait_for("worker_started", count=2)
    async with aiohttp.ClientSession() as client:
        for _ in range(10):
            assert (await get(client, process.proxy, B_HOST))[0] == 200
            assert (await get(client, URL(f"http://127.0.0.1:{b_port}"), "gw"))[0] == 200
        # A line is written after its worker folded its counts (test_workers.py).
        await process.wait_for("request", count=20)
        async with client.get(process.admin / "metrics") as r:
            metrics = await r.text()
    for tenant in ("brand-b", "brand-c"):
        line = f'aleacc_gateway_requests_total{{method="GET",status="200",tenant="{tenant}"}}'
        assert f"{line} 10.0" in metrics
    assert sorted(set(signed_by(brands))) == [(B_ID, 200), (C_ID, 200)]


def tenants_file(path: Path, upstream: URL) -> Path:
    """A config with the default tenant, brand B by Host and brand C (hex) by Host."""
    path.write_text(
        f'[server]\nlisten = "127.0.0.1:0"\nadmin_listen = "127.0.0.1:0"\n'
        f'[upstream]\nurl = "{upstream}"\n'
        f'[signing]\napi_id = "{DEMO_API_ID}"\nsecret_env = "{next(iter(ENVIRON))}"\n'
        f'[[tenants]]\nname = "brand-b"\napi_id = "{B_ID}"\nsecret_env = "B_SECRET"\n'
        f'hosts = ["{B_HOST}"]\n'
        f'[[tenants]]\nname = "brand-c"\napi_id = "{C_ID}"\nsecret_env = "C_SECRET"\n'
        f'hosts = ["{C_HOST}"]\nsignature_encoding = "hex"\n'
    )
    return path


async def test_probe_signs_with_the_tenants_credential(brands: Brands, tmp_path: Path) -> None:
    config = tenants_file(tmp_path / "gw.toml", brands.url)
    code, out, err = await run_cli(
        "probe",
        "--config",
        str(config),
        "--path",
        "/echo",
        "--interval-s",
        "0",
        "--tenant",
        "brand-b",
        env=ENV,
    )
    assert code == 0, out + err
    assert "  1. Aleacc's scheme (the default): 200" in out
    assert signed_by(brands) == [(B_ID, 200)]


async def test_the_stand_in_given_a_config_verifies_every_tenant(
    tmp_path: Path, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    SENSITIVE.update({B_SECRET.decode(), C_SECRET.decode()})
    port = unused_port()
    config = tenants_file(tmp_path / "gw.toml", URL(f"http://127.0.0.1:{port}/api"))
    stand_in = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "mock-upstream",
        "--config",
        str(config),
        "--listen",
        f"127.0.0.1:{port}",
        "--base-path",
        "/api",
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, **ENV},
    )
    try:
        assert stand_in.stdout is not None
        assert json.loads(await stand_in.stdout.readline())["event"] == "mock_upstream_started"
        gw = await start_gateway(load_file(config).settings, ENV)
        for host in (B_HOST, C_HOST, "gw"):
            assert (await get(client, gw.url, host))[0] == 200
        assert gw.sample("aleacc_gateway_upstream_responses_total", tenant="brand-c", status="200")
    finally:
        stand_in.terminate()
        await stand_in.wait()
