"""Hostile input and upstream faults, mostly as raw bytes on a TCP socket."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from .support import RawUpstream, StartGateway, settings_for

CORPUS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "data" / "malformed_requests.json").read_text()
)["cases"]
# Short timeouts so the "slow" cases finish quickly; everything else at its defaults.
HARDENING_LIMITS = {"header_timeout_s": 0.5, "body_timeout_s": 0.5}


async def exchange_raw(port: int, raw: bytes) -> bytes:
    """Send ``raw`` and read until the gateway closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
    except ConnectionError:
        pass  # refused mid-send: what was answered is still readable
    try:
        # A guard, not a wait: every case ends with the gateway closing the connection.
        return await asyncio.wait_for(reader.read(), timeout=10)
    except ConnectionError:
        return b""
    finally:
        writer.close()


def status_of(answer: bytes) -> int | None:
    """The status code of the first response, or None when the connection just closed."""
    if not answer:
        return None
    line = answer.split(b"\r\n", 1)[0]
    # aiohttp's status line repeats the request's version token (HTTP/1.0 when the
    # request could not be parsed); what matters is the status code.
    assert line.startswith(b"HTTP/"), answer[:80]
    return int(line.split(b" ")[1])


def test_the_corpus_is_large_and_named() -> None:
    assert len(CORPUS) >= 60
    names = [case["name"] for case in CORPUS]
    assert len(names) == len(set(names))
    assert {case["category"] for case in CORPUS} == {
        "smuggling",
        "headers",
        "request-line",
        "target",
        "body",
        "slow",
    }


@pytest.mark.parametrize("case", CORPUS, ids=[c["name"] for c in CORPUS])
async def test_malformed_request_is_refused_before_the_upstream(
    raw_upstream: RawUpstream, start_gateway: StartGateway, case: dict[str, Any]
) -> None:
    gw = await start_gateway(settings_for(raw_upstream.url, limits=HARDENING_LIMITS))
    answer = await exchange_raw(gw.bound.proxy[1], case["request"].encode("latin-1"))
    status = status_of(answer)
    assert status is None or 400 <= status < 500, (case["name"], answer[:300])
    if status is not None:
        body = answer.partition(b"\r\n\r\n")[2]
        assert json.loads(body)["error"], (
            answer
        )  # the gateway's JSON error, never aiohttp's text page
        assert b"evil" not in body
    assert raw_upstream.connections == 0, case["name"]
    # The gateway is still healthy for the next caller.
    ok = await exchange_raw(
        gw.bound.proxy[1], b"GET /ok HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
    )
    assert status_of(ok) == 200
