"""Aleacc's scheme on the wire: the gateway with its defaults, checked by the stand-in
and by the reference signer (written from docs/signing.md, not importing gateway.signing)."""

from __future__ import annotations

import aiohttp
import pytest
from yarl import URL

from gateway import signing
from gateway.config import SigningSettings
from gateway.mock.upstream import DEMO_API_ID, DEMO_SECRET, MockSettings, create_mock_app, journal

from .reference import RefScheme
from .support import (
    SECRET_ENV,
    SESSION_ID,
    RawUpstream,
    StartGateway,
    remember_sensitive,
    serve_app,
    settings_for,
    verify_recorded,
)

XFF = {"X-Forwarded-For": "198.51.100.23"}


@pytest.mark.parametrize("base", ["", "/api"])
@pytest.mark.parametrize(
    ("method", "target", "body", "session"),
    [
        ("POST", "/player/signin", b'{\n  "Username": "test",\n  "Password": "testar"\n}', False),
        ("GET", "/player/balance", b"", True),
        ("GET", "/player/history?from=2015-06-01&q=a%20b&q=%C3%A4", b"", True),
        ("POST", "/player/deposit?currency=EUR", b'{"amount":"10.00"}', True),
        ("DELETE", "/player/x", b"", False),
    ],
)
async def test_the_reference_signer_agrees_on_what_the_gateway_sends(
    raw_upstream: RawUpstream,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
    base: str,
    method: str,
    target: str,
    body: bytes,
    session: bool,
) -> None:
    gw = await start_gateway(settings_for(f"{raw_upstream.url}{base}"))
    headers = {**XFF, **({"X-Player-Session-Id": SESSION_ID} if session else {})}
    url = URL(f"{gw.url}{target}", encoded=True)
    async with client.request(method, url, data=body or None, headers=headers) as r:
        assert r.status == 200
    recorded = raw_upstream.requests[0]
    assert recorded.target == base + target
    assert recorded.body == body
    assert recorded.header("X-Client-Ip") == ["198.51.100.23"]
    verify_recorded(recorded, RefScheme(), DEMO_SECRET)
    # The same request signed as if the optional lines were always absent does not match:
    # the session and client IP really are in the signed string.
    without = RefScheme(fields=("api_id", "request_id", "timestamp", "path_and_query", "body"))
    with pytest.raises(AssertionError):
        verify_recorded(recorded, without, DEMO_SECRET)


async def test_the_stand_in_accepts_the_gateway_with_its_defaults(
    start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    app = create_mock_app(MockSettings(base_path="/api"))
    runner, upstream = await serve_app(app)
    try:
        gw = await start_gateway(settings_for(upstream / "api"))
        player = {"username": "ann", "password": "pw"}
        async with client.post(gw.url / "player/signup", json=player, headers=XFF) as r:
            assert r.status == 201
        async with client.post(gw.url / "player/signin", json=player, headers=XFF) as r:
            assert r.status == 200
            session = (await r.json())["session_id"]
        headers = {**XFF, "X-Player-Session-Id": session}
        async with client.get(gw.url / "player/balance", headers=headers) as r:
            assert r.status == 200
        async with client.get(gw.url / "echo", params={"a": "b c"}, headers=XFF) as r:
            assert r.status == 200
        assert [s.error for s in journal(app)] == [None] * 4
    finally:
        for seen in journal(app):
            remember_sensitive(seen.authorization, seen.session_id)
        await runner.cleanup()


# Non-default schemes, end to end: the gateway and the stand-in configured alike.
SCHEMES = [
    pytest.param(
        RefScheme(
            fields=("api_id", "method", "url|lower|urlencode", "timestamp", "request_id",
                    "body|md5|base64"),
            separator="", secret_encoding="base64",
        ),
        b"a2F0LXNlY3JldC1mb3ItdGVzdHM=",
        id="amx-classic",
    ),
    pytest.param(
        RefScheme(signature_encoding="hex", timestamp_unit="ms"), DEMO_SECRET, id="hex-and-ms"
    ),
    pytest.param(
        RefScheme(
            fields=("api_id", "request_id", "timestamp", "path_and_query", "body",
                    "header:X-Player-Session-Id?", "header:X-Client-Ip"),
            secret_encoding="utf-8",
        ),
        b"a utf-8 secret",
        id="session-after-the-path-utf8-key",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("scheme", "secret"), SCHEMES)
async def test_a_configured_scheme_is_signed_and_verified_end_to_end(
    raw_upstream: RawUpstream,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
    scheme: RefScheme,
    secret: bytes,
) -> None:
    gateway_scheme = signing.Scheme(
        fields=scheme.fields,
        separator=scheme.separator,
        secret_encoding=scheme.secret_encoding,
        signature_encoding=scheme.signature_encoding,
        timestamp_unit=scheme.timestamp_unit,
    )
    app = create_mock_app(MockSettings(secrets=(secret,), scheme=gateway_scheme))
    runner, upstream = await serve_app(app)
    sign = SigningSettings(api_id=DEMO_API_ID, secret_env=SECRET_ENV, scheme=gateway_scheme)
    environ = {SECRET_ENV: secret.decode()}
    try:
        gw = await start_gateway(settings_for(upstream, signing=vars_of(sign)), environ=environ)
        headers = {**XFF, "X-Player-Session-Id": SESSION_ID}
        async with client.post(gw.url / "echo", data=b'{"a":1}', headers=headers) as r:
            assert r.status == 200, await r.text()
        async with client.get(gw.url / "echo", headers=XFF) as r:
            assert r.status == 200, await r.text()
        assert [s.error for s in journal(app)] == [None, None]
        # And the bytes the gateway sends agree with the reference signer.
        raw = await start_gateway(
            settings_for(raw_upstream.url, signing=vars_of(sign)), environ=environ
        )
        async with client.post(raw.url / "x", data=b'{"a":1}', headers=headers) as r:
            assert r.status == 200
        verify_recorded(raw_upstream.requests[0], scheme, secret)
    finally:
        for seen in journal(app):
            remember_sensitive(seen.authorization, seen.session_id)
        await runner.cleanup()


def vars_of(sign: SigningSettings) -> dict[str, object]:
    return {name: getattr(sign, name) for name in ("api_id", "secret_env", "scheme")}
