"""Logging: structlog set up once from the entry point, and the per-request access line."""

from __future__ import annotations

import asyncio
import atexit
import datetime
import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, Literal, TextIO

import orjson
import structlog

LogFormat = Literal["json", "console"]

_TIMESTAMP = structlog.processors.TimeStamper(fmt="iso", utc=True)
_SHARED: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    _TIMESTAMP,
]


FLUSH_EVERY_S = 0.1
PIPE_BUF = 4096  # POSIX: a pipe write up to this size is never interleaved with another


class _LineSink:
    """Buffered log lines for a file descriptor, written out by ``flush``.

    Each write is at most PIPE_BUF bytes and ends at a line end, so the lines of several
    worker processes sharing one stdout pipe never splice into each other, while a busy
    process still makes one write per ~20 lines instead of one per line.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pending: list[str] = []

    def write(self, text: str) -> int:
        self._pending.append(text)
        return len(text)

    def flush(self) -> None:
        if not self._pending:
            return
        data = "".join(self._pending).encode("utf-8", "backslashreplace")
        self._pending.clear()
        try:
            for chunk in line_chunks(data, PIPE_BUF):
                view = memoryview(chunk)
                while view:  # a pipe write of <= PIPE_BUF bytes is whole; a file's may be short
                    view = view[os.write(self._fd, view) :]
        except BrokenPipeError:
            # Whoever read our output is gone (a log collector that died, a closed
            # pipe): the lines cannot be delivered, and serving goes on without them.
            return


def line_chunks(data: bytes, limit: int) -> list[bytes]:
    """Cut ``data`` into pieces of at most ``limit`` bytes, each ending at a line end.

    Only a single line longer than ``limit`` is cut inside the line.
    """
    chunks, start = [], 0
    while start < len(data):
        end = min(start + limit, len(data))
        if end < len(data):
            cut = data.rfind(b"\n", start, end)
            end = cut + 1 if cut >= start else end
        chunks.append(data[start:end])
        start = end
    return chunks


_output: TextIO | _LineSink | None = None
# Where AccessLog writes JSON lines itself; None: through structlog (console format, a
# level above info, or logging not configured).
_access_sink: TextIO | _LineSink | None = None


class _LineLogger:
    """structlog's output end: one line per event into the sink, flushed periodically."""

    def __init__(self, stream: TextIO | _LineSink) -> None:
        self._stream = stream

    def msg(self, message: str) -> None:
        self._stream.write(message + "\n")

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def render_json(event: dict[str, Any], default: Callable[[Any], Any], option: int = 0) -> str:
    """One JSON line for ``event``: orjson (as structlog's performance guide suggests;
    the figures are in bench/README.md), or json.dumps for what orjson refuses
    (text with lone surrogates from undecodable bytes, integers beyond 64 bits), which
    escapes it as valid JSON instead of losing the line.
    """
    try:
        return orjson.dumps(event, default=default, option=option).decode()  # valid UTF-8
    except TypeError:
        return json.dumps(event, default=default)


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
    global _output, _access_sink
    output: TextIO | _LineSink = stream if stream is not None else _LineSink(sys.stdout.fileno())
    if stream is None:
        atexit.register(output.flush)
    _output = output
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer(serializer=render_json)
    )
    wrapper_class = structlog.make_filtering_bound_logger(logging.getLevelName(level.upper()))
    structlog.configure(
        processors=[*_SHARED, structlog.processors.format_exc_info, renderer],
        logger_factory=lambda *args: _LineLogger(output),
        wrapper_class=wrapper_class,
        # Caching is right for a process configured once; tests re-configure per test.
        cache_logger_on_first_use=cache,
    )
    access_enabled = logging.getLevelName(level.upper()) <= logging.INFO
    _access_sink = output if fmt == "json" and access_enabled else None
    handler: logging.Handler = logging.StreamHandler(output)
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


class AccessLog:
    """The per-request ``request`` line.

    In the JSON format it is rendered straight with orjson into the buffered sink: the
    same line structlog renders for ``log.info("request", **fields)`` — the bound context
    variables (a worker's number), ``level``, the fields in their order, ``event``,
    ``timestamp`` — without structlog's per-line machinery (a bound-logger call, a context
    copy, two processors: bench/README.md has the cost). The context and level are
    rendered once, here; each line renders only its own fields. Every other event, and
    the access line in the console format, goes through structlog. Build it after
    configure_logging() and after binding context variables (none named as a field).
    """

    def __init__(self) -> None:
        self._sink = _access_sink
        head = {**structlog.contextvars.get_contextvars(), "level": "info"}
        # '{"worker":1,"level":"info",': each line's own object follows, its "{" left out.
        self._head = render_json(head, _iso_or_str)[:-1] + ","
        self._logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(
            "aleacc_gateway.access"
        )

    def write(self, fields: dict[str, Any]) -> None:
        """One access line with ``fields``, in order; ``event`` and ``timestamp`` are added
        to the dict itself (it is the line's own: no copy is made)."""
        if self._sink is None:
            self._logger.info("request", **fields)
            return
        fields["event"] = "request"
        # orjson writes the time as structlog's ISO stamper does ("...T00:00:00.123456Z",
        # no fraction at 0 µs), more cheaply than isoformat() and a replace.
        fields["timestamp"] = _now()
        self._sink.write(self._head + render_json(fields, _iso_or_str, orjson.OPT_UTC_Z)[1:] + "\n")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _iso_or_str(value: Any) -> str:
    """What json.dumps (the fallback) writes for a value it cannot serialise."""
    if isinstance(value, datetime.datetime):
        return value.isoformat().replace("+00:00", "Z")
    return str(value)


def flush() -> None:
    """Write out buffered log lines."""
    if _output is not None:
        _output.flush()


async def flush_periodically(
    interval_s: float = FLUSH_EVERY_S, before: Callable[[], None] | None = None
) -> None:
    """Flush buffered log lines every ``interval_s`` until cancelled (then once more),
    calling ``before`` first each time (a worker folds its metrics, so a request whose
    line can be read is counted in /metrics too)."""
    try:
        while True:
            await asyncio.sleep(interval_s)
            if before is not None:
                before()
            flush()
    finally:
        if before is not None:
            before()
        flush()


def session_tag(session_id: str | None) -> str | None:
    """A short stable hash standing in for a player session id in logs."""
    if not session_id:
        return None
    return hashlib.sha256(session_id.encode("utf-8", "surrogateescape")).hexdigest()[:12]
