"""W3C Trace Context as the access line reads it: the trace id a caller's valid
``traceparent`` carries. Pure, and without OpenTelemetry: the line has it with tracing off
(tracing.py, loaded only with tracing on, continues the trace with the SDK's propagator).
"""

from __future__ import annotations

import re

# W3C Trace Context §3.2: version, trace-id, parent-id, trace-flags, lowercase hex.
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-|$)")


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a valid ``traceparent`` header value; None for anything else.

    Version ff and all-zero ids are invalid; version 00 has exactly four fields, a later
    version may add more after a dash (W3C Trace Context §3.2.2).
    """
    if traceparent is None:
        return None
    match = _TRACEPARENT.match(traceparent)
    if match is None:
        return None
    version, trace, parent, _, rest = match.groups()
    if version == "ff" or trace == "0" * 32 or parent == "0" * 16:
        return None
    if version == "00" and rest:
        return None
    return trace
