"""Logging: structlog set up once from the entry point, and the per-request access line."""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import logging
import sys
from typing import Literal, TextIO

import structlog

LogFormat = Literal["json", "console"]

_SHARED: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


FLUSH_EVERY_S = 0.1
_output: TextIO | None = None


class _LineLogger:
    """structlog's output end: one line per event into a stream, flushed by the caller.

    structlog's own WriteLogger flushes (one syscall) per line; under load the gateway
    flushes every FLUSH_EVERY_S instead (see ``flush_periodically``).
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def msg(self, message: str) -> None:
        self._stream.write(message + "\n")

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def configure_logging(
    fmt: LogFormat = "json",
    level: str = "info",
    stream: TextIO | None = None,
    cache: bool = True,
) -> None:
    """Route structlog and stdlib logging (aiohttp's own) to one stream in one format.

    Our events go straight from structlog to the stream, never through stdlib logging
    (a LogRecord and a handler lock per access line cost more than rendering it).
    """
    global _output
    if stream is None:
        # stdout, block-buffered whatever PYTHONUNBUFFERED says; flushed periodically.
        stream = open(sys.stdout.fileno(), "w", buffering=64 * 1024, closefd=False)  # noqa: SIM115
        atexit.register(stream.flush)
    _output = stream
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[*_SHARED, structlog.processors.format_exc_info, renderer],
        logger_factory=lambda *args: _LineLogger(stream),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # Caching is right for a process configured once; tests re-configure per test.
        cache_logger_on_first_use=cache,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[*_SHARED, structlog.stdlib.ExtraAdder()],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access logger is replaced by our own access line.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def flush() -> None:
    """Write out buffered log lines."""
    if _output is not None:
        _output.flush()


async def flush_periodically(interval_s: float = FLUSH_EVERY_S) -> None:
    """Flush buffered log lines every ``interval_s`` until cancelled (then once more)."""
    try:
        while True:
            await asyncio.sleep(interval_s)
            flush()
    finally:
        flush()


def session_tag(session_id: str | None) -> str | None:
    """A short stable hash standing in for a player session id in logs."""
    if not session_id:
        return None
    return hashlib.sha256(session_id.encode("utf-8", "surrogateescape")).hexdigest()[:12]
