"""Aleacc's clock: the upstream's ``Date`` against ours, watched and followed.

Aleacc refuses a timestamp out of sync with its clock (403), and nothing else says why.
Every new ``Date`` sets the skew gauge (and a warning past a limit, once a minute at
most). With correction on, the gateway also signs with its clock plus the median offset
of the last few answers, as cloud SDKs do after a skew error, so a node whose clock
drifted keeps working while NTP is fixed. The correction moves only when those answers
agree: an upstream (or something in between) whose Dates jump back and forth would
otherwise move the signed time with every jump.
"""

from __future__ import annotations

import email.utils
import statistics
from collections import deque
from collections.abc import Callable

import structlog
from prometheus_client import Gauge

from .metrics import RequestCounts, add

WARN_EVERY_S = 60.0
# The median of this many answers' offsets is the correction: one odd Date moves nothing.
CORRECTION_SAMPLES = 5
# ... and it is followed only while they lie this close together (the spread of Date's
# one-second resolution and of the answers' latency); else the last one is held.
AGREEMENT_S = 5.0
# Date has one-second resolution: a smaller offset is the truncation, not a skew.
MIN_CORRECTION_S = 2.0
# An upstream clock this far off is broken, not ahead: never followed.
MAX_CORRECTION_S = 86400.0
# A change of the correction this large is logged.
LOG_CHANGE_S = 5.0

log = structlog.get_logger("aleacc_gateway")


def parse_http_date(value: str) -> float | None:
    """An IMF-fixdate (RFC 9110 §5.6.7) as unix time; None when unparseable."""
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class SkewWatch:
    """Reads each upstream ``Date``: the skew gauge and warning, and ``correction``, the
    seconds to add to the local clock when signing (0 unless ``correct``)."""

    def __init__(
        self,
        gauge: Gauge,
        correction_gauge: Gauge,
        threshold_s: float,
        clock: Callable[[], float],
        counts: RequestCounts,
        correct: bool = True,
    ) -> None:
        """``counts``: where answers that disagree are counted."""
        self._gauge = gauge
        self._counts = counts
        self._correction_gauge = correction_gauge
        self._threshold_s = threshold_s
        self._clock = clock
        self._correct = correct
        self.correction = 0.0
        self._recent: deque[float] = deque(maxlen=CORRECTION_SAMPLES)
        self._last_date: str | None = None
        self._last_warning = float("-inf")
        self._last_refusal = float("-inf")
        self._last_held = float("-inf")

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
                correction_s=round(self.correction, 1),
                hint="the upstream refuses timestamps out of sync; check NTP on this node",
            )
        if self._correct:
            self._follow(skew, now)

    def _follow(self, skew: float, now: float) -> None:
        recent = self._recent
        recent.append(skew)
        spread = max(recent) - min(recent)
        if spread > AGREEMENT_S:
            add(self._counts.clock_disagreements, ())
            if now - self._last_held >= WARN_EVERY_S:
                self._last_held = now
                log.warning(
                    "clock_correction_held",
                    offsets_s=[round(o, 1) for o in recent],
                    agreement_s=AGREEMENT_S,
                    correction_s=round(self.correction, 1),
                )
            return
        offset = statistics.median(recent)
        if abs(offset) > MAX_CORRECTION_S:
            if now - self._last_refusal >= WARN_EVERY_S:
                self._last_refusal = now
                log.error(
                    "clock_correction_refused",
                    offset_s=round(offset, 1),
                    limit_s=MAX_CORRECTION_S,
                    correction_s=round(self.correction, 1),
                )
            return
        correction = offset if abs(offset) >= MIN_CORRECTION_S else 0.0
        if abs(correction - self.correction) > LOG_CHANGE_S:
            log.warning(
                "clock_correction_changed",
                correction_s=round(correction, 1),
                previous_s=round(self.correction, 1),
            )
        self.correction = correction
        self._correction_gauge.set(correction)
