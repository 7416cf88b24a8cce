"""Clock-skew watchdog: the upstream's ``Date`` against our clock.

Aleacc refuses a timestamp out of sync with its clock (403), and nothing else says why;
this turns a drifting clock into a gauge and a warning before that happens.
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable

import structlog
from prometheus_client import Gauge

WARN_EVERY_S = 60.0

log = structlog.get_logger("aleacc_gateway")


def parse_http_date(value: str) -> float | None:
    """An IMF-fixdate (RFC 9110 §5.6.7) as unix time; None when unparseable."""
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class SkewWatch:
    """Sets the skew gauge from each ``Date`` and warns, at most once a minute, past a limit."""

    def __init__(self, gauge: Gauge, threshold_s: float, clock: Callable[[], float]) -> None:
        self._gauge = gauge
        self._threshold_s = threshold_s
        self._clock = clock
        self._last_date: str | None = None
        self._last_warning = float("-inf")

    def observe(self, date: str | None) -> None:
        """Record the skew shown by one upstream ``Date`` header."""
        # Date has one-second resolution: parse it only when it changes.
        if date is None or date == self._last_date:
            return
        self._last_date = date
        upstream = parse_http_date(date)
        if upstream is None:
            return
        now = self._clock()
        skew = upstream - now
        self._gauge.set(skew)
        if abs(skew) > self._threshold_s and now - self._last_warning >= WARN_EVERY_S:
            self._last_warning = now
            log.warning(
                "clock_skew",
                skew_s=round(skew, 1),
                threshold_s=self._threshold_s,
                hint="the upstream refuses timestamps out of sync; check NTP on this node",
            )
