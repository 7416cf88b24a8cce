"""The log sink's chunking: whole lines per write, never more than PIPE_BUF bytes."""

from __future__ import annotations

import os

import pytest

from gateway.logs import PIPE_BUF, _LineSink, line_chunks


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
