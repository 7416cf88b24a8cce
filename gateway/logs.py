"""Logging: structlog set up once from the entry point, and the per-request access line."""

from __future__ import annotations

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


def configure_logging(
    fmt: LogFormat = "json",
    level: str = "info",
    stream: TextIO | None = None,
    cache: bool = True,
) -> None:
    """Route structlog and stdlib logging (aiohttp's own) to one stream in one format."""
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            *_SHARED,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # Caching is right for a process configured once; tests re-configure per test.
        cache_logger_on_first_use=cache,
    )
    handler = logging.StreamHandler(stream or sys.stdout)
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


def session_tag(session_id: str | None) -> str | None:
    """A short stable hash standing in for a player session id in logs."""
    if not session_id:
        return None
    return hashlib.sha256(session_id.encode("utf-8", "surrogateescape")).hexdigest()[:12]
