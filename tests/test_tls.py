"""TLS on the proxy listener: certificates re-read in place, client certificates, names."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import io
import json
import socket
import ssl
import subprocess
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import trustme
from yarl import URL

from gateway.config import TlsSettings
from gateway.mock.upstream import DEMO_SECRET

from .support import (
    Gateway,
    GatewayProcess,
    Mock,
    Pki,
    RawUpstream,
    StartGateway,
    config_file,
    log_events,
    run_cli,
    settings_for,
    system_tool,
)
from .test_observability_functional import wait_for_status
from .test_pool import until

POLL_S = 0.05


async def start_tls_gateway(
    start_gateway: StartGateway,
    mock: Mock,
    pki: Pki,
    *,
    client_ca: bool = False,
    names: frozenset[str] | None = None,
) -> Gateway:
    tls = TlsSettings(pki.cert, pki.key, pki.client_ca if client_ca else None)
    settings = settings_for(mock.url, signing={"secret_poll_s": POLL_S})
    server = dataclasses.replace(settings.server, tls=tls)
    access = dataclasses.replace(settings.access, allowed_client_names=names)
    return await start_gateway(dataclasses.replace(settings, server=server, access=access))


async def get(port: int, context: ssl.SSLContext) -> tuple[int, bytes, str]:
    """Status, the server certificate (DER) and the error code, on a new connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    certificate = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.write(b"GET /echo HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    error = json.loads(body).get("error", "") if b"application/json" in head else ""
    return int(head.split()[1]), certificate, str(error)


def status_at_once(port: int, context: ssl.SSLContext) -> int:
    """A blocking client, whose ClientHello follows the TCP handshake at once."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"GET /echo HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        return int(tls.recv(65536).split()[1])


def open_connections(gateway: Gateway) -> int:
    assert gateway.server.edge is not None
    return gateway.server.edge.open_connections


def der(leaf: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


async def logged(logs: io.StringIO, event: str, count: int = 1) -> None:
    """Until ``event`` has been logged ``count`` times (the file watcher's timer)."""
    for _ in range(400):
        if len(log_events(logs, event)) >= count:
            return
        await asyncio.sleep(POLL_S / 2)
    raise AssertionError(f"{event} was not logged {count} times")


async def test_the_listener_speaks_tls_only(
    mock: Mock, start_gateway: StartGateway, pki: Pki, logs: io.StringIO
) -> None:
    gateway = await start_tls_gateway(start_gateway, mock, pki)
    status, _, _ = await get(gateway.bound.proxy[1], pki.client_context())
    assert status == 200
    assert log_events(logs, "request")[-1]["client_name"] is None
    # Plain HTTP on the TLS port gets no answer, and neither does TLS 1.1.
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.bound.proxy[1])
    writer.write(b"GET /echo HTTP/1.1\r\nHost: gw\r\n\r\n")
    with contextlib.suppress(ConnectionResetError):
        assert await reader.read() == b""
    writer.close()
    old = pki.client_context()
    with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionResetError)):  # an alert, or a reset
        await get(gateway.bound.proxy[1], old)
    assert gateway.sample("aleacc_gateway_tls_refusals_total", reason="handshake") == 2
    await until(lambda: open_connections(gateway) == 0)
    expiry = gateway.sample("aleacc_gateway_tls_certificate_expiry_seconds")
    assert expiry > datetime.datetime.now(datetime.UTC).timestamp() + 300 * 86400


async def test_a_rotated_certificate_serves_new_connections_without_a_failure(
    mock: Mock, start_gateway: StartGateway, pki: Pki, logs: io.StringIO
) -> None:
    gateway = await start_tls_gateway(start_gateway, mock, pki)
    context = pki.client_context()
    url = f"https://127.0.0.1:{gateway.bound.proxy[1]}/echo"
    kept = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, limit=1))
    async with kept:
        async with kept.get(url) as r:
            assert r.status == 200
        statuses: list[int] = []
        rotating = True

        async def load() -> None:
            while rotating:
                statuses.append((await get(gateway.bound.proxy[1], context))[0])

        callers = [asyncio.create_task(load()) for _ in range(4)]
        new = pki.issue_server()
        await logged(logs, "tls_loaded")
        rotating = False
        await asyncio.gather(*callers)
        assert len(statuses) >= 4
        assert set(statuses) == {200}
        assert (await get(gateway.bound.proxy[1], context))[1] == der(new)
        # The connection opened before the rotation goes on working.
        async with kept.get(url) as r:
            assert r.status == 200
    assert gateway.sample("aleacc_gateway_tls_reloads_total", result="loaded") == 1


async def test_a_broken_new_pair_keeps_the_last_good_one(
    mock: Mock,
    start_gateway: StartGateway,
    pki: Pki,
    logs: io.StringIO,
    client: aiohttp.ClientSession,
) -> None:
    gateway = await start_tls_gateway(start_gateway, mock, pki)
    context = pki.client_context()
    _, served, _ = await get(gateway.bound.proxy[1], context)
    other = pki.ca.issue_cert("127.0.0.1")
    pki.key.write_bytes(other.private_key_pem.bytes())  # a key of another certificate
    await logged(logs, "tls_reload_failed")
    body = await wait_for_status(client, gateway.admin_url / "readyz", 503)
    assert "does not match the certificate" in str(body["reasons"])
    assert str(pki.key) in str(body["reasons"])
    status, still, _ = await get(gateway.bound.proxy[1], context)
    assert (status, still) == (200, served)
    assert gateway.sample("aleacc_gateway_tls_reloads_total", result="error") >= 1
    new = pki.issue_server()
    await wait_for_status(client, gateway.admin_url / "readyz", 200)
    assert (await get(gateway.bound.proxy[1], context))[1] == der(new)


def openssl_client_cert(ca: trustme.CA, root: Path, subject: str, san: str | None) -> Path:
    """A client certificate from ``ca`` made with openssl, which (unlike trustme) writes
    URI SANs and certificates without any SAN; key and certificate in one PEM file."""
    ca_cert, ca_key = root / "ca.pem", root / "ca.key"
    ca.cert_pem.write_to_path(str(ca_cert))
    ca.private_key_pem.write_to_path(str(ca_key))
    key, csr, cert = (root / f"client.{ext}" for ext in ("key", "csr", "pem"))
    extensions = root / "client.ext"
    extensions.write_text(f"subjectAltName = {san}\n" if san else "basicConstraints = CA:FALSE\n")
    for args in (
        [
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-subj",
            subject,
            "-out",
            str(csr),
        ],
        [
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(ca_cert),
            "-CAkey",
            str(ca_key),
            "-days",
            "2",
            "-extfile",
            str(extensions),
            "-out",
            str(cert),
        ],
    ):
        subprocess.run([system_tool("openssl"), *args], check=True, capture_output=True)
    cert.write_bytes(cert.read_bytes() + key.read_bytes())
    return cert


async def test_client_certificates_and_names(
    mock: Mock, start_gateway: StartGateway, pki: Pki, logs: io.StringIO, tmp_path: Path
) -> None:
    names = frozenset({"spiffe://casino/frontend", "lobby"})
    gateway = await start_tls_gateway(start_gateway, mock, pki, client_ca=True, names=names)
    port = gateway.bound.proxy[1]
    spiffe = pki.client_context()
    spiffe.load_cert_chain(
        openssl_client_cert(pki.ca, tmp_path, "/CN=ignored", "URI:spiffe://casino/frontend")
    )
    assert (await get(port, spiffe))[0] == 200
    assert log_events(logs, "request")[-1]["client_name"] == "spiffe://casino/frontend"
    common_name = pki.client_context()
    common_name.load_cert_chain(openssl_client_cert(pki.ca, tmp_path, "/CN=lobby", None))
    assert (await get(port, common_name))[0] == 200
    assert log_events(logs, "request")[-1]["client_name"] == "lobby"
    # A name the CA issued but the allowlist lacks: 403 over TLS, where it can be read.
    other_name = pki.client_context(pki.ca.issue_cert("cashier.casino.svc"))
    assert (await get(port, other_name))[::2] == (403, "client_not_allowed")
    assert gateway.sample("aleacc_gateway_tls_refusals_total", reason="name") == 1
    # No certificate, or one from another CA: the handshake fails.
    stranger = trustme.CA().issue_cert("spiffe.casino.svc")
    for context in (pki.client_context(), pki.client_context(stranger)):
        # TLS 1.3: the client's side of the handshake completes; the alert comes next.
        with pytest.raises((ssl.SSLError, ConnectionResetError, IndexError)):  # or no answer
            await get(port, context)
    assert gateway.sample("aleacc_gateway_tls_refusals_total", reason="handshake") == 2
    assert len(log_events(logs, "tls_handshake_failed")) == 2
    await until(lambda: open_connections(gateway) == 0)  # refused ones are let go of too


async def test_a_silent_client_is_cut_at_the_idle_deadline(
    mock: Mock, start_gateway: StartGateway, pki: Pki
) -> None:
    settings = settings_for(mock.url, limits={"idle_timeout_s": 0.2})
    server = dataclasses.replace(settings.server, tls=TlsSettings(pki.cert, pki.key))
    gateway = await start_gateway(dataclasses.replace(settings, server=server))
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.bound.proxy[1])
    async with asyncio.timeout(5):  # the handshake deadline is the idle deadline
        assert await reader.read() == b""  # closed without a handshake
    writer.close()
    assert open_connections(gateway) == 0  # counted only once the handshake is done


async def test_serve_speaks_tls_on_its_own_event_loop(
    gateway_process: Callable[[Path], Awaitable[GatewayProcess]],
    pki: Pki,
    tmp_path: Path,
    raw_upstream: RawUpstream,
) -> None:
    # serve runs on uvloop, which starts reading a connection before the TLS layer could
    # take it over by hand: a ClientHello sent at once was lost there, TLS 1.3 hung.
    secret = tmp_path / "secret"
    secret.write_bytes(DEMO_SECRET)
    config = config_file(tmp_path / "gw.toml", raw_upstream.url, secret)
    config.write_text(
        config.read_text().replace(
            "[upstream]", f'tls_cert_file = "{pki.cert}"\ntls_key_file = "{pki.key}"\n[upstream]'
        )
    )
    gateway = await gateway_process(config)
    port = gateway.proxy.port or 0
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        for _ in range(5):  # each on a new connection, its ClientHello sent at once
            context = pki.client_context()
            context.minimum_version = context.maximum_version = version
            assert await asyncio.to_thread(status_at_once, port, context) == 200
    # Not TLS at all: no answer, and counted.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /echo HTTP/1.1\r\nHost: gw\r\n\r\n")
    with contextlib.suppress(ConnectionResetError):
        assert await reader.read() == b""
    writer.close()
    failed = await gateway.wait_for("tls_handshake_failed")
    assert failed["reason"] == "HTTP_REQUEST"


async def test_check_config_and_serve_read_the_tls_files(pki: Pki, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(DEMO_SECRET)

    def config(cert: Path, key: Path) -> Path:
        path = config_file(tmp_path / "gw.toml", URL("http://127.0.0.1:9/api"), secret)
        text = path.read_text().replace(
            "[upstream]", f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"\n[upstream]'
        )
        path.write_text(text)
        return path

    assert (await run_cli("check-config", "--config", str(config(pki.cert, pki.key))))[0] == 0
    code, out, _ = await run_cli(
        "check-config", "--config", str(config(tmp_path / "no.crt", pki.key))
    )
    assert code == 0
    assert "warning: server.tls_cert_file" in out
    assert "not checked" in out
    soon = pki.ca.issue_cert(
        "127.0.0.1", not_after=datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3)
    )
    pki.write(soon)
    code, out, _ = await run_cli("check-config", "--config", str(config(pki.cert, pki.key)))
    assert code == 0
    assert "warning: server.tls_cert_file: the certificate expires on" in out
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    pki.write(
        pki.ca.issue_cert("127.0.0.1", not_before=past - datetime.timedelta(days=9), not_after=past)
    )
    code, _, err = await run_cli("check-config", "--config", str(config(pki.cert, pki.key)))
    assert code == 1
    assert "the certificate expired on" in err
    pki.key.write_bytes(pki.ca.issue_cert("127.0.0.1").private_key_pem.bytes())
    path = config(pki.cert, pki.key)
    code, _, err = await run_cli("check-config", "--config", str(path))
    assert code == 1
    assert f"server.tls_key_file {pki.key}: does not match the certificate" in err
    code, out, err = await run_cli("serve", "--config", str(path))
    assert (code, out) == (1, "")
    assert err == f"{path}: server.tls_key_file {pki.key}: does not match the certificate\n"
