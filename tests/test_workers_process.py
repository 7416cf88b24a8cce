"""server.workers = 2 as real processes: shared port, summed metrics, restarts, drain."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from gateway.mock.upstream import DEMO_SECRET

from .support import GatewayProcess, RawUpstream, config_file
from .test_observability_functional import wait_for_status

StartProcess = Callable[[Path], Awaitable[GatewayProcess]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_two_workers(
    gateway_process: StartProcess, tmp_path: Path, upstream: RawUpstream
) -> GatewayProcess:
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
    config.write_text(config.read_text().replace("127.0.0.1:0", f"127.0.0.1:{free_port()}", 1))
    supervisor = await gateway_process(config)
    for number in (1, 2):
        await supervisor.wait_for("worker_started", count=number)
    return supervisor


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
    assert await metric(supervisor, "aleacc_gateway_requests_total{") == 60
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
        victim["worker"], victim["pid"], -signal.SIGKILL,
    )  # fmt: skip
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
