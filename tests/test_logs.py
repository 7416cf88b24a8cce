"""The log sink's chunking (whole lines per write, never more than PIPE_BUF bytes) and
the JSON rendering of awkward values."""

from __future__ import annotations

import io
import json
import os

import pytest
import structlog

from gateway.logs import PIPE_BUF, _LineSink, configure_logging, line_chunks


@pytest.mark.parametrize("line_length", [1, 99, 100, 4095, 4096, 5000])
def test_chunks_end_at_line_ends_and_fit_a_pipe_write(line_length: int) -> None:
    data = b"".join(b"x" * (line_length - 1) + b"\n" for _ in range(300))
    chunks = line_chunks(data, PIPE_BUF)
    assert b"".join(chunks) == data
    for chunk in chunks:
        assert len(chunk) <= PIPE_BUF
        if line_length <= PIPE_BUF:
            assert chunk.endswith(b"\n")  # a line is never split across writes


def test_the_sink_writes_every_line_to_its_descriptor() -> None:
    read, write = os.pipe()
    sink = _LineSink(write)
    lines = [f'{{"n": {i}, "pad": "{"p" * (i % 200)}"}}\n' for i in range(200)]
    for line in lines:
        sink.write(line)
    sink.flush()
    os.close(write)
    received = b""
    while chunk := os.read(read, 65536):
        received += chunk
    os.close(read)
    assert received.decode() == "".join(lines)


def test_a_line_orjson_refuses_is_still_written_as_valid_json() -> None:
    buffer = io.StringIO()
    configure_logging("json", stream=buffer, cache=False)
    log = structlog.get_logger("test")
    log.info("plain", path="/player/balance", n=1)
    log.info("odd", path="/caf\udce9", big=2**70)  # undecodable byte, beyond 64 bits
    plain, odd = (json.loads(line) for line in buffer.getvalue().splitlines())
    assert (plain["event"], plain["path"]) == ("plain", "/player/balance")
    assert (odd["path"], odd["big"]) == ("/caf\udce9", 2**70)
