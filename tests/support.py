"""Helpers the tests import: real servers on loopback (the stand-in, the gateway, raw
upstreams that record bytes, a gateway process, a redis-server), settings, and checks.
The fixtures that start and stop them are in conftest.py."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import os
import random
import re
import shutil
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from yarl import URL

from gateway import signing
from gateway.client_ip import parse_network
from gateway.config import (
    AccessSettings,
    ClientIpSettings,
    LimitsSettings,
    ListenAddress,
    ServerSettings,
    Settings,
    SigningSettings,
    UpstreamSettings,
)
from gateway.mock.upstream import (
    DEMO_API_ID,
    DEMO_SECRET,
)
from gateway.pool import Pool
from gateway.server import Bound, GatewayServer, bind

from . import reference
from .reference import RefRequest, RefScheme
from .wire import Relay

ANY_PORT = ListenAddress("127.0.0.1", 0)
SECRET_ENV = "TEST_ALEACC_SECRET"
ENVIRON = {SECRET_ENV: DEMO_SECRET.decode()}
SESSION_ID = "f00dfacecafebeef0123456789abcdef"  # a player session: must never be logged
SIGNATURE = re.compile(r"[A-Za-z0-9+/]{43}=")

# Values this test put on the wire that must never show up in a log line: filled in by
# the upstream fixtures from what they received, checked by `logs` after every test.
SENSITIVE: set[str] = set()


def log_events(buffer: io.StringIO, event: str, start: int = 0) -> list[dict[str, Any]]:
    """The ``event`` lines in ``buffer`` (the ``logs`` fixture's output) from offset ``start``."""
    lines = buffer.getvalue()[start:].splitlines()
    return [entry for entry in map(json.loads, lines) if entry.get("event") == event]


def remember_sensitive(authorization: str | None, session_id: str | None) -> None:
    """Record a signature and a session id that were sent upstream."""
    if authorization:
        SENSITIVE.add(authorization)
        SENSITIVE.update(authorization.split(":")[1:2])
    if session_id:
        SENSITIVE.add(session_id)


def system_tool(name: str) -> str:
    """The path of a tool ``scripts/install-test-tools`` installs (promtool, openssl,
    tinyproxy). Missing: the test fails in CI and is skipped locally, so the README's test
    command works on a machine that has not run the script."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} missing: scripts/install-test-tools installs it")
        pytest.skip(f"{name} not installed; run scripts/install-test-tools")
    return path


def unused_port() -> int:
    """A loopback port that is free now, for a process under test to bind later.

    Taken from below the kernel's ephemeral range: a port from bind(0) lies inside it,
    where any outgoing connection on the machine may take it in the meantime.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for port in random.sample(range(10000, max(low, 10001)), 100):
        with contextlib.suppress(OSError), socket.create_server(("127.0.0.1", port)):
            return port
    raise AssertionError("no free port below the ephemeral range")


def settings_for(upstream_url: URL | str, /, **sections: Any) -> Settings:
    """Gateway settings pointing at ``upstream``; keyword arguments override sections' fields."""
    base = Settings(
        server=ServerSettings(listen=ANY_PORT, admin_listen=ANY_PORT),
        upstream=UpstreamSettings(url=URL(str(upstream_url), encoded=True)),
        signing=SigningSettings(api_id=DEMO_API_ID, secret_env=SECRET_ENV),
        # As in config/sidecar.toml: loopback and the cluster's ingress range are trusted.
        client_ip=ClientIpSettings(
            trusted_proxies=networks("127.0.0.0/8", "::1/128", "10.0.0.0/8")
        ),
        access=AccessSettings(),
        limits=LimitsSettings(),
    )
    replaced = {
        name: dataclasses.replace(getattr(base, name), **values)
        for name, values in sections.items()
    }
    return dataclasses.replace(base, **replaced)


def networks(*cidrs: str) -> tuple[Any, ...]:
    return tuple(map(parse_network, cidrs))


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``aleacc-gateway ARGS`` as a real process: its exit code, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        # A guard, not a wait: every command here ends by itself.
        async with asyncio.timeout(120):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"aleacc-gateway {' '.join(args)} did not end") from None
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def serve_app(app: web.Application) -> tuple[web.AppRunner, URL]:
    # handler_cancellation: a test upstream's handler ends when the gateway hangs up.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    sock = bind(ANY_PORT)
    await web.SockSite(runner, sock).start()
    return runner, URL(f"http://127.0.0.1:{sock.getsockname()[1]}")


async def serve_handler(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> tuple[web.AppRunner, URL]:
    """A test upstream that answers every method and path with ``handler``."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return await serve_app(app)


@dataclass
class Gateway:
    """A running gateway and how to reach it."""

    server: GatewayServer
    bound: Bound
    registry: CollectorRegistry

    @property
    def url(self) -> URL:
        return URL(f"http://127.0.0.1:{self.bound.proxy[1]}")

    @property
    def admin_url(self) -> URL:
        return URL(f"http://127.0.0.1:{self.bound.admin[1]}")

    def sample(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    @property
    def pool(self) -> Pool:
        """The connection pool to ``upstream.url``."""
        return self.server.tenants.upstreams[str(self.server.settings.upstream.url)].pool


StartGateway = Callable[..., Awaitable[Gateway]]


@dataclass
class Mock:
    app: web.Application
    url: URL
    relay: Relay


@dataclass
class Recorded:
    """One request as it arrived on the wire."""

    head: bytes
    body: bytes

    @property
    def request_line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    @property
    def target(self) -> str:
        return self.request_line.split(b" ")[1].decode("ascii")

    @property
    def headers(self) -> list[tuple[str, str]]:
        lines = self.head.split(b"\r\n")[1:]
        return [
            (name.decode(), value.strip().decode("utf-8", "surrogateescape"))
            for name, _, value in (line.partition(b":") for line in lines if line)
        ]

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


DEFAULT_SCHEME = RefScheme()


def verify_recorded(
    recorded: Recorded, scheme: RefScheme = DEFAULT_SCHEME, secret: bytes = DEMO_SECRET
) -> signing.Authorization:
    """The Authorization that reached the upstream is what the reference signer (written
    from docs/signing.md, not gateway.signing) makes of the bytes that reached it."""
    headers = CIMultiDict(recorded.headers)
    auth = signing.parse_authorization(headers["Authorization"])
    assert auth is not None
    request = RefRequest(
        method=recorded.request_line.split(b" ")[0].decode(),
        url=f"http://{headers['Host']}{recorded.target}",
        headers={k: ", ".join(headers.getall(k)) for k in headers},
        body=recorded.body,
    )
    assert headers["Authorization"] == reference.authorization(
        scheme, request, auth.api_id, secret, auth.request_id, auth.timestamp
    )
    return auth


@dataclass
class RawUpstream:
    """A TCP upstream that records each request's bytes and answers with ``response``."""

    response: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    requests: list[Recorded] = field(default_factory=list)
    connections: int = 0
    answer: bool = True
    received: asyncio.Event = field(default_factory=asyncio.Event)
    url: URL = field(default_factory=URL)
    open_writers: set[asyncio.StreamWriter] = field(default_factory=set)
    streams: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            self.requests.append(Recorded(head[:-4], body))
            self.received.set()
            if self.answer:
                writer.write(self.response)
                await writer.drain()
            # Whatever else arrives on this connection (until the gateway closes it)
            # must not be a second, smuggled request: kept for the framing check.
            self.streams.append(head + body + await reader.read())
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open_writers.discard(writer)
            writer.close()


@contextlib.asynccontextmanager
async def tcp_server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    open_writers: set[asyncio.StreamWriter],
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[URL]:
    """A loopback TCP server; on exit the connections in ``open_writers`` are closed too."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    scheme = "https" if tls else "http"
    try:
        yield URL(f"{scheme}://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    finally:
        server.close()
        for writer in list(open_writers):  # a held connection ends its handler
            writer.close()
        await server.wait_closed()


class GatewayProcess:
    """``aleacc-gateway serve`` as a real process, its JSON log lines collected as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []
        self._new_line = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())
        self.proxy = URL()
        self.admin = URL()

    @classmethod
    async def start(cls, config: Path | None, env: dict[str, str] | None = None) -> GatewayProcess:
        """``env``: variables added to this process's environment (None: no config file)."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "serve",
            *(["--config", str(config)] if config is not None else []),
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        gateway = cls(process)
        started = await gateway.wait_for("started")
        gateway.proxy = URL(f"http://{started['proxy']}")
        gateway.admin = URL(f"http://{started['admin']}")
        return gateway

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            async with self._new_line:
                self.lines.append(json.loads(raw))
                self._new_line.notify_all()
        async with self._new_line:
            self._new_line.notify_all()

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == name]

    async def wait_for(self, name: str, count: int = 1) -> dict[str, Any]:
        """The ``count``-th log line with event ``name``, waiting for it if need be."""
        async with self._new_line:
            await self._new_line.wait_for(
                lambda: len(self.events(name)) >= count or self._reader.done()
            )
        found = self.events(name)
        assert len(found) >= count, f"the gateway exited before logging {name!r}"
        return found[count - 1]

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    async def exit_code(self) -> int:
        code = await self.process.wait()
        await self._reader
        return code

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        await self._reader


StartProcess = Callable[..., Awaitable[GatewayProcess]]


def config_file(
    path: Path,
    upstream: URL,
    secret_file: Path,
    server: dict[str, float] | None = None,
    signing: dict[str, float] | None = None,
    limits: Mapping[str, float | str] | None = None,
) -> Path:
    """A gateway config on free loopback ports pointing at ``upstream``."""

    def lines(values: Mapping[str, float | str] | None) -> str:
        return "".join(f"{key} = {json.dumps(value)}\n" for key, value in (values or {}).items())

    path.write_text(
        '[server]\nlisten = "127.0.0.1:0"\nadmin_listen = "127.0.0.1:0"\n'
        + lines(server)
        + f'[upstream]\nurl = "{upstream}"\n'
        + f'[signing]\napi_id = "{DEMO_API_ID}"\nsecret_file = "{secret_file}"\n'
        + lines(signing)
        + "[limits]\n"
        + lines(limits)
    )
    return path


class RedisServer:
    """Debian's redis-server on a free loopback port and a Unix socket: the real store."""

    def __init__(self, directory: Path, password: str | None = None) -> None:
        self.directory = directory
        self.password = password
        self.port = unused_port()
        self.socket = directory / "redis.sock"
        self.process: asyncio.subprocess.Process | None = None
        self._log: asyncio.Task[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket}"

    async def start(self) -> None:
        """Start it (again, on the same port and socket): return once it accepts."""
        options = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "unixsocket": str(self.socket),
            "unixsocketperm": "700",
            "save": "",
            "appendonly": "no",
            "dir": str(self.directory),
            "logfile": "",  # to stdout, which says when it is ready
            **({"requirepass": self.password} if self.password else {}),
        }
        arguments = [part for name, value in options.items() for part in (f"--{name}", value)]
        self.process = await asyncio.create_subprocess_exec(
            system_tool("redis-server"), *arguments, stdout=asyncio.subprocess.PIPE
        )
        stdout = self.process.stdout
        assert stdout is not None
        async with asyncio.timeout(30):  # a guard, not a wait
            while b"Ready to accept connections" not in (line := await stdout.readline()):
                assert line, "redis-server exited before it was ready"
        self._log = asyncio.create_task(stdout.read())  # read on: its output never blocks it

    async def kill(self) -> None:
        """SIGKILL: the store gone at once, as a crashed one is."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self._log is not None:
            await self._log

    def client(self) -> Redis:
        """A client of its own, to look into the store (or stall it)."""
        return Redis(
            host="127.0.0.1", port=self.port, password=self.password, decode_responses=True
        )

    async def time(self) -> float:
        """The store's clock, the one its buckets run on, in seconds."""
        async with self.client() as client:
            seconds, micros = await client.time()
        return int(seconds) + int(micros) / 1_000_000


StartRedis = Callable[..., Awaitable[RedisServer]]


@dataclass
class Pki:
    """A CA, the listener's files, and a client trust store for the listener."""

    ca: trustme.CA
    cert: Path
    key: Path
    client_ca: Path
    root: Path

    def issue_server(self, ca: trustme.CA | None = None) -> trustme.LeafCert:
        """A new server certificate for 127.0.0.1, written over the listener's files."""
        leaf = (ca or self.ca).issue_cert("127.0.0.1", "localhost")
        self.write(leaf)
        return leaf

    def write(self, leaf: trustme.LeafCert) -> None:
        # As cert-manager's Secret mount does it: both files swapped at once.
        staged = self.root / "staged"
        staged.mkdir(exist_ok=True)
        (staged / "tls.crt").write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
        (staged / "tls.key").write_bytes(leaf.private_key_pem.bytes())
        (staged / "tls.crt").replace(self.cert)
        (staged / "tls.key").replace(self.key)

    def client_context(self, leaf: trustme.LeafCert | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if leaf is not None:
            leaf.configure_cert(context)
        return context


# ---------------------------------------------------------------- shared by several test modules

# A request that asks the gateway to close the connection after its answer.
GET_CLOSE = b"GET /x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
# Upstream deadlines short enough for fault tests through the relay.
FAST = {"connect_timeout_s": 0.5, "timeout_s": 0.3, "retry_backoff_s": 0.0}


def relay_settings(relay: Relay, **upstream: float) -> Settings:
    """Gateway settings whose upstream is ``relay``, with FAST deadlines unless overridden."""
    return settings_for(f"http://127.0.0.1:{relay.port}", upstream={**FAST, **upstream})


async def readiness(client: aiohttp.ClientSession, gateway: GatewayProcess) -> int:
    """The status of a gateway process's /readyz."""
    async with client.get(gateway.admin / "readyz") as r:
        return r.status
