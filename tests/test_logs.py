"""The log sink's chunking (whole lines per write, never more than PIPE_BUF bytes), the
JSON rendering of awkward values, and the access line rendered without structlog."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import pytest
import structlog

from gateway.logs import PIPE_BUF, AccessLog, configure_logging, line_chunks


@pytest.mark.parametrize("line_length", [1, 99, 100, 4095, 4096, 5000])
def test_chunks_end_at_line_ends_and_fit_a_pipe_write(line_length: int) -> None:
    data = b"".join(b"x" * (line_length - 1) + b"\n" for _ in range(300))
    chunks = line_chunks(data, PIPE_BUF)
    assert b"".join(chunks) == data
    for chunk in chunks:
        assert len(chunk) <= PIPE_BUF
        if line_length <= PIPE_BUF:
            assert chunk.endswith(b"\n")  # a line is never split across writes


def test_the_sink_writes_every_line_to_stdout_at_flush_and_at_exit() -> None:
    # A process whose logging goes to its stdout, a pipe here, as a worker's does: 200
    # lines of many lengths, flushed, and one more that only the exit writes out.
    script = (
        "from gateway.logs import AccessLog, configure_logging, flush\n"
        "configure_logging('json')\n"
        "access = AccessLog()\n"
        "for n in range(200):\n"
        "    access.write({'n': n, 'pad': 'p' * (n % 200 * 7)})\n"
        "flush()\n"
        "access.write({'n': 200, 'pad': ''})\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True)
    lines = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert [(line["n"], line["pad"]) for line in lines] == [
        (n, "p" * (n % 200 * 7)) for n in range(201)
    ]
    assert done.stderr == b""


def test_a_line_orjson_refuses_is_still_written_as_valid_json() -> None:
    buffer = io.StringIO()
    configure_logging("json", stream=buffer, cache=False)
    log = structlog.get_logger("test")
    log.info("plain", path="/player/balance", n=1)
    log.info("odd", path="/caf\udce9", big=2**70)  # undecodable byte, beyond 64 bits
    plain, odd = (json.loads(line) for line in buffer.getvalue().splitlines())
    assert (plain["event"], plain["path"]) == ("plain", "/player/balance")
    assert (odd["path"], odd["big"]) == ("/caf\udce9", 2**70)


ACCESS_FIELDS = {
    "request_id": "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
    "method": "POST",
    "path": '/player/"quoted"\n',  # a quote, a newline
    "status": 200,
    "upstream_status": None,
    "duration_ms": 1.234,
    "client_ip": "203.0.113.7",
    "client_name": None,
    "bytes_in": 204,
    "bytes_out": 0,
    "error": None,
    "session": "5d41402abc4b",
}


@pytest.mark.parametrize(
    "odd",  # what orjson refuses, so json.dumps writes the line
    [{}, {"path": "/caf\udce9", "bytes_in": 2**70}],  # an undecodable byte, beyond 64 bits
    ids=["orjson", "fallback"],
)
@pytest.mark.parametrize("worker", [None, 2])
def test_the_access_line_is_the_line_structlog_renders(
    worker: int | None, odd: dict[str, object]
) -> None:
    """Same keys and values as ``log.info("request", ...)`` through structlog, in the
    order the access line has always had: context, level, the fields, event, timestamp."""
    buffer = io.StringIO()
    configure_logging("json", stream=buffer, cache=False)
    fields = {**ACCESS_FIELDS, **odd}
    with structlog.contextvars.bound_contextvars(**({"worker": worker} if worker else {})):
        structlog.get_logger("test").info("request", **fields)
        AccessLog().write(dict(fields))  # the dict becomes the line's: event, timestamp
    by_structlog, direct = (json.loads(line) for line in buffer.getvalue().splitlines())
    assert direct == {**by_structlog, "timestamp": direct["timestamp"]}
    context = ["worker"] if worker else []
    assert list(direct) == [*context, "level", *fields, "event", "timestamp"]
    for line in (by_structlog, direct):  # ISO 8601 in UTC; no fraction when it is 0 µs
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", line["timestamp"])


def test_the_access_line_follows_the_format_and_level() -> None:
    buffer = io.StringIO()
    configure_logging("console", stream=buffer, cache=False)
    AccessLog().write(ACCESS_FIELDS)
    assert "request" in buffer.getvalue()
    assert "request_id=0a1b2c3d4e5f60718293a4b5c6d7e8f9" in buffer.getvalue()
    quiet = io.StringIO()
    configure_logging("json", level="warning", stream=quiet, cache=False)
    AccessLog().write(ACCESS_FIELDS)
    assert quiet.getvalue() == ""
