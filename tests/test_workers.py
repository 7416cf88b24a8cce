"""server.workers = 2 as real processes: shared port, summed metrics, restarts, drain."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import trustme
from yarl import URL

from gateway.config import ListenAddress
from gateway.mock.upstream import DEMO_SECRET
from gateway.server import check_free

from .support import GatewayProcess, RawUpstream, config_file, unused_port
from .test_observability_functional import wait_for_status

StartProcess = Callable[[Path], Awaitable[GatewayProcess]]


async def start_two_workers(
    gateway_process: StartProcess,
    tmp_path: Path,
    upstream: RawUpstream,
    wait: bool = True,
    server_lines: str = "",
) -> GatewayProcess:
    """A supervisor with two workers; ``wait``: until both have logged worker_started
    (which comes after "started", their lines being buffered)."""
    secret = tmp_path / "secret"
    secret.write_bytes(DEMO_SECRET)
    config = config_file(
        tmp_path / "gw.toml",
        upstream.url,
        secret,
        server={"workers": 2, "drain_delay_s": 0},
        signing={"secret_poll_s": 0.05},
    )
    # More than one worker needs a fixed port (they share it); the admin port may be 0.
    text = config.read_text().replace("127.0.0.1:0", f"127.0.0.1:{unused_port()}", 1)
    config.write_text(text.replace("[upstream]", f"{server_lines}[upstream]"))
    supervisor = await gateway_process(config)
    if wait:
        await supervisor.wait_for("worker_started", count=2)
    return supervisor


async def test_started_means_every_worker_listens(
    gateway_process: StartProcess, tmp_path: Path, raw_upstream: RawUpstream
) -> None:
    # Before the fix "started" came as the workers were spawned, and the first new
    # connections after it were refused.
    supervisor = await start_two_workers(gateway_process, tmp_path, raw_upstream, wait=False)
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(connector=connector) as client:
        async with client.get(supervisor.admin / "readyz") as r:
            assert r.status == 200
        statuses = await asyncio.gather(*(get_status(client, supervisor.proxy) for _ in range(40)))
    assert statuses == [200] * 40


async def get_status(client: aiohttp.ClientSession, url: URL) -> int:
    async with client.get(url / "x") as r:
        return r.status


async def test_a_killed_supervisor_takes_its_workers_along(
    gateway_process: StartProcess, tmp_path: Path, raw_upstream: RawUpstream
) -> None:
    supervisor = await start_two_workers(gateway_process, tmp_path, raw_upstream)
    supervisor.process.kill()  # SIGKILL: no drain, no chance to stop the workers
    # The workers see their link close and stop: their (inherited) stdout ends...
    await supervisor.exit_code()
    stopping = supervisor.events("stopping")
    assert [line["signal"] for line in stopping] == ["supervisor_gone"] * 2
    # ...and no orphan keeps serving the port.
    check_free(ListenAddress(supervisor.proxy.host or "", supervisor.proxy.port or 0))


async def answered_by_worker(supervisor: GatewayProcess, count: int) -> dict[int, int]:
    """Send ``count`` requests, each on a new connection; how many each worker answered."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as client:
        for _ in range(count):
            async with client.get(supervisor.proxy / "x") as r:
                assert r.status == 200
    await supervisor.wait_for("request", count=count)
    per_worker: dict[int, int] = {}
    for line in supervisor.events("request"):
        per_worker[line["worker"]] = per_worker.get(line["worker"], 0) + 1
    return per_worker


async def metric(supervisor: GatewayProcess, name: str) -> float:
    async with aiohttp.ClientSession() as client, client.get(supervisor.admin / "metrics") as r:
        text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def test_two_workers_share_the_port_and_their_metrics_add_up(
    gateway_process: StartProcess, tmp_path: Path, raw_upstream: RawUpstream
) -> None:
    supervisor = await start_two_workers(gateway_process, tmp_path, raw_upstream)
    per_worker = await answered_by_worker(supervisor, 60)
    assert sorted(per_worker) == [0, 1], per_worker  # the kernel spread the connections
    assert sum(per_worker.values()) == 60
    # Each worker folds its counts into the shared files before its lines are written:
    # the 60 request lines seen above are counted in every per-request metric.
    assert await metric(supervisor, "aleacc_gateway_requests_total{") == 60
    assert await metric(supervisor, "aleacc_gateway_request_duration_seconds_count") == 60
    assert (
        await metric(supervisor, 'aleacc_gateway_request_duration_seconds_bucket{le="+Inf"}') == 60
    )
    assert await metric(supervisor, "aleacc_gateway_upstream_responses_total{") == 60
    assert await metric(supervisor, "aleacc_gateway_upstream_duration_seconds_count") == 60
    assert await metric(supervisor, "aleacc_gateway_client_ip_total{") == 60
    assert await metric(supervisor, "aleacc_gateway_in_flight_requests") == 0
    async with aiohttp.ClientSession() as client, client.get(supervisor.admin / "readyz") as r:
        assert r.status == 200
    supervisor.signal(signal.SIGTERM)
    assert await supervisor.exit_code() == 0
    for line in supervisor.events("worker_started"):
        with pytest.raises(ProcessLookupError):  # every worker has exited and been reaped
            os.kill(line["pid"], 0)


async def test_a_killed_worker_is_replaced(
    gateway_process: StartProcess, tmp_path: Path, raw_upstream: RawUpstream
) -> None:
    supervisor = await start_two_workers(gateway_process, tmp_path, raw_upstream)
    victim = supervisor.events("worker_started")[0]
    os.kill(victim["pid"], signal.SIGKILL)
    exited = await supervisor.wait_for("worker_exited")
    assert (exited["worker"], exited["pid"], exited["code"]) == (
        victim["worker"],
        victim["pid"],
        -signal.SIGKILL,
    )
    async with aiohttp.ClientSession() as client:
        # Down until the replacement listens (the restart waits a second first).
        async with client.get(supervisor.admin / "readyz") as r:
            assert (r.status, (await r.json())["reasons"]) == (503, ["1 worker(s) restarting"])
        await wait_for_status(client, supervisor.admin / "readyz", 200)
    replacement = await supervisor.wait_for("worker_started", count=3)
    assert replacement["worker"] == victim["worker"]
    assert replacement["pid"] != victim["pid"]
    per_worker = await answered_by_worker(supervisor, 40)
    assert sum(per_worker.values()) == 40
    supervisor.signal(signal.SIGTERM)
    assert await supervisor.exit_code() == 0


async def test_the_supervisor_watches_the_secret_for_readiness(
    gateway_process: StartProcess, tmp_path: Path, raw_upstream: RawUpstream
) -> None:
    supervisor = await start_two_workers(gateway_process, tmp_path, raw_upstream)
    ready = supervisor.admin / "readyz"
    async with aiohttp.ClientSession() as client:
        await wait_for_status(client, ready, 200)
        (tmp_path / "secret").write_bytes(b"\n")  # emptied under the running supervisor
        body = await wait_for_status(client, ready, 503)
        assert "is empty" in str(body["reasons"])
        (tmp_path / "secret").write_bytes(DEMO_SECRET)
        await wait_for_status(client, ready, 200)
    supervisor.signal(signal.SIGTERM)
    assert await supervisor.exit_code() == 0


async def test_two_workers_serve_tls_and_the_supervisor_reports_its_files(
    gateway_process: StartProcess, tmp_path: Path, raw_upstream: RawUpstream
) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    supervisor = await start_two_workers(
        gateway_process,
        tmp_path,
        raw_upstream,
        server_lines=f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"\n',
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    connector = aiohttp.TCPConnector(ssl=context, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as client:
        for _ in range(10):
            async with client.get(f"https://127.0.0.1:{supervisor.proxy.port}/x") as r:
                assert r.status == 200
        # A key that does not fit: the workers keep serving the old pair, and the
        # supervisor's /readyz (which has its own view of the files) says so.
        key.write_bytes(ca.issue_cert("127.0.0.1").private_key_pem.bytes())
        body = await wait_for_status(client, supervisor.admin / "readyz", 503)
        assert "does not match the certificate" in str(body["reasons"])
        async with client.get(f"https://127.0.0.1:{supervisor.proxy.port}/x") as r:
            assert r.status == 200
    supervisor.signal(signal.SIGTERM)
    assert await supervisor.exit_code() == 0
