"""Why a connection to the upstream failed, in the log: each reason the gateway can meet,
produced for real on loopback (a closed port, plain HTTP behind an https URL, an
untrusted certificate, one for another name, an unresolvable name, a port that never
answers the handshake), and read from the gateway's own log output."""

from __future__ import annotations

import contextlib
import io
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from yarl import URL

from gateway.egress import ProxyRefused, connect_reason

from .support import StartGateway, log_events, serve_handler, settings_for, tcp_server

Upstream = Callable[[Path, pytest.MonkeyPatch], contextlib.AbstractAsyncContextManager[URL]]


@contextlib.asynccontextmanager
async def closed_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[URL]:
    # Bound but not listening: the kernel refuses, and no other test can take the port.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield URL(f"http://127.0.0.1:{sock.getsockname()[1]}")


@contextlib.asynccontextmanager
async def plain_http(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[URL]:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(text="plain")

    runner, url = await serve_handler(answer)
    try:
        yield url.with_scheme("https")
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def tls_for(
    name: str, trusted: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[URL]:
    """A TLS server on 127.0.0.1 with a certificate for ``name``; its CA in the gateway's
    trust store (SSL_CERT_FILE, as for the system's) when ``trusted``."""
    ca = trustme.CA()
    if trusted:
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)

    async def never_reached(*_: Any) -> None:
        raise AssertionError("the handshake must fail")

    async with tcp_server(never_reached, set(), tls=context) as url:
        yield url


def untrusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    return tls_for("127.0.0.1", False, tmp_path, monkeypatch)


def another_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    return tls_for("aleacc.example", True, tmp_path, monkeypatch)


@contextlib.asynccontextmanager
async def unresolvable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[URL]:
    yield URL("https://aleacc-upstream.invalid")  # RFC 6761: never resolves


@contextlib.asynccontextmanager
async def never_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[URL]:
    # Listening, never accepting: the kernel completes TCP, nobody answers the TLS hello.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield URL(f"https://127.0.0.1:{sock.getsockname()[1]}")


@pytest.mark.parametrize(
    ("upstream", "status", "kind", "reason"),
    [
        (closed_port, 502, "connect", "refused: "),
        (plain_http, 502, "connect", "TLS: wrong version: the port does not speak TLS"),
        (untrusted, 502, "connect", "TLS: certificate not trusted (unable to get local issuer"),
        (another_name, 502, "connect", "TLS: certificate name mismatch"),
        (unresolvable, 502, "connect", "name not resolved"),
        (never_answers, 504, "connect_timeout", "timed out"),
    ],
)
async def test_a_failed_connect_says_why(
    upstream: Upstream,
    status: int,
    kind: str,
    reason: str,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
    logs: io.StringIO,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with upstream(tmp_path, monkeypatch) as url:
        # Short only for the port that never answers: the others fail on their own.
        timeout_s = 0.2 if kind == "connect_timeout" else 10.0
        upstream_settings = {"retries": 0, "connect_timeout_s": timeout_s}
        gw = await start_gateway(settings_for(url, upstream=upstream_settings))
        async with client.get(gw.url / "x") as r:
            assert r.status == status
            request_id = (await r.json())["request_id"]
    (event,) = log_events(logs, "upstream_connect_failed")
    assert event["reason"].startswith(reason), event["reason"]
    assert (event["kind"], event["attempt"], event["tenant"]) == (kind, 1, "default")
    assert event["upstream"] == f"{url.scheme}://{url.raw_authority}"
    assert event["request_id"] == request_id
    # The metric's labels stay the few kinds: the reason is the log's.
    assert gw.sample("aleacc_gateway_upstream_errors_total", kind=kind) == 1


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (ConnectionResetError(104, "reset"), "reset by the peer"),
        (OSError(113, "No route to host"), "unreachable: no route to the host"),
        (ProxyRefused(407), "the forward proxy answered CONNECT with 407"),
        (ConnectionError("not an HTTP answer to CONNECT"), "failed: not an HTTP answer to CONNECT"),
        (OSError(13, "Permission denied"), "failed (EACCES)"),
    ],
)
def test_the_rarer_reasons_are_named_too(error: OSError, reason: str) -> None:
    assert connect_reason(error).startswith(reason)
