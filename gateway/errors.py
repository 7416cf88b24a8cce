"""One exception root for every answer the gateway makes itself, and its one translation."""

from __future__ import annotations

import json
import math
from typing import Literal, get_args

from aiohttp import web

# How talking to the upstream failed; a label of aleacc_gateway_upstream_errors_total.
FaultKind = Literal[
    "connect", "connect_timeout", "timeout", "pool_timeout", "reset", "cut", "protocol", "proxy"
]
FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)


class UpstreamFault(Exception):
    """Talking to the upstream failed (the pool's own signal; the proxy answers it).

    ``sent`` says whether any byte of the request may have reached the upstream, and so
    whether a retry is safe; ``retryable`` whether another attempt could fare better.
    """

    def __init__(self, kind: FaultKind, *, sent: bool, reason: str | None = None) -> None:
        """``reason``: why a connection could not be made, in an operator's words (a log's,
        never a label's: egress.connect_reason)."""
        super().__init__(kind)
        self.kind: FaultKind = kind
        self.sent = sent
        self.reason = reason
        # A pool wait that ran out took the whole timeout_s already, and a new attempt
        # would only wait in the same queue again; a forward proxy that failed or refused
        # would do so again.
        self.retryable = not sent and kind not in ("pool_timeout", "proxy")


class GatewayError(Exception):
    """An error answered locally. ``message`` is ours: never exception text or request bytes."""

    status = 500
    code = "internal_error"
    message = "internal error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.message)
        if message is not None:
            self.message = message


class BadRequest(GatewayError):
    status, code, message = 400, "bad_request", "malformed request"


class RouteNotAllowed(GatewayError):
    status, code, message = 404, "route_not_allowed", "this route is not open through the gateway"


class RequestTimeout(GatewayError):
    status, code, message = 408, "request_timeout", "the request body took too long"


class ClientNotAllowed(GatewayError):
    status, code, message = 403, "client_not_allowed", "this client may not use the gateway"


class TenantUnknown(GatewayError):
    status, code, message = 421, "tenant_unknown", "no tenant is configured for this request"


class RateLimited(GatewayError):
    status, code, message = 429, "rate_limited", "too many requests; retry later"

    def __init__(self, scope: str, retry_after_s: float) -> None:
        super().__init__()
        self.scope = scope  # "tenant" or "player": whose bucket is empty
        self.retry_after_s = retry_after_s


class RateLimitStoreUnavailable(GatewayError):
    status, code = 503, "rate_limit_store_unavailable"
    message = "the rate limits cannot be checked now; retry later"


class BodyTooLarge(GatewayError):
    status, code, message = 413, "body_too_large", "request body exceeds the configured limit"


class SigningFailed(GatewayError):
    status, code, message = 500, "signing_failed", "the request could not be signed"

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class UpstreamError(GatewayError):
    """A failure talking to the upstream, answered with 502 or 504."""

    def __init__(self, kind: FaultKind, message: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind


class UpstreamUnavailable(UpstreamError):
    status, code, message = 502, "upstream_unavailable", "the upstream could not be reached"


class UpstreamTimeout(UpstreamError):
    status, code, message = 504, "upstream_timeout", "the upstream did not answer in time"


def error_body(code: str, message: str, request_id: str | None) -> str:
    """The JSON body of every answer the gateway makes itself (docs/observability.md)."""
    return json.dumps({"error": code, "message": message, "request_id": request_id})


def error_response(error: GatewayError, request_id: str | None) -> web.Response:
    """The JSON answer for ``error``."""
    body = error_body(error.code, error.message, request_id)
    response = web.Response(status=error.status, text=body, content_type="application/json")
    if error.status in (400, 408, 413):
        # The rest of the request may still be on the wire, unread: don't reuse the stream.
        response.force_close()
    elif isinstance(error, RateLimited):
        # Whole seconds (RFC 9110 §10.2.3), rounded up: never an invitation to come too soon.
        response.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
    return response
