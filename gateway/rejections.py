"""Why Aleacc refused a request: one ``upstream_rejected`` event per status and path
every ``logging.explain_rejections_every_s``.

A 401 or 403 from Aleacc says nothing about its cause. The event shows what the gateway
signed (the fields as ``sign --explain`` shows them, with the player's session as its
tag and the body as its length and SHA-256), the scheme, the clock correction in use,
and the likeliest cause the gateway can tell from what it knows: ``clock``,
``secret_rotated``, ``missing_header`` or ``signature``. Never the secret or a signature.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Literal

import structlog

from . import signing
from .logs import session_tag
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


class RejectionLog:
    """Writes ``upstream_rejected``, at most once per (status, path) every ``every_s``."""

    def __init__(
        self,
        plan: signing.Plan,
        every_s: float,
        rotated_at: Callable[[], float | None],
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
        """One refused attempt; logged unless its status and path were just logged."""
        now = self._clock()
        key = (status, parts.path)
        last = self._last.get(key)
        if last is not None and now - last < self._every_s:
            return
        if len(self._last) >= MAX_REMEMBERED:
            self._last.clear()  # a flood of paths costs the limit, never memory
        self._last[key] = now
        rotated_at = self._rotated_at()
        api_id = self._api_id
        context = signing.Context(api_id, signed.request_id, str(signed.timestamp))
        log.warning(
            "upstream_rejected",
            request_id=signed.request_id,
            tenant=self._tenant,
            status=status,
            path=parts.path,
            cause=likeliest_cause(
                status,
                self._plan.seconds(signed.timestamp),
                upstream_date,
                None if rotated_at is None else now - rotated_at,
                has_session,
            ),
            fields=explained_fields(self._plan, parts, context),
            scheme=self._scheme,
            api_id=api_id,
            signed_timestamp=signed.timestamp,
            upstream_date=upstream_date,
            clock_correction_s=round(correction_s, 1),
        )
