#!/usr/bin/env python3
"""Soak: the gateway as a real process under steady mixed load and faults, for minutes.

    python bench/soak.py                      # 10 minutes; writes bench/SOAK.md
    python bench/soak.py --minutes 1          # a short try
    python bench/soak.py --kill-worker        # 2 workers, one killed with SIGKILL

The stand-in (in this process, accepting two secrets as Aleacc does during a rotation)
injects delays, 503s, cut bodies and resets; the secret is swapped every 30 s the way
the kubelet does it, and removed for a few seconds twice; every 10 s, 200 connections
open and send nothing. Recorded: requests and answers by status (every request must
get an answer: nothing lost), errors by kind from the gateway's /metrics, /readyz
transitions, and the gateway's RSS and open file descriptors from start to end.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import json
import os
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.mock.upstream import DEMO_API_ID, MockSettings, create_mock_app

BENCH = Path(__file__).resolve().parent
SECRETS = (b"ab" * 32, b"cd" * 32)  # soak-only keys, 64 hex characters each
# (share of requests, X-Mock-Fault value, the status the caller must get)
FAULTS = (
    (0.05, "delay=0.2", 200),
    (0.03, "status=503", 503),
    (0.02, "cut", 502),
    (0.02, "reset", 502),
)


@dataclass
class Record:
    sent: int = 0
    answers: collections.Counter[int] = field(default_factory=collections.Counter)
    wrong: collections.Counter[str] = field(default_factory=collections.Counter)
    lost: collections.Counter[str] = field(default_factory=collections.Counter)
    ready: list[tuple[float, int]] = field(default_factory=list)
    samples: list[tuple[float, float, int]] = field(default_factory=list)  # t, RSS MB, fds
    lost_at: list[float] = field(default_factory=list)  # when each request was sent
    idle_closed: int = 0
    idle_opened: int = 0


def swap_secret(root: Path, value: bytes, generation: int) -> None:
    """Update a secret volume as the kubelet does: a new directory, an atomic link swap."""
    data = root / f"..{generation}"
    data.mkdir()
    (data / "api-secret").write_bytes(value)
    (root / "..data_tmp").symlink_to(data.name)
    os.replace(root / "..data_tmp", root / "..data")
    if not (root / "api-secret").is_symlink():
        (root / "api-secret").symlink_to("..data/api-secret")


def process_tree(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(c) for c in children.read_text().split()] if children.exists() else []
    return [pid, *[p for kid in kids for p in process_tree(kid)]]


def rss_and_fds(pid: int) -> tuple[float, int]:
    rss = fds = 0.0
    for p in process_tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
            rss += int(status.split("VmRSS:")[1].split()[0]) / 1024
            fds += len(os.listdir(f"/proc/{p}/fd"))
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return rss, int(fds)


async def start_gateway(
    workdir: Path, upstream: str, workers: int
) -> tuple[asyncio.subprocess.Process, dict[str, str]]:
    config = workdir / "gw.toml"
    secret = workdir / "secret" / "api-secret"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{free_port()}"\nadmin_listen = "127.0.0.1:0"\n'
        f"workers = {workers}\ndrain_delay_s = 0\n"
        f'[upstream]\nurl = "{upstream}/api"\ntimeout_s = 2\n'
        f'[signing]\napi_id = "{DEMO_API_ID}"\nsecret_file = "{secret}"\n'
    )
    # Its log goes to a file: a pipe nobody reads would fill and stall the gateway.
    log = (workdir / "gateway.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--config", str(config),
        stdout=log, cwd=BENCH.parent,
    )  # fmt: skip
    while True:
        for text in (workdir / "gateway.log").read_text().splitlines():
            line = json.loads(text)
            if line.get("event") == "started":
                return process, line
        await asyncio.sleep(0.05)


def free_port() -> int:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


async def one_request(client: aiohttp.ClientSession, proxy: str, record: Record) -> None:
    roll, fault, expect = random.random(), None, 200  # noqa: S311 - a load mix
    for share, value, status in FAULTS:
        if roll < share:
            fault, expect = value, status
            break
        roll -= share
    post = random.random() < 0.5  # noqa: S311 - a load mix
    headers = {"X-Forwarded-For": "203.0.113.7", **({"X-Mock-Fault": fault} if fault else {})}
    record.sent += 1
    sent_at = time.monotonic()
    try:
        async with client.request(
            "POST" if post else "GET", f"{proxy}/echo?n={record.sent}",
            data=b'{"amount":"10.00"}' if post else None, headers=headers,
        ) as r:  # fmt: skip
            await r.read()
            record.answers[r.status] += 1
            if r.status != expect:
                record.wrong[f"{fault or 'none'} -> {r.status}"] += 1
    except (aiohttp.ClientError, TimeoutError) as exc:
        record.lost[f"{fault or 'none'}: {type(exc).__name__}"] += 1
        record.lost_at.append(sent_at)


async def load(proxy: str, rate: float, until: float, record: Record) -> None:
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as client:
        tasks: set[asyncio.Task[None]] = set()
        step = 1 / rate
        next_at = time.monotonic()
        while next_at < until:
            task = asyncio.create_task(one_request(client, proxy, record))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += step
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.gather(*tasks)


async def idle_connections(port: int, until: float, record: Record) -> None:
    """Every 10 s, 200 connections that send nothing; count those the gateway closes."""

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        record.idle_opened += 1
        try:
            async with asyncio.timeout(30):
                if await reader.read() == b"":
                    record.idle_closed += 1
        except (TimeoutError, ConnectionError):
            pass
        writer.close()

    while time.monotonic() < until - 15:
        await asyncio.gather(*(one() for _ in range(200)))
        await asyncio.sleep(max(0.0, 10 - 5))


async def watch(admin: str, pid: int, until: float, record: Record) -> None:
    started = time.monotonic()
    last = None
    async with aiohttp.ClientSession() as client:
        while time.monotonic() < until:
            async with client.get(f"http://{admin}/readyz") as r:
                if r.status != last:
                    record.ready.append((time.monotonic() - started, r.status))
                    last = r.status
            now = time.monotonic() - started
            if not record.samples or now - record.samples[-1][0] >= 10:
                record.samples.append((now, *rss_and_fds(pid)))
            await asyncio.sleep(0.25)
        record.samples.append((time.monotonic() - started, *rss_and_fds(pid)))


async def rotate(root: Path, until: float) -> list[str]:
    """Swap the secret every 30 s; remove it for 4 s at a third and two thirds."""
    events = []
    started, generation = time.monotonic(), 1
    removals = [started + (until - started) / 3, started + 2 * (until - started) / 3]
    while time.monotonic() < until - 5:
        await asyncio.sleep(1)
        now = time.monotonic()
        if removals and now >= removals[0]:
            removals.pop(0)
            (root / "..data").rename(root / "..data.away")
            events.append(f"{now - started:.0f} s: secret removed")
            await asyncio.sleep(4)
            (root / "..data.away").rename(root / "..data")
            events.append(f"{time.monotonic() - started:.0f} s: secret back")
        elif now - started >= 30 * generation:
            generation += 1
            swap_secret(root, SECRETS[generation % 2], generation)
    return events


async def metrics(admin: str) -> dict[str, dict[str, float]]:
    async with aiohttp.ClientSession() as client, client.get(f"http://{admin}/metrics") as r:
        text = await r.text()
    found: dict[str, dict[str, float]] = collections.defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.value:
                label = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                found[sample.name][label] = found[sample.name].get(label, 0) + sample.value
    return found


async def run(args: argparse.Namespace) -> str:
    workdir = Path(tempfile.mkdtemp(prefix="aleacc-soak-"))
    (workdir / "secret").mkdir()
    swap_secret(workdir / "secret", SECRETS[1], 1)
    app = create_mock_app(MockSettings(secrets=SECRETS, faults=True, base_path="/api"))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", free_port())
    await site.start()
    upstream = f"http://127.0.0.1:{site._port}"
    workers = 2 if args.kill_worker else args.workers
    gateway, started = await start_gateway(workdir, upstream, workers)
    proxy, admin = f"http://{started['proxy']}", started["admin"]
    record = Record()
    record.samples.append((0.0, *rss_and_fds(gateway.pid)))  # before any load
    seconds = args.minutes * 60
    until = time.monotonic() + seconds
    t0 = time.monotonic()
    jobs = [load(proxy, args.rate, until, record), watch(admin, gateway.pid, until, record)]
    kill_note = ""
    if args.kill_worker:
        jobs.append(kill_one_worker(gateway, seconds / 3, record))
    else:
        jobs += [idle_connections(int(proxy.rsplit(":", 1)[1]), until, record),
                 rotate(workdir / "secret", until)]  # fmt: skip
    results = await asyncio.gather(*jobs)
    elapsed = time.monotonic() - t0
    final = await metrics(admin)
    gateway.send_signal(signal.SIGTERM)
    await gateway.wait()
    await runner.cleanup()
    if args.kill_worker:
        kill_note = results[2]
    return report(args, record, final, elapsed, results[3] if not args.kill_worker else [],
                  kill_note, workers)  # fmt: skip


async def kill_one_worker(gateway: asyncio.subprocess.Process, after: float, record: Record) -> str:
    await asyncio.sleep(after)
    workers = process_tree(gateway.pid)[1:]
    victim = workers[0]
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    # Restarted when the supervisor has two workers again.
    while len([p for p in process_tree(gateway.pid)[1:] if p != victim]) < 2:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    restart = time.monotonic() - killed_at
    await asyncio.sleep(15)  # every request sent before the kill has ended by now
    near = [t for t in record.lost_at if killed_at - 10 <= t <= killed_at + restart]
    return (
        f"worker pid {victim} killed with SIGKILL at {after:.0f} s; the supervisor had a "
        f"new worker running {restart:.2f} s later; requests that failed: "
        f"{len(record.lost_at)} in all, {len(near)} of them sent in the 10 s before the "
        f"kill or before the new worker ran (in flight on, or queued for, the killed one)"
    )


def report(
    args: argparse.Namespace,
    record: Record,
    final: dict[str, dict[str, float]],
    elapsed: float,
    rotation: list[str],
    kill_note: str,
    workers: int,
) -> str:
    answered = sum(record.answers.values())
    lines = [
        f"# Soak: {'kill -9 of one of two workers' if args.kill_worker else 'faults and rotation'}",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; "
        f"{os.cpu_count()} cores; workers: {workers}",
        f"- command: `python bench/soak.py {' '.join(sys.argv[1:])}`".replace("  ", " "),
        f"- {elapsed:.0f} s at {args.rate:g} req/s, half GET and half POST to the stand-in's "
        "/api/echo; faults: 5 % delay 0.2 s, 3 % 503, 2 % cut body, 2 % reset",
        "",
        "## Requests",
        "",
        f"- sent {record.sent}, answered {answered}, lost (no HTTP answer) "
        f"{sum(record.lost.values())}",
        "- answers by status: " + ", ".join(f"{s}: {n}" for s, n in sorted(record.answers.items())),
        "- answers other than the fault asked for: "
        + (", ".join(f"{k}: {n}" for k, n in record.wrong.items()) or "none"),
        "- lost: " + (", ".join(f"{k}: {n}" for k, n in record.lost.items()) or "none"),
        "",
        "## From the gateway's /metrics at the end",
        "",
    ]
    for name in (
        "aleacc_gateway_requests_total",
        "aleacc_gateway_upstream_errors_total",
        "aleacc_gateway_connections_closed_total",
        "aleacc_gateway_secret_reloads_total",
    ):
        values = final.get(name, {})
        lines.append(
            f"- `{name}`: " + (", ".join(f"{k} {v:.0f}" for k, v in sorted(values.items())) or "0")
        )
    lines += ["", "## Readiness, secret and idle connections", ""]
    lines.append("- /readyz transitions: " + ", ".join(f"{t:.1f} s → {s}" for t, s in record.ready))
    if rotation:
        lines.append("- secret: swapped every 30 s between two keys; " + "; ".join(rotation))
    if record.idle_opened:
        lines.append(f"- idle connections opened {record.idle_opened}, closed by the gateway "
                     f"{record.idle_closed}")  # fmt: skip
    if kill_note:
        lines.append(f"- {kill_note}")
    first, last = record.samples[0], record.samples[-1]
    peak = max(s[1] for s in record.samples)
    lines += [
        "",
        "## Resources (the gateway's process tree)",
        "",
        f"- RSS: {first[1]:.1f} MB at {first[0]:.0f} s, {last[1]:.1f} MB at {last[0]:.0f} s, "
        f"peak {peak:.1f} MB",
        "- RSS every minute, MB: "
        + ", ".join(f"{s[1]:.1f}" for s in record.samples if round(s[0]) % 60 < 10),
        f"- open file descriptors: {first[2]} at start, {last[2]} at the end, peak "
        f"{max(s[2] for s in record.samples)}",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=50, help="requests per second")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--kill-worker", action="store_true")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    text = asyncio.run(run(args))
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
