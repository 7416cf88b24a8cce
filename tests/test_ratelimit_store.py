"""Fleet-wide limits: the token buckets in a real Redis, shared by gateways and workers."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from gateway.config import Settings, TenantSettings
from gateway.mock.upstream import DEMO_SECRET

from .support import (
    SECRET_ENV,
    Gateway,
    RawUpstream,
    RedisServer,
    StartGateway,
    StartProcess,
    StartRedis,
    config_file,
    run_cli,
    settings_for,
    unused_port,
)

# Slow enough that a few seconds' arithmetic is clear, fast enough to refill in a test.
RATE, BURST = 4.0, 3
WINDOW_S = 1.5
PLAYER = {"X-Forwarded-For": "203.0.113.9"}  # through a trusted proxy (loopback)
# Where a test counts exact answers: a check that ran out of time on a loaded machine
# would let a request through unchecked. The stalled-store test sets its own.
PATIENT_MS = 2000


async def assert_fleet_allows_the_rate_once(
    urls: list[URL], store: RedisServer, headers: dict[str, str] | None = None
) -> None:
    """Requests in turn to each of ``urls`` until WINDOW_S of the store's clock (the one
    its buckets run on) has passed: together they let through what one bucket holds and
    gains in that time; never more, and less by at most a token in flight per gateway
    and the one not yet whole at the end."""
    start = await store.time()
    allowed = 0
    async with aiohttp.ClientSession() as client:
        while (elapsed := await store.time() - start) < WINDOW_S:
            for url in urls:
                async with client.get(url / "x", headers=headers) as response:
                    assert response.status in (200, 429), await response.text()
                    allowed += response.status == 200
    expected = BURST + RATE * elapsed
    assert expected - 1 - len(urls) <= allowed <= expected, (allowed, elapsed)


def gateway_config(tmp_path: Path, upstream: URL, store: str, **tables: Any) -> Path:
    secret = tmp_path / "secret"
    secret.write_bytes(DEMO_SECRET)
    return config_file(
        tmp_path / "gw.toml",
        upstream,
        secret,
        signing=tables.get("signing"),
        limits={"store_url": store, "store_timeout_ms": PATIENT_MS, **tables.get("limits", {})},
        server=tables.get("server"),
    )


@pytest.mark.parametrize(
    ("tables", "headers"),
    [
        ({"signing": {"rate_per_s": RATE, "burst": BURST}}, None),
        ({"limits": {"player_rate_per_s": RATE, "player_burst": BURST}}, PLAYER),
    ],
    ids=["tenant", "player"],
)
async def test_two_gateways_sharing_a_store_allow_the_rate_once(
    tmp_path: Path,
    raw_upstream: RawUpstream,
    gateway_process: StartProcess,
    redis_server: StartRedis,
    tables: dict[str, Any],
    headers: dict[str, str] | None,
) -> None:
    store = await redis_server()
    config = gateway_config(tmp_path, raw_upstream.url, store.url, **tables)
    first, second = await gateway_process(config), await gateway_process(config)
    # Each alone would allow all of it: together, twice as much without the store.
    await assert_fleet_allows_the_rate_once([first.proxy, second.proxy], store, headers)


async def test_two_workers_share_one_bucket_not_half_each(
    tmp_path: Path,
    raw_upstream: RawUpstream,
    gateway_process: StartProcess,
    redis_server: StartRedis,
) -> None:
    store = await redis_server()
    signing = {"rate_per_s": RATE, "burst": BURST}
    config = gateway_config(
        tmp_path, raw_upstream.url, store.url, signing=signing, server={"workers": 2}
    )
    config.write_text(config.read_text().replace("127.0.0.1:0", f"127.0.0.1:{unused_port()}", 1))
    supervisor = await gateway_process(config)
    await supervisor.wait_for("worker_started", count=2)
    # One kept-alive connection reaches one worker: with its own share it would allow
    # half (BURST / 2 rounded up + RATE / 2 a second); the fleet's bucket gives it all.
    await assert_fleet_allows_the_rate_once([supervisor.proxy], store)
    async with aiohttp.ClientSession() as client, client.get(supervisor.admin / "readyz") as r:
        assert (await r.json())["rate_limit_store"]["state"] == "up"


def stored(store: RedisServer, **limits: Any) -> dict[str, Any]:
    """[limits] pointing at ``store``."""
    return {"store_url": store.url, "store_timeout_ms": PATIENT_MS, **limits}


async def status(
    client: aiohttp.ClientSession, gw: Gateway, host: str = "gw", **headers: str
) -> tuple[int, str | None]:
    async with client.get(gw.url / "x", headers={"Host": host, **headers}) as response:
        body = await response.json() if response.status != 200 else {}
        return response.status, body.get("error")


async def test_the_same_tenant_name_shares_a_bucket_and_another_name_does_not(
    raw_upstream: RawUpstream,
    start_gateway: StartGateway,
    redis_server: StartRedis,
    client: aiohttp.ClientSession,
) -> None:
    store = await redis_server()
    brand_b = TenantSettings(
        name="brand-b",
        api_id="b" * 32,
        secret_env=SECRET_ENV,
        hosts=frozenset({"b.svc"}),
        rate_per_s=0.01,
        burst=1,
    )
    settings: Settings = dataclasses.replace(
        settings_for(raw_upstream.url, limits=stored(store), signing={"rate_per_s": 0.01}),
        tenants=(brand_b,),
    )
    one, other = await start_gateway(settings), await start_gateway(settings)
    assert await status(client, one) == (200, None)
    assert await status(client, other) == (429, "rate_limited")  # default's, taken by one
    assert await status(client, other, "b.svc") == (200, None)  # brand-b has its own
    assert await status(client, one, "b.svc") == (429, "rate_limited")
    async with store.client() as redis:
        assert sorted(await redis.keys("*")) == [
            "aleacc-gateway:tenant:brand-b",
            "aleacc-gateway:tenant:default",
        ]


async def wait_for_store(
    client: aiohttp.ClientSession, gw: Gateway, state: str, polls: int = 200
) -> None:
    """Until /readyz (ready all along) says the store is ``state``: a bounded poll."""
    for _ in range(polls):
        async with client.get(gw.admin_url / "readyz") as response:
            assert response.status == 200
            if (await response.json())["rate_limit_store"]["state"] == state:
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the store never became {state}")


@pytest.mark.parametrize("mode", ["allow", "refuse"])
async def test_a_store_that_dies_lets_through_or_refuses_and_limits_return_with_it(
    raw_upstream: RawUpstream,
    start_gateway: StartGateway,
    redis_server: StartRedis,
    client: aiohttp.ClientSession,
    mode: str,
) -> None:
    store = await redis_server()
    limits = stored(store, on_store_error=mode)
    settings = settings_for(raw_upstream.url, limits=limits, signing={"rate_per_s": 0.01})
    gw = await start_gateway(settings)
    assert [await status(client, gw) for _ in range(2)] == [(200, None), (429, "rate_limited")]
    assert gw.sample("aleacc_gateway_rate_limit_store_up") == 1

    await store.kill()
    answers = [await status(client, gw) for _ in range(4)]
    if mode == "allow":
        assert answers == [(200, None)] * 4
    else:
        assert answers == [(503, "rate_limit_store_unavailable")] * 4
    errors = sum(
        gw.sample("aleacc_gateway_rate_limit_store_errors_total", reason=reason)
        for reason in ("timeout", "refused", "auth", "other")
    )
    assert errors == 4
    await wait_for_store(client, gw, "down")  # named in /readyz, which stays 200
    assert gw.sample("aleacc_gateway_rate_limit_store_up") == 0

    await store.start()  # empty, as a store that lost its memory: every bucket full
    await wait_for_store(client, gw, "up")
    assert [await status(client, gw) for _ in range(2)] == [(200, None), (429, "rate_limited")]
    assert gw.sample("aleacc_gateway_rate_limit_store_up") == 1


async def test_a_connection_the_store_closed_is_opened_afresh_and_the_check_counts(
    raw_upstream: RawUpstream,
    start_gateway: StartGateway,
    redis_server: StartRedis,
    client: aiohttp.ClientSession,
) -> None:
    store = await redis_server()
    limits = stored(store, on_store_error="refuse")
    gw = await start_gateway(
        settings_for(raw_upstream.url, limits=limits, signing={"rate_per_s": 0.01})
    )
    assert await status(client, gw) == (200, None)  # its connection to the store is idle
    async with store.client() as redis:  # as a failover or an idle timeout would
        assert await redis.client_kill_filter(_type="normal", skipme=True) >= 1
    assert await status(client, gw) == (429, "rate_limited")
    errors = gw.sample("aleacc_gateway_rate_limit_store_errors_total", reason="other")
    assert errors == 0


async def test_a_stalled_store_never_holds_a_request_past_its_timeout(
    raw_upstream: RawUpstream,
    start_gateway: StartGateway,
    redis_server: StartRedis,
    client: aiohttp.ClientSession,
) -> None:
    store = await redis_server()
    limits = stored(store, store_timeout_ms=50)
    gw = await start_gateway(
        settings_for(raw_upstream.url, limits=limits, signing={"rate_per_s": 100})
    )
    assert await status(client, gw) == (200, None)  # the connection to the store is open
    async with store.client() as redis:
        await redis.client_pause(5000, all=True)
    waits = []
    for _ in range(5):
        started = time.perf_counter()
        assert await status(client, gw) == (200, None)
        waits.append(time.perf_counter() - started)
    # 50 ms and a generous margin; the store would have held them 5 s.
    assert max(waits) < 1.0, waits
    assert gw.sample("aleacc_gateway_rate_limit_store_errors_total", reason="timeout") == 5


async def test_every_key_expires_and_none_holds_a_client_ip(
    raw_upstream: RawUpstream,
    start_gateway: StartGateway,
    redis_server: StartRedis,
    client: aiohttp.ClientSession,
) -> None:
    store = await redis_server()
    limits = stored(store, store_url=store.unix_url, player_rate_per_s=1.0, player_burst=2)
    gw = await start_gateway(
        settings_for(raw_upstream.url, limits=limits, signing={"rate_per_s": 100})
    )
    addresses = ["203.0.113.7", "198.51.100.23", "2001:db8::42"]
    for address in addresses:
        for _ in range(3):
            await status(client, gw, **{"X-Forwarded-For": address})
    assert gw.sample("aleacc_gateway_rate_limited_total", tenant="default", scope="player") == 3
    async with store.client() as redis:
        keys = [key async for key in redis.scan_iter()]
        assert len(keys) == 1 + len(addresses)  # the tenant's, and one per player
        for key in keys:
            assert await redis.pttl(key) > 0
            stored_text = key + repr(await redis.hgetall(key))
            assert not any(address in stored_text for address in addresses), stored_text


async def test_many_players_leave_no_keys_once_their_buckets_are_full_again(
    raw_upstream: RawUpstream,
    start_gateway: StartGateway,
    redis_server: StartRedis,
) -> None:
    store = await redis_server()
    # Each player's bucket is full again 0.1 s after its one request; the tenant's own
    # bucket refuses all but the first, so nothing goes upstream.
    limits = stored(store, player_rate_per_s=10.0, player_burst=1)
    gw = await start_gateway(
        settings_for(raw_upstream.url, limits=limits, signing={"rate_per_s": 0.001, "burst": 1})
    )
    total = 3000
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.bound.proxy[1])
    writer.write(
        b"".join(
            b"GET /x HTTP/1.1\r\nHost: gw\r\nX-Forwarded-For: 198.18.%d.%d\r\n\r\n"
            % (n >> 8, n & 255)
            for n in range(total)
        )
    )
    for _ in range(total):
        length = 0
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
    writer.close()
    assert gw.sample("aleacc_gateway_rate_limited_total", tenant="default", scope="tenant") == (
        total - 1
    )
    assert gw.sample("aleacc_gateway_rate_limit_store_duration_seconds_count") == total
    async with store.client() as redis:
        for _ in range(200):  # a bounded poll: each key expires 0.1 s after its request
            if not [key async for key in redis.scan_iter("aleacc-gateway:player:*")]:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("player keys outlived their buckets")


async def test_a_store_with_a_password(
    tmp_path: Path,
    raw_upstream: RawUpstream,
    start_gateway: StartGateway,
    redis_server: StartRedis,
    client: aiohttp.ClientSession,
) -> None:
    store = await redis_server(password="s3cret-store-pw")
    environ = {SECRET_ENV: DEMO_SECRET.decode(), "STORE_PASSWORD": "s3cret-store-pw"}
    limits = stored(store, store_password_env="STORE_PASSWORD")
    gw = await start_gateway(
        settings_for(raw_upstream.url, limits=limits, signing={"rate_per_s": 0.01}), environ
    )
    assert [await status(client, gw) for _ in range(2)] == [(200, None), (429, "rate_limited")]

    password = tmp_path / "store-password"
    password.write_text("s3cret-store-pw\n")
    config = gateway_config(
        tmp_path, raw_upstream.url, store.url, limits={"store_password_file": str(password)}
    )
    code, out, err = await run_cli("check-config", "--config", str(config), "--probe-store")
    assert (code, err) == (0, "")
    assert f"store {store.url}: Redis 7." in out or f"store {store.url}: Redis 8." in out
    password.write_text("wrong")
    code, out, err = await run_cli("check-config", "--config", str(config), "--probe-store")
    assert code == 2
    assert err.startswith(f"store {store.url}: cannot use it (auth)"), err
    assert "s3cret" not in out + err


async def test_probe_store_says_why_it_cannot_connect(tmp_path: Path) -> None:
    config = gateway_config(
        tmp_path, URL("http://127.0.0.1:9"), f"redis://127.0.0.1:{unused_port()}"
    )
    code, _, err = await run_cli("check-config", "--config", str(config), "--probe-store")
    assert code == 2
    assert "cannot use it (refused)" in err, err
    assert err.count("\n") == 1, err
    plain = config_file(tmp_path / "plain.toml", URL("http://127.0.0.1:9"), tmp_path / "secret")
    code, _, err = await run_cli("check-config", "--config", str(plain), "--probe-store")
    assert (code, err) == (2, "--probe-store: limits.store_url is not set\n")


async def test_readyz_names_a_store_never_reached_before_any_request(
    raw_upstream: RawUpstream, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    limits = {"store_url": f"redis://127.0.0.1:{unused_port()}/0"}
    gw = await start_gateway(
        settings_for(raw_upstream.url, limits=limits, signing={"rate_per_s": 1.0})
    )
    # No request sent: the gateway asked at start (else only after HEALTH_EVERY_S, 5 s).
    await wait_for_store(client, gw, "down", polls=40)
    async with client.get(gw.admin_url / "readyz") as response:
        body = await response.json()
    assert (response.status, body["status"]) == (200, "ready")
    assert body["rate_limit_store"]["reason"] == "refused"
    assert gw.sample("aleacc_gateway_rate_limit_store_up") == 0
