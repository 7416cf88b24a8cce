"""Why Aleacc refused a request: one ``upstream_rejected`` event per status and path
every ``logging.explain_rejections_every_s``, at most ``logging.explain_rejections_per_s``
of them a second for every path and tenant together.

A 401 or 403 from Aleacc says nothing about its cause. The event shows what the gateway
signed (the fields as ``sign --explain`` shows them, with the player's session as its
tag and the body as its length and SHA-256), the scheme, the clock correction in use,
and the likeliest cause the gateway can tell from what it knows: ``clock``,
``secret_rotated``, ``missing_header`` or ``signature``. Never the secret or a signature.

The callers choose the paths and Aleacc the ``Date``: so every field is cut at 512 bytes,
and the events beyond the cap are counted and summed up once a second while there are
any, so a flood of refusals to distinct paths costs a bounded amount of log.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from typing import Any, Literal

import structlog

from . import signing
from .logs import session_tag
from .metrics import RequestCounts, add
from .ratelimit import TokenBucket
from .skew import parse_http_date

Cause = Literal["clock", "secret_rotated", "missing_header", "signature"]

# Aleacc refuses a timestamp more than this far from its clock.
REPLAY_WINDOW_S = 300.0
# A secret loaded this recently is the likeliest cause of a 403.
RECENT_ROTATION_S = 60.0
# Values longer than this are cut in the event (their length and SHA-256 shown).
MAX_VALUE_BYTES = 512
# Paths are the callers' to choose: the rate limit remembers at most this many.
MAX_REMEMBERED = 1024
# While events are left out, how often a summary says how many.
SUMMARY_EVERY_S = 1.0
_SESSION_FIELD = "header:x-player-session-id"

log = structlog.get_logger("aleacc_gateway")


def explained_fields(
    plan: signing.Plan, parts: signing.RequestParts, context: signing.Context
) -> list[str]:
    """The string to sign as ``sign --explain`` shows it, with nothing a log may not hold:
    the body as its length and SHA-256, the player's session as its tag."""
    return plan.explain(parts, context, MAX_VALUE_BYTES, shown=_redacted)


def _redacted(f: signing.FieldPlan, value: bytes) -> str | None:
    if f.name == "body":
        return f"({len(value)} bytes, sha256 {hashlib.sha256(value).hexdigest()})"
    if f.name.lower() == _SESSION_FIELD:
        return f"(session {session_tag(value.decode('utf-8', 'surrogateescape'))})"
    return None


def likeliest_cause(
    status: int,
    signed_s: float,
    upstream_date: str | None,
    rotated_s_ago: float | None,
    has_session: bool,
) -> Cause:
    """What most likely made Aleacc refuse: pure, from what the gateway can see."""
    answered = parse_http_date(upstream_date) if upstream_date else None
    if answered is not None and abs(answered - signed_s) > REPLAY_WINDOW_S:
        return "clock"
    if rotated_s_ago is not None and rotated_s_ago < RECENT_ROTATION_S:
        return "secret_rotated"
    if status == 401 and not has_session:
        # The gateway always sets X-Client-Ip: a missing header is the session id.
        return "missing_header"
    return "signature"


def cut(value: Any) -> Any:
    """``value`` with every string in it at most MAX_VALUE_BYTES of UTF-8, a longer one
    ending with its length and SHA-256."""
    if isinstance(value, str):
        raw = value.encode("utf-8", "surrogateescape")
        if len(raw) <= MAX_VALUE_BYTES:
            return value
        suffix = f" ... ({len(raw)} bytes, sha256 {hashlib.sha256(raw).hexdigest()})"
        kept = raw[: MAX_VALUE_BYTES - len(suffix)].decode("utf-8", "ignore")
        return kept + suffix
    if isinstance(value, list):
        return [cut(v) for v in value]
    if isinstance(value, dict):
        return {k: cut(v) for k, v in value.items()}
    return value


Schedule = Callable[[float, Callable[[], None]], object]


def _call_later(delay_s: float, callback: Callable[[], None]) -> object:
    return asyncio.get_running_loop().call_later(delay_s, callback)


class RejectionCap:
    """At most ``per_s`` events a second (a bucket of ``size``) for every tenant and path
    together. Those left out are counted, and a summary of them is written
    SUMMARY_EVERY_S after the first: a timer only while there is something to say."""

    def __init__(
        self,
        per_s: float,
        size: int,
        counts: RequestCounts,
        *,
        clock: Callable[[], float] = time.monotonic,
        schedule: Schedule = _call_later,
    ) -> None:
        self._bucket = TokenBucket(per_s, size, clock())
        self._counts = counts
        self._clock = clock
        self._schedule = schedule
        self.suppressed = 0  # since the last summary
        self._since: float | None = None  # the first of them; None: no summary due

    def allow(self) -> bool:
        """Whether one more event may be written now; when not, it is counted."""
        now = self._clock()
        if not self._bucket.take(now):
            return True
        self.suppressed += 1
        add(self._counts.rejections_suppressed, ())
        if self._since is None:
            self._since = now
            self._schedule(SUMMARY_EVERY_S, self.summarise)
        return False

    def summarise(self) -> None:
        """Write how many events were left out since the last summary (if any were)."""
        if self._since is None:
            return
        log.warning(
            "upstream_rejections_suppressed",
            suppressed=self.suppressed,
            over_s=round(self._clock() - self._since, 1),
            limit_per_s=self._bucket.rate,
        )
        self.suppressed = 0
        self._since = None


class RejectionLog:
    """Writes ``upstream_rejected``, at most once per (status, path) every ``every_s``,
    and while ``cap`` allows."""

    def __init__(
        self,
        plan: signing.Plan,
        every_s: float,
        rotated_at: Callable[[], float | None],
        cap: RejectionCap,
        *,
        tenant: str,
        api_id: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._plan = plan
        self._tenant = tenant
        self._api_id = api_id
        self._every_s = every_s
        self._rotated_at = rotated_at
        self._cap = cap
        self._clock = clock
        self._last: dict[tuple[int, str], float] = {}
        scheme = plan.scheme
        self._scheme = {
            "fields": list(scheme.fields),
            "separator": scheme.separator,
            "secret_encoding": scheme.secret_encoding,
            "signature_encoding": scheme.signature_encoding,
            "timestamp_unit": scheme.timestamp_unit,
            "request_id_format": scheme.request_id_format,
        }

    def rejected(
        self,
        status: int,
        parts: signing.RequestParts,
        signed: signing.Signed,
        upstream_date: str | None,
        correction_s: float,
        has_session: bool,
    ) -> None:
        """One refused attempt; logged unless its status and path were just logged, or
        the cap leaves it out."""
        now = self._clock()
        key = (status, parts.path)
        last = self._last.get(key)
        if last is not None and now - last < self._every_s:
            return
        if not self._cap.allow():
            return  # not remembered: the path is explained when the cap allows again
        if len(self._last) >= MAX_REMEMBERED:
            self._last.clear()  # a flood of paths costs the limit, never memory
        self._last[key] = now
        rotated_at = self._rotated_at()
        api_id = self._api_id
        context = signing.Context(api_id, signed.request_id, str(signed.timestamp))
        event = {
            "request_id": signed.request_id,
            "tenant": self._tenant,
            "status": status,
            "path": parts.path,
            "cause": likeliest_cause(
                status,
                self._plan.seconds(signed.timestamp),
                upstream_date,
                None if rotated_at is None else now - rotated_at,
                has_session,
            ),
            "fields": explained_fields(self._plan, parts, context),
            "scheme": self._scheme,
            "api_id": api_id,
            "signed_timestamp": signed.timestamp,
            "upstream_date": upstream_date,
            "clock_correction_s": round(correction_s, 1),
        }
        log.warning("upstream_rejected", **cut(event))
