"""Explaining Aleacc's refusals (gateway/rejections.py): the cause as a table, what the
event may show, and the event read from the real log output of a gateway that Aleacc's
stand-in refuses for each cause."""

from __future__ import annotations

import email.utils
import io
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from gateway import signing
from gateway.mock.upstream import DEMO_SECRET, MockSettings, create_mock_app, journal
from gateway.rejections import explained_fields, likeliest_cause

from .support import (
    SECRET_ENV,
    SESSION_ID,
    Mock,
    StartGateway,
    log_events,
    remember_sensitive,
    serve_app,
    settings_for,
)

WRONG = {SECRET_ENV: "ab" * 32}  # a valid key, but not the one the stand-in holds
T = 1_800_000_000


def http_date(seconds: float) -> str:
    return email.utils.formatdate(seconds, usegmt=True)


@pytest.mark.parametrize(
    ("status", "date", "rotated_s_ago", "has_session", "cause"),
    [
        (403, http_date(T + 600), None, True, "clock"),
        (403, http_date(T - 301), 5.0, True, "clock"),  # a clock off beats a rotation
        (403, http_date(T + 299), 5.0, True, "secret_rotated"),
        (403, http_date(T), 61.0, True, "signature"),  # rotated, but long ago
        (401, http_date(T), None, False, "missing_header"),
        (401, http_date(T), None, True, "signature"),
        (403, None, None, True, "signature"),  # no Date: the clock cannot be judged
        (403, "not a date", None, True, "signature"),
    ],
)
def test_the_likeliest_cause(
    status: int, date: str | None, rotated_s_ago: float | None, has_session: bool, cause: str
) -> None:
    assert likeliest_cause(status, T, date, rotated_s_ago, has_session) == cause


def test_the_explained_fields_hold_no_session_and_no_body() -> None:
    body = b'{"Username": "ann", "Password": "s3cret-pw"}'
    parts = signing.RequestParts(
        "POST", "https", "h", "/api/player/signin?x=" + "y" * 600,
        {"X-Player-Session-Id": SESSION_ID, "X-Client-Ip": "192.0.2.1"}, body,
    )  # fmt: skip
    plan = signing.DEFAULT_PLAN
    lines = explained_fields(plan, parts, signing.Context("id", "1", "2"))
    text = "\n".join(lines)
    assert SESSION_ID not in text
    assert b"s3cret-pw".decode() not in text
    assert "header:X-Player-Session-Id?: (session " in text
    assert f"body: ({len(body)} bytes, sha256 " in text
    assert "header:X-Client-Ip?: 192.0.2.1" in text
    target = next(line for line in lines if line.startswith("path_and_query: "))
    assert target.endswith(" bytes, sha256 " + target.rsplit(" ", 1)[1])  # cut at 512
    assert len(target) < 700


async def refused(
    start_gateway: StartGateway, settings: object, paths: list[str], **kw: object
) -> list[int]:
    gw = await start_gateway(settings, **kw)
    statuses = []
    async with aiohttp.ClientSession() as client:
        for path in paths:
            headers = {"X-Player-Session-Id": SESSION_ID} if "balance" in path else {}
            url = URL(f"{gw.url}{path}", encoded=True)
            async with client.get(url, headers=headers) as r:
                statuses.append(r.status)
    return statuses


async def test_a_wrong_secret_is_explained_once_per_path_as_signature(
    mock: Mock, start_gateway: StartGateway, logs: io.StringIO
) -> None:
    paths = ["/echo?a=1", "/echo?a=2", "/player/balance"]
    statuses = await refused(start_gateway, settings_for(mock.url), paths, environ=WRONG)
    assert statuses == [403, 403, 403]
    events = log_events(logs, "upstream_rejected")
    # Two paths (the query is not part of it): two events, the second /echo was limited.
    assert [(e["status"], e["path"], e["cause"]) for e in events] == [
        (403, "/api/echo", "signature"),
        (403, "/api/player/balance", "signature"),
    ]
    first = events[0]
    assert first["request_id"] == journal(mock.app)[0].authorization.split(":")[2]  # type: ignore[union-attr]
    assert first["fields"][:3] == [
        "api_id: 12345678901234567890123456789012",
        f"request_id: {first['request_id']}",
        f"timestamp: {first['signed_timestamp']}",
    ]
    assert "path_and_query: /api/echo?a=1" in first["fields"]
    assert first["scheme"]["fields"] == list(signing.DEFAULT_FIELDS)
    assert first["clock_correction_s"] == 0
    balance = events[1]["fields"]
    assert any(line.startswith("header:X-Player-Session-Id?: (session ") for line in balance)
    for seen in journal(mock.app):
        remember_sensitive(seen.authorization, seen.session_id)  # checked after the test
    assert "ab" * 32 not in logs.getvalue()


async def test_a_clock_off_is_explained_as_clock(
    start_gateway: StartGateway, logs: io.StringIO
) -> None:
    app = create_mock_app(MockSettings(base_path="/api", clock_offset_s=600))
    runner, url = await serve_app(app)
    try:
        settings = settings_for(url / "api", signing={"correct_clock_skew": False})
        assert await refused(start_gateway, settings, ["/echo"]) == [403]
    finally:
        await runner.cleanup()
    (event,) = log_events(logs, "upstream_rejected")
    assert event["cause"] == "clock"


async def test_a_401_without_a_session_is_explained_as_missing_header(
    mock: Mock, start_gateway: StartGateway, logs: io.StringIO
) -> None:
    gw = await start_gateway(settings_for(mock.url))
    async with aiohttp.ClientSession() as client, client.get(gw.url / "player/balance") as r:
        assert r.status == 401
    (event,) = log_events(logs, "upstream_rejected")
    assert (event["status"], event["cause"]) == (401, "missing_header")


async def test_a_secret_just_rotated_is_explained_as_such(
    mock: Mock, start_gateway: StartGateway, logs: io.StringIO, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(DEMO_SECRET)
    settings = settings_for(mock.url, signing={"secret_file": secret, "secret_env": None})
    gw = await start_gateway(settings)
    secret.write_text("ab" * 32)  # a rotation to a secret Aleacc does not know yet
    assert gw.server.secrets["default"].refresh() == "loaded"
    async with aiohttp.ClientSession() as client, client.get(gw.url / "echo") as r:
        assert r.status == 403
    (event,) = log_events(logs, "upstream_rejected")
    assert event["cause"] == "secret_rotated"


async def test_explaining_can_be_turned_off(
    mock: Mock, start_gateway: StartGateway, logs: io.StringIO
) -> None:
    settings = settings_for(mock.url, logging={"explain_rejections_every_s": 0})
    assert await refused(start_gateway, settings, ["/echo"], environ=WRONG) == [403]
    assert log_events(logs, "upstream_rejected") == []
