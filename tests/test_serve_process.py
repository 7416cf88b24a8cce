"""``serve`` as a real process: draining on SIGTERM, a second signal (or Ctrl-C on a
terminal) skipping the drain delay, one line for a busy port or a second instance, and no
traceback when its log pipe closes."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import socket
import sys
import termios
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
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
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


# 19. A second signal during a long drain delay skips it, and the draining line says so.
async def test_a_second_sigterm_skips_the_drain_delay(
    gateway_process: StartProcess, tmp_path: Path, raw_upstream: RawUpstream
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(DEMO_SECRET)
    config = config_file(
        tmp_path / "gw.toml", raw_upstream.url, secret, server={"drain_delay_s": 3600}
    )
    gateway = await gateway_process(config)
    gateway.signal(signal.SIGTERM)
    draining = await gateway.wait_for("draining")
    assert draining["delay_s"] == 3600
    assert draining["hint"] == "a second SIGTERM or Ctrl-C skips the drain delay"
    gateway.signal(signal.SIGTERM)
    async with asyncio.timeout(60):  # a guard far below the hour's delay, not a measure
        assert await gateway.exit_code() == 0
    assert gateway.events("stopped")


class PtyGateway:
    """``serve`` on a terminal of its own (a pty), as a person at a shell runs it: Ctrl-C
    is the terminal's, delivered to the foreground process group."""

    def __init__(self, process: asyncio.subprocess.Process, master: int) -> None:
        self.process = process
        self._master = master
        self.lines: list[dict[str, object]] = []
        self._text = b""
        self.output = b""  # everything the terminal showed, for a failure's message
        self._changed = asyncio.Condition()
        self._eof = False
        asyncio.get_running_loop().add_reader(master, self._read)

    @classmethod
    async def start(cls, config: Path) -> PtyGateway:
        master, terminal = os.openpty()

        def controlling_terminal() -> None:  # in the child, before exec
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        # preexec_fn: the one way to give the child a controlling terminal; this test
        # process starts no threads that it could deadlock.
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "gateway", "serve", "--config", str(config)),
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            preexec_fn=controlling_terminal,
        )
        os.close(terminal)
        return cls(process, master)

    def _read(self) -> None:
        try:
            data = os.read(self._master, 65536)
        except OSError:  # EIO: every process holding the terminal has gone
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self._master)
            self._eof = True
        self._text += data
        self.output += data
        *complete, self._text = self._text.split(b"\n")
        for raw in complete:
            # The terminal echoes ^C before the next line, and ends lines with \r\n.
            start = raw.find(b"{")
            if start >= 0:
                self.lines.append(json.loads(raw[start:].rstrip(b"\r")))
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def events(self, name: str) -> list[dict[str, object]]:
        return [line for line in self.lines if line.get("event") == name]

    async def wait_for(self, name: str, count: int = 1) -> list[dict[str, object]]:
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.events(name)) >= count or self._eof)
        assert len(self.events(name)) >= count, f"exited before {count} {name!r}: {self.output!r}"
        return self.events(name)

    def ctrl_c(self) -> None:
        os.write(self._master, b"\x03")

    async def close(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if not self._eof:
            asyncio.get_running_loop().remove_reader(self._master)
        os.close(self._master)


async def test_ctrl_c_drains_workers_and_a_second_ctrl_c_hurries_them(
    tmp_path: Path,
) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    runner, upstream = await serve_handler(ok)
    secret = tmp_path / "secret"
    secret.write_bytes(DEMO_SECRET)
    server: dict[str, float] = {"drain_delay_s": 3600, "workers": 2}
    config = config_file(tmp_path / "gw.toml", upstream, secret, server=server)
    config.write_text(config.read_text().replace("127.0.0.1:0", f"127.0.0.1:{unused_port()}", 1))
    gateway = await PtyGateway.start(config)
    try:
        (started,) = await gateway.wait_for("started")
        gateway.ctrl_c()
        await gateway.wait_for("draining", count=3)  # the supervisor and both workers
        drains = gateway.events("draining")
        assert all(d["hint"] == "a second SIGTERM or Ctrl-C skips the drain delay" for d in drains)
        # One Ctrl-C is one signal to each worker: they drain, serving on through the delay.
        async with (
            aiohttp.ClientSession() as client,
            client.get(f"http://{started['proxy']}/echo") as r,
        ):
            assert r.status == 200
            assert r.headers["Connection"] == "close"
        assert gateway.events("stopped") == []
        gateway.ctrl_c()
        async with asyncio.timeout(60):  # a guard far below the hour's delay, not a measure
            assert await gateway.process.wait() == 0
            await gateway.wait_for("stopped", count=3)
    finally:
        await gateway.close()
        await runner.cleanup()
