"""The mock upstream: verifies requests as Aleacc is documented to, serves a tiny player API.

Used by ``demo``, the tests and the benchmark. Everything is in memory.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .. import request_ids, signing
from ..client_ip import parse_address

REPLAY_WINDOW_S = 300
JOURNAL_SIZE = 200
FAULT_HEADER = "X-Mock-Fault"

# The credentials `demo` and the mock upstream use when given no others: those of Aleacc's
# own example header (the secret is the api_id twice, 64 hex characters). Not a real secret.
DEMO_API_ID = "12345678901234567890123456789012"
DEMO_SECRET = DEMO_API_ID.encode() * 2


@dataclass(frozen=True, slots=True)
class Credential:
    """One more api_id the mock upstream accepts (a tenant), with its own secrets and scheme."""

    api_id: str
    secrets: tuple[bytes, ...] = field(repr=False)
    scheme: signing.Scheme = field(default_factory=signing.Scheme)
    request_id_format: str | None = None


@dataclass(frozen=True, slots=True)
class MockSettings:
    """How the mock upstream verifies and behaves."""

    api_id: str = DEMO_API_ID
    # More than one while a rotation is under way: Aleacc accepts old and new for a while.
    # Each as stored (decoded into a key under ``scheme.secret_encoding``).
    secrets: tuple[bytes, ...] = field(default=(DEMO_SECRET,), repr=False)
    scheme: signing.Scheme = field(default_factory=signing.Scheme)
    faults: bool = False
    clock_offset_s: float = 0.0
    base_path: str = ""
    # Accept only request ids of this form (signing.REQUEST_ID_FORMATS); None: any
    # printable token, as Aleacc's own documentation allows.
    request_id_format: str | None = None
    others: tuple[Credential, ...] = ()  # the other tenants' credentials

    def credentials(self) -> tuple[Credential, ...]:
        """Every api_id accepted: the one above first."""
        first = Credential(self.api_id, self.secrets, self.scheme, self.request_id_format)
        return (first, *self.others)


@dataclass(frozen=True, slots=True)
class Seen:
    """One request as the mock upstream received it, and how it answered."""

    method: str
    path: str
    status: int
    error: str | None
    client_ip: str | None
    authorization: str | None
    session_id: str | None
    secret_index: int | None = None  # which of the accepted secrets verified it


@dataclass(slots=True)
class _Player:
    player_id: int
    username: str
    password: str
    balance_cents: int = 10_000


@dataclass(slots=True)
class MockState:
    """Players, sessions, seen request ids and the journal."""

    players: dict[str, _Player] = field(default_factory=dict)
    sessions: dict[str, _Player] = field(default_factory=dict)
    seen_ids: dict[str, float] = field(default_factory=dict)
    received: int = 0  # requests parsed, answered or not
    journal: collections.deque[Seen] = field(
        default_factory=lambda: collections.deque(maxlen=JOURNAL_SIZE)
    )


@dataclass(frozen=True, slots=True)
class Verifier:
    """One api_id's compiled scheme and decoded keys, built once per app."""

    plan: signing.Plan
    keys: tuple[bytes, ...] = field(repr=False)
    request_id_format: str | None = None


SETTINGS = web.AppKey("mock_settings", MockSettings)
STATE = web.AppKey("mock_state", MockState)
VERIFIERS: web.AppKey[dict[str, Verifier]] = web.AppKey("mock_verifiers")
_Api = Callable[[web.Request, bytes], Awaitable[web.Response]]


class Refused(Exception):
    """The mock upstream refuses the request with ``status`` and ``code``."""

    def __init__(self, status: int, code: str, **detail: str) -> None:
        super().__init__(code)
        self.status = status
        self.code = code
        self.detail = detail  # more fields of the JSON body


class NotFound(Refused):
    """No such action below the base path, which the answer names: a gateway whose
    upstream.url has another path gets nothing but this."""

    def __init__(self, base_path: str) -> None:
        super().__init__(404, "not_found", base_path=base_path or "/")


def create_mock_app(settings: MockSettings, state: MockState | None = None) -> web.Application:
    """Build the mock upstream application; ValueError if a scheme or a secret is bad."""
    app = web.Application()
    app[SETTINGS] = settings
    app[VERIFIERS] = {
        c.api_id: Verifier(
            signing.compile_scheme(c.scheme),
            tuple(signing.decode_secret(s, c.scheme.secret_encoding) for s in c.secrets),
            c.request_id_format,
        )
        for c in settings.credentials()
    }
    app[STATE] = state or MockState()
    app.router.add_route("*", "/{tail:.*}", _handle)
    return app


def now(settings: MockSettings) -> float:
    """The mock upstream's clock, offset to simulate an upstream whose time drifted."""
    return time.time() + settings.clock_offset_s


async def _handle(request: web.Request) -> web.StreamResponse:
    settings, state = request.app[SETTINGS], request.app[STATE]
    state.received += 1
    body = await request.read()
    secret_index = None
    try:
        secret_index = verify(request, body, request.app[VERIFIERS], settings, state)
        path = request.path
        if not path.startswith(settings.base_path + "/"):
            raise NotFound(settings.base_path)
        path = path[len(settings.base_path) :]
        route = _ROUTES.get((request.method, path))
        if route is None:
            raise NotFound(settings.base_path)
        api, needs_session = route
        if path.startswith("/player/") and not _client_ip(request):
            raise Refused(401, "missing_client_ip")
        if needs_session and not request.headers.get("X-Player-Session-Id"):
            raise Refused(401, "missing_session_id")
        faults = _faults(request, settings)
        if "delay" in faults:
            await asyncio.sleep(faults["delay"])
        if "reset" in faults:
            _record(request, 0, "reset", secret_index)
            _abort(request)
            return web.Response()
        if "status" in faults:
            raise Refused(int(faults["status"]), "injected")
        response = await api(request, body)
        if "cut" in faults:
            return await _cut(request, response, secret_index)
    except Refused as exc:
        response = _json({"error": exc.code, **exc.detail}, exc.status)
    _record(request, response.status, _error_of(response), secret_index)
    response.headers["Date"] = email.utils.formatdate(now(settings), usegmt=True)
    return response


def verify(
    request: web.Request,
    body: bytes,
    verifiers: dict[str, Verifier],
    settings: MockSettings,
    state: MockState,
) -> int:
    """Which accepted secret signed the request; Refused unless valid, fresh, unreplayed."""
    header = request.headers.get("Authorization")
    if header is None:
        raise Refused(401, "missing_authorization")
    auth = signing.parse_authorization(header)
    if auth is None:
        raise Refused(403, "malformed_authorization")
    verifier = verifiers.get(auth.api_id)
    if verifier is None:
        raise Refused(403, "unknown_api_id")
    if verifier.request_id_format and (
        request_ids.form_of(auth.request_id) != verifier.request_id_format
    ):
        raise Refused(403, "malformed_request_id")
    clock = now(settings)
    if abs(clock - verifier.plan.seconds(auth.timestamp)) > REPLAY_WINDOW_S:
        raise Refused(403, "timestamp_out_of_window")
    parts = signing.RequestParts(
        method=request.method,
        scheme=request.scheme,
        host=request.headers.get("Host", ""),
        path_and_query=request.raw_path,
        headers=request.headers,
        body=body,
        base_path=settings.base_path,  # what it is deployed under: not the caller's
    )
    index = next(
        (i for i, key in enumerate(verifier.keys) if verifier.plan.verify(parts, key, auth)),
        None,
    )
    if index is None:
        raise Refused(403, "invalid_signature")
    _forget_expired(state, clock)
    if auth.request_id in state.seen_ids:
        raise Refused(403, "replayed_request_id")
    state.seen_ids[auth.request_id] = clock
    return index


def _forget_expired(state: MockState, clock: float) -> None:
    # Ids older than the window cannot be replayed anyway: their timestamp is refused.
    expired = [rid for rid, seen in state.seen_ids.items() if clock - seen > REPLAY_WINDOW_S]
    for rid in expired:
        del state.seen_ids[rid]


def _client_ip(request: web.Request) -> str | None:
    value = request.headers.get("X-Client-Ip")
    return value if value and parse_address(value) is not None else None


def _faults(request: web.Request, settings: MockSettings) -> dict[str, float]:
    """Parse ``X-Mock-Fault: delay=0.5,status=500,cut,reset`` when faults are enabled."""
    if not settings.faults:
        return {}
    spec = request.headers.get(FAULT_HEADER, "")
    faults = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, value = item.partition("=")
        try:
            faults[name] = float(value or 0)
        except ValueError:
            raise Refused(400, "invalid_fault") from None
        if name not in ("delay", "status", "cut", "reset") or (
            name == "status" and not 200 <= faults[name] <= 599
        ):
            raise Refused(400, "invalid_fault")
    return faults


async def _cut(
    request: web.Request, response: web.Response, secret_index: int
) -> web.StreamResponse:
    """Promise the whole body, send half of it, then drop the connection."""
    body = response.body
    assert isinstance(body, bytes)  # noqa: S101 - our own JSON answers
    cut = web.StreamResponse(status=response.status, headers={"Content-Type": "application/json"})
    cut.content_length = len(body) + 100
    await cut.prepare(request)
    await cut.write(body[: len(body) // 2])
    _record(request, response.status, "cut", secret_index)
    _abort(request)
    return cut


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


def _record(request: web.Request, status: int, error: str | None, secret_index: int | None) -> None:
    request.app[STATE].journal.append(
        Seen(
            method=request.method,
            path=request.raw_path,
            status=status,
            error=error,
            client_ip=request.headers.get("X-Client-Ip"),
            authorization=request.headers.get("Authorization"),
            session_id=request.headers.get("X-Player-Session-Id"),
            secret_index=secret_index,
        )
    )


def _error_of(response: web.Response) -> str | None:
    if response.status < 400 or not isinstance(response.body, bytes):
        return None
    return str(json.loads(response.body).get("error"))


def _json(data: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def _credentials(body: bytes) -> tuple[str, str]:
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise Refused(400, "invalid_json") from None
    username, password = data.get("username"), data.get("password")
    if not isinstance(username, str) or not isinstance(password, str) or not username:
        raise Refused(400, "username_and_password_required")
    return username, password


def _session(request: web.Request) -> _Player:
    player = request.app[STATE].sessions.get(request.headers["X-Player-Session-Id"])
    if player is None:
        raise Refused(401, "invalid_session")
    return player


async def _signup(request: web.Request, body: bytes) -> web.Response:
    username, password = _credentials(body)
    players = request.app[STATE].players
    if username in players:
        raise Refused(409, "username_taken")
    player = _Player(len(players) + 1, username, password)
    players[username] = player
    return _json({"player_id": player.player_id, "username": username}, 201)


async def _signin(request: web.Request, body: bytes) -> web.Response:
    username, password = _credentials(body)
    state = request.app[STATE]
    player = state.players.get(username)
    if player is None or not secrets.compare_digest(player.password, password):
        raise Refused(400, "invalid_credentials")
    session_id = secrets.token_hex(16)
    state.sessions[session_id] = player
    return _json({"player_id": player.player_id, "session_id": session_id})


async def _signout(request: web.Request, body: bytes) -> web.Response:
    _session(request)
    del request.app[STATE].sessions[request.headers["X-Player-Session-Id"]]
    return _json({"signed_out": True})


async def _balance(request: web.Request, body: bytes) -> web.Response:
    player = _session(request)
    cents = player.balance_cents
    return _json({"player_id": player.player_id, "balance": f"{cents // 100}.{cents % 100:02d}"})


async def _echo(request: web.Request, body: bytes) -> web.Response:
    """What the mock upstream received, for tests and the benchmark (not an Aleacc method)."""
    return _json(
        {
            "method": request.method,
            "path": request.raw_path,
            "client_ip": request.headers.get("X-Client-Ip"),
            "body_bytes": len(body),
        }
    )


# (method, path) -> (handler, needs a player session)
_ROUTES: dict[tuple[str, str], tuple[_Api, bool]] = {
    ("POST", "/player/signup"): (_signup, False),
    ("POST", "/player/signin"): (_signin, False),
    ("POST", "/player/signout"): (_signout, True),
    ("GET", "/player/balance"): (_balance, True),
    **{(method, "/echo"): (_echo, False) for method in ("GET", "POST", "PUT", "DELETE")},
}


def journal(app: web.Application) -> Sequence[Seen]:
    """The last requests the mock upstream received, oldest first."""
    return tuple(app[STATE].journal)
