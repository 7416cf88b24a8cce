"""Following Aleacc's clock (gateway/skew.py): the watch as a table over Date headers,
the gateway against a mock upstream whose clock runs 600 s ahead, and against one whose
Dates jump between a day ahead and a day behind."""

from __future__ import annotations

import email.utils
import io
import json
import time

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge

from gateway import signing
from gateway.metrics import RequestCounts
from gateway.mock.upstream import MockSettings, create_mock_app, journal
from gateway.skew import SkewWatch

from .support import StartGateway, log_events, serve_app, serve_handler, settings_for

NOW = 1_800_000_000.0


class Clock:
    """The local clock, moved by hand."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def watch(
    clock: Clock, correct: bool = True, counts: RequestCounts | None = None
) -> tuple[SkewWatch, Gauge]:
    registry = CollectorRegistry()
    skew = Gauge("skew", "", registry=registry)
    correction = Gauge("correction", "", registry=registry)
    counts = RequestCounts() if counts is None else counts
    return SkewWatch(skew, correction, 30.0, clock, counts, correct=correct), correction


def answers(skew: SkewWatch, clock: Clock, offsets: list[float]) -> None:
    """One answer a second, each from an upstream ``offset`` s ahead of the local clock."""
    for second, offset in enumerate(offsets):
        clock.now = NOW + second
        skew.observe(email.utils.formatdate(clock.now + offset, usegmt=True))


@pytest.mark.parametrize(
    ("offsets", "expected"),
    [
        ([600], 600),
        ([600, 600, 600], 600),
        ([1, 1, 1], 0),  # within Date's resolution: nothing to correct
        ([-2, -2, -2], -2),
        ([600, 600, 5, 600, 600], 600),  # the median: one odd Date moves nothing
        ([0, 0, 0, 600, 600], 0),
        ([90_000, 90_000, 90_000], 0),  # beyond a day: a broken clock, never followed
    ],
)
def test_the_correction_is_the_median_offset_from_two_seconds_to_a_day(
    offsets: list[float], expected: float
) -> None:
    clock = Clock()
    skew, gauge = watch(clock)
    answers(skew, clock, offsets)
    assert skew.correction == pytest.approx(expected)
    assert next(iter(gauge.collect())).samples[0].value == pytest.approx(expected)


DAY = 86_000  # just inside the one-day bound


@pytest.mark.parametrize(
    ("offsets", "expected", "disagreements"),
    [
        ([DAY, -DAY] * 5, DAY, 9),  # jumping back and forth: the first is held
        ([-DAY, DAY, DAY, DAY, DAY], -DAY, 4),  # four that agree are not five
        ([-DAY, DAY, DAY, DAY, DAY, DAY], DAY, 4),  # five are: followed
        ([0, 0, 0, 600, 600, 600, 600, 600], 600, 4),  # a real step, after five answers
        ([600, 603, 598, 601, 599], 600, 0),  # within 5 s of each other: they agree
        ([600, 606], 600, 1),
        ([600, 600, 600, 5, 600], 600, 2),  # one odd Date, held until it is out
    ],
)
def test_the_correction_moves_only_when_the_last_answers_agree(
    offsets: list[float], expected: float, disagreements: int, logs: io.StringIO
) -> None:
    clock, counts = Clock(), RequestCounts()
    skew, gauge = watch(clock, counts=counts)
    answers(skew, clock, offsets)
    assert skew.correction == pytest.approx(expected)
    assert next(iter(gauge.collect())).samples[0].value == pytest.approx(expected)
    assert counts.clock_disagreements == {(): disagreements}
    # Said once a minute at most, with the offsets that disagree.
    held = log_events(logs, "clock_correction_held")
    assert len(held) == min(disagreements, 1)


def test_with_correction_off_the_local_clock_is_used() -> None:
    clock = Clock()
    skew, _ = watch(clock, correct=False)
    answers(skew, clock, [600, 600])
    assert skew.correction == 0


async def signed_twice(
    start_gateway: StartGateway, logs: io.StringIO, correct: bool
) -> tuple[list[int], list[str | None], float]:
    app = create_mock_app(MockSettings(base_path="/api", clock_offset_s=600))
    runner, url = await serve_app(app)
    try:
        settings = settings_for(url / "api", signing={"correct_clock_skew": correct})
        gw = await start_gateway(settings)
        statuses = []
        async with aiohttp.ClientSession() as client:
            for _ in range(3):
                async with client.get(gw.url / "echo") as r:
                    statuses.append(r.status)
        return (
            statuses,
            [s.error for s in journal(app)],
            gw.sample("aleacc_gateway_clock_correction_seconds"),
        )
    finally:
        await runner.cleanup()


async def test_an_upstream_600_s_ahead_is_followed_after_its_first_answer(
    start_gateway: StartGateway, logs: io.StringIO
) -> None:
    statuses, errors, correction = await signed_twice(start_gateway, logs, correct=True)
    # The first is signed with the local clock, 600 s behind Aleacc's: refused. Its
    # answer's Date sets the correction, and every request after it is accepted.
    assert statuses == [403, 200, 200]
    assert errors == ["timestamp_out_of_window", None, None]
    assert 598 <= correction <= 601
    events = [json.loads(line) for line in logs.getvalue().splitlines()]
    # The one refusal is explained as the clock's.
    assert [e["cause"] for e in events if e["event"] == "upstream_rejected"] == ["clock"]
    changed = [e for e in events if e["event"].startswith("clock_correction")]
    assert [e["event"] for e in changed] == ["clock_correction_changed"]
    assert 598 <= changed[0]["correction_s"] <= 601


async def test_with_correction_off_every_request_stays_refused(
    start_gateway: StartGateway, logs: io.StringIO
) -> None:
    statuses, errors, correction = await signed_twice(start_gateway, logs, correct=False)
    assert statuses == [403, 403, 403]
    assert errors == ["timestamp_out_of_window"] * 3
    assert correction == 0


async def test_dates_jumping_a_day_either_way_do_not_move_the_signed_time(
    start_gateway: StartGateway,
) -> None:
    signed_at: list[int] = []

    async def answer(request: web.Request) -> web.Response:
        auth = signing.parse_authorization(request.headers["Authorization"])
        assert auth is not None
        signed_at.append(int(auth.timestamp))
        # Each answer a day either side of the last one's: every Date is new.
        offset = DAY if len(signed_at) % 2 else -DAY
        date = email.utils.formatdate(time.time() + offset, usegmt=True)
        return web.Response(text="ok", headers={"Date": date})

    runner, url = await serve_handler(answer)
    try:
        gw = await start_gateway(settings_for(url))
        async with aiohttp.ClientSession() as client:
            for _ in range(10):
                async with client.get(gw.url / "echo") as r:
                    assert r.status == 200
    finally:
        await runner.cleanup()
    # The first is signed with the local clock, its answer's Date followed; after it, the
    # Dates disagree and the correction is held: every later one signed a day ahead.
    first, *later = signed_at
    hour = 3600  # far more than ten requests take; far less than the day they jumped
    assert all(abs(t - first - DAY) < hour for t in later), [t - first for t in later]
    assert gw.sample("aleacc_gateway_clock_disagreements_total") == 9
    assert 85_900 < gw.sample("aleacc_gateway_clock_correction_seconds") < 86_100
