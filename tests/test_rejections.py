"""Explaining Aleacc's refusals (gateway/rejections.py): the cause as a table, what the
event may show, the cap over every path as a table on a hand-moved clock, and the event
read from the real log output of a gateway that Aleacc's stand-in refuses for each cause
and for a flood of distinct paths."""

from __future__ import annotations

import email.utils
import hashlib
import io
import math
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from gateway import signing
from gateway.metrics import RequestCounts
from gateway.mock.upstream import (
    DEMO_API_ID,
    DEMO_SECRET,
    MockSettings,
    create_mock_app,
    journal,
)
from gateway.rejections import (
    MAX_VALUE_BYTES,
    SUMMARY_EVERY_S,
    RejectionCap,
    RejectionLog,
    cut,
    explained_fields,
    likeliest_cause,
)

from .support import (
    SECRET_ENV,
    SESSION_ID,
    Mock,
    StartGateway,
    StartProcess,
    config_file,
    log_events,
    remember_sensitive,
    serve_app,
    settings_for,
)

WRONG = {SECRET_ENV: "ab" * 32}  # a valid key, but not the one the stand-in holds
T = 1_800_000_000
DEFAULT_PLAN = signing.compile_scheme(signing.Scheme())


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
        "POST",
        "https",
        "h",
        "/api/player/signin?x=" + "y" * 600,
        {"X-Player-Session-Id": SESSION_ID, "X-Client-Ip": "192.0.2.1"},
        body,
    )
    plan = DEFAULT_PLAN
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


class Timers:
    """The clock, moved by hand, and the callbacks the cap asked to run later."""

    def __init__(self) -> None:
        self.now = 0.0
        self.pending: list[tuple[float, Callable[[], None]]] = []

    def clock(self) -> float:
        return self.now

    def schedule(self, delay_s: float, callback: Callable[[], None]) -> None:
        self.pending.append((self.now + delay_s, callback))

    def run_due(self) -> None:
        due = [c for at, c in self.pending if at <= self.now]
        self.pending = [(at, c) for at, c in self.pending if at > self.now]
        for callback in due:
            callback()


@pytest.mark.parametrize(
    ("per_s", "arrivals", "allowed", "summaries"),
    [
        # A bucket of one second's worth, then one event each 1/per_s.
        (5, [0.0] * 8, [1] * 5 + [0] * 3, [3]),
        (5, [0.0] * 5 + [0.2], [1] * 6, []),
        (1, [0.0, 0.5, 1.0, 1.5, 2.5], [1, 0, 1, 0, 1], [1, 1]),
        # A summary a second after the first left out, then only when more are.
        (1, [0.0, 0.1, 0.2, 0.9, 3.0, 3.1], [1, 0, 0, 0, 1, 0], [3, 1]),
        # Below one a second: the bucket holds one.
        (0.1, [0.0, 5.0, 10.0, 10.5], [1, 0, 1, 0], [1, 1]),
    ],
)
def test_the_cap_allows_per_s_and_sums_up_the_others(
    per_s: float, arrivals: list[float], allowed: list[int], summaries: list[int], logs: io.StringIO
) -> None:
    timers, counts = Timers(), RequestCounts()
    cap = RejectionCap(
        per_s, max(1, math.ceil(per_s)), counts, clock=timers.clock, schedule=timers.schedule
    )
    seen = []
    for at in arrivals:
        timers.now = at
        timers.run_due()
        seen.append(int(cap.allow()))
    timers.now += SUMMARY_EVERY_S
    timers.run_due()
    assert seen == allowed
    assert timers.pending == []  # nothing left to say: no timer
    events = log_events(logs, "upstream_rejections_suppressed")
    assert [e["suppressed"] for e in events] == summaries
    assert counts.rejections_suppressed == {(): len(allowed) - sum(allowed)}


def test_100000_refusals_to_distinct_paths_write_a_bounded_log(logs: io.StringIO) -> None:
    timers, counts = Timers(), RequestCounts()
    cap = RejectionCap(5, 5, counts, clock=timers.clock, schedule=timers.schedule)
    explain = RejectionLog(
        DEFAULT_PLAN,
        10.0,
        lambda: None,
        cap,
        tenant="default",
        api_id=DEMO_API_ID,
        clock=timers.clock,
    )
    signed = signing.Signed("not logged", "1", 1_800_000_000, b"")
    for n in range(100_000):
        timers.now = n / 10_000  # ten seconds of refusals
        timers.run_due()
        parts = signing.RequestParts("GET", "http", "h", f"/api/p{n}", {}, b"")
        explain.rejected(403, parts, signed, None, 0.0, False)
    timers.now += SUMMARY_EVERY_S
    timers.run_due()
    explained = log_events(logs, "upstream_rejected")
    summed = log_events(logs, "upstream_rejections_suppressed")
    assert 50 <= len(explained) <= 5 + 5 * 10
    assert len(summed) <= 11
    assert len(explained) + sum(e["suppressed"] for e in summed) == 100_000
    assert counts.rejections_suppressed[()] == 100_000 - len(explained)
    assert len(logs.getvalue()) < 200_000


def utf8(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


@pytest.mark.parametrize(
    "value",
    ["", "x" * MAX_VALUE_BYTES, "x" * (MAX_VALUE_BYTES + 1), "é" * 7000, "\udcff" * 600],
)
def test_every_string_in_the_event_is_cut_at_512_bytes(value: str) -> None:
    shown = cut({"path": value, "fields": [value, "short"], "scheme": {"separator": value}})
    for one in (shown["path"], *shown["fields"], shown["scheme"]["separator"]):
        assert len(utf8(one)) <= MAX_VALUE_BYTES
    assert shown["fields"][1] == "short"
    if len(utf8(value)) <= MAX_VALUE_BYTES:
        assert shown["path"] == value
    else:
        digest = hashlib.sha256(utf8(value)).hexdigest()
        assert shown["path"].endswith(f" ... ({len(utf8(value))} bytes, sha256 {digest})")


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


async def test_a_flood_of_refused_paths_is_capped_summed_up_and_counted(
    mock: Mock, gateway_process: StartProcess, tmp_path: Path
) -> None:
    # One explanation in a thousand seconds: every one after the first is left out.
    env = {**WRONG, "ALEACC_GATEWAY_LOGGING_EXPLAIN_REJECTIONS_PER_S": "0.001"}
    secret = tmp_path / "secret"
    secret.write_text(WRONG[SECRET_ENV])
    gateway = await gateway_process(config_file(tmp_path / "gw.toml", mock.url, secret), env)
    long_path = "/p" + "x" * 7000
    async with aiohttp.ClientSession() as client:
        for path in [long_path, *(f"/p{n}" for n in range(29))]:
            async with client.get(gateway.proxy.with_path(path)) as r:
                assert r.status == 403
        summary = await gateway.wait_for("upstream_rejections_suppressed")
        async with client.get(gateway.admin / "metrics") as r:
            metrics = await r.text()
    (event,) = gateway.events("upstream_rejected")
    # The first, with its 7,000-byte path cut like every field.
    assert event["path"].startswith("/api/pxxx")
    assert len(event["path"].encode()) <= MAX_VALUE_BYTES
    assert all(len(line.encode()) <= MAX_VALUE_BYTES for line in event["fields"])
    assert summary["suppressed"] == 29
    assert "aleacc_gateway_rejections_suppressed_total 29.0" in metrics.splitlines()
