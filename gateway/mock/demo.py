"""``aleacc-gateway demo``: the mock upstream and the gateway on loopback, one player's
walk, and a second brand (a tenant) signed with its own credential."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from .. import signing
from ..client_ip import parse_network
from ..config import (
    ClientIpSettings,
    ListenAddress,
    ServerSettings,
    Settings,
    SigningSettings,
    TenantSettings,
    UpstreamSettings,
)
from ..server import GatewayServer, bind
from .upstream import (
    DEMO_API_ID,
    DEMO_SECRET,
    Credential,
    MockSettings,
    Seen,
    create_mock_app,
    journal,
)

LOOPBACK_ANY_PORT = ListenAddress("127.0.0.1", 0)
SECRET_ENV = "ALEACC_DEMO_SECRET"  # noqa: S105 - the variable's name, not a secret
PLAYER_IP = "203.0.113.7"
# The player's address, then the in-cluster ingress that added it: the gateway trusts
# 10.0.0.0/8 and loopback, so walking from the right it skips both hops and finds the player.
FORWARDED_FOR = f"{PLAYER_IP}, 10.0.0.5"
PLAYER = {"username": "demo-player", "password": "correct horse battery staple"}
WRONG_SECRET = "ab" * 32
# A second brand, chosen by the Host its frontends call (docs/tenants.md).
BRAND_B = TenantSettings(
    name="brand-b",
    api_id="b" * 32,
    secret_env="ALEACC_DEMO_BRAND_B_SECRET",  # noqa: S106 - the variable's name
    hosts=frozenset({"brand-b.demo"}),
)
BRAND_B_SECRET = b"cd" * 32


@dataclass(frozen=True, slots=True)
class Step:
    """One request of the walk and what it must answer."""

    label: str
    method: str
    path: str
    expect: int
    body: dict[str, str] | None = None
    with_session: bool = True
    host: str | None = None  # the Host header, where it chooses a tenant


def demo_settings(upstream: URL) -> Settings:
    """Gateway settings for the demo: everything on loopback, the secret from a variable."""
    return Settings(
        server=ServerSettings(listen=LOOPBACK_ANY_PORT, admin_listen=LOOPBACK_ANY_PORT),
        upstream=UpstreamSettings(url=upstream, connect_timeout_s=2, timeout_s=5),
        signing=SigningSettings(api_id=DEMO_API_ID, secret_env=SECRET_ENV),
        tenants=(BRAND_B,),
        client_ip=ClientIpSettings(
            trusted_proxies=tuple(map(parse_network, ("127.0.0.0/8", "::1/128", "10.0.0.0/8")))
        ),
    )


async def run_demo(out: Callable[[str], None] = print, log: io.StringIO | None = None) -> int:
    """Run the walk; 0 when every step answered as expected. ``log``: the gateway's
    JSON log lines, to show how it explained each refusal."""
    brand_b = Credential(BRAND_B.api_id, (BRAND_B_SECRET,))
    mock_app = create_mock_app(MockSettings(base_path="/api", others=(brand_b,)))
    mock_runner = web.AppRunner(mock_app, access_log=None)
    await mock_runner.setup()
    mock_sock = bind(LOOPBACK_ANY_PORT)
    await web.SockSite(mock_runner, mock_sock).start()
    upstream = URL(f"http://127.0.0.1:{mock_sock.getsockname()[1]}/api")
    assert BRAND_B.secret_env is not None  # noqa: S101 - set above
    environ = {SECRET_ENV: DEMO_SECRET.decode(), BRAND_B.secret_env: BRAND_B_SECRET.decode()}
    gateway = GatewayServer(demo_settings(upstream), environ=environ)
    bound = await gateway.start()
    base = URL(f"http://127.0.0.1:{bound.proxy[1]}")
    out(f"mock upstream  {upstream}")
    out(f"gateway          {base}   (admin http://127.0.0.1:{bound.admin[1]})")
    out(f"frontend sends   X-Forwarded-For: {FORWARDED_FOR}   (unsigned)")
    out("")
    failures = 0
    try:
        async with aiohttp.ClientSession(base) as client:
            walk = [
                Step("sign up", "POST", "/player/signup", 201, PLAYER, with_session=False),
                Step("sign in", "POST", "/player/signin", 200, PLAYER, with_session=False),
                Step("balance (session method)", "GET", "/player/balance", 200),
                Step("sign out", "POST", "/player/signout", 200),
            ]
            session_id = ""
            for number, step in enumerate(walk, 1):
                status, data = await _call(client, step, session_id)
                session_id = str(data.get("session_id", session_id))
                failures += _report(out, number, step, status, journal(mock_app)[-1])
            out("")
            out("How step 2 was signed (the mock upstream computed the same string and key):")
            for line in _explain(walk[1], journal(mock_app)[1], upstream):
                out(f"  {line}")
            out("")
            out("Deliberate failures, so each kind is seen:")
            no_session = Step("balance without X-Player-Session-Id", "GET", "/player/balance", 401)
            status, _ = await _call(client, no_session, "")
            failures += _report(out, 5, no_session, status, journal(mock_app)[-1])
            _explained(out, log)
            failures += await _replay(out, upstream, journal(mock_app)[2])
            # A rotation that put the wrong secret in place: Aleacc answers 403.
            environ[SECRET_ENV] = WRONG_SECRET
            gateway.reload_secrets()
            wrong = Step(
                "balance, after a wrong secret was rotated in", "GET", "/player/balance", 403
            )
            status, _ = await _call(client, wrong, "")
            failures += _report(out, 7, wrong, status, journal(mock_app)[-1])
            _explained(out, log)
            out("")
            out("A second brand in the same gateway, chosen by the Host its frontend calls:")
            other = Step(
                "echo as brand-b, its own credential (step 7 left it alone)",
                "GET",
                "/echo",
                200,
                with_session=False,
                host="brand-b.demo",
            )
            status, _ = await _call(client, other, "")
            failures += _report(out, 8, other, status, journal(mock_app)[-1])
            out("")
            out("From the gateway's own /metrics:")
            metrics_url = URL(f"http://127.0.0.1:{bound.admin[1]}/metrics")
            async with client.get(metrics_url) as response:
                for line in metrics_summary(await response.text()):
                    out(f"  {line}")
    finally:
        await gateway.stop()
        await mock_runner.cleanup()
    out("")
    out("demo ok" if not failures else f"demo FAILED: {failures} step(s) answered unexpectedly")
    return 0 if not failures else 1


async def _call(
    client: aiohttp.ClientSession, step: Step, session_id: str
) -> tuple[int, dict[str, object]]:
    headers = {"X-Forwarded-For": FORWARDED_FOR}
    if step.host:
        headers["Host"] = step.host
    if step.with_session and session_id:
        headers["X-Player-Session-Id"] = session_id
    body = _body(step)
    if body is not None:
        headers["Content-Type"] = "application/json"
    async with client.request(step.method, step.path, data=body, headers=headers) as response:
        return response.status, await response.json()


async def _replay(out: Callable[[str], None], upstream: URL, original: Seen) -> int:
    """Send a captured signed request straight to Aleacc again: it must refuse it."""
    headers = {
        "Authorization": original.authorization or "",
        "X-Client-Ip": original.client_ip or "",
        "X-Player-Session-Id": original.session_id or "",
    }
    step = Step("replay of step 3, sent straight to Aleacc", "GET", "/player/balance", 403)
    async with (
        aiohttp.ClientSession() as direct,
        direct.get(upstream.with_path(upstream.path + step.path), headers=headers) as response,
    ):
        status = response.status
        error = (await response.json()).get("error")
    mark = "ok" if status == step.expect else f"UNEXPECTED (wanted {step.expect})"
    out(f" 6. {step.method:4} {step.path:<18} {step.label}")
    out(f"    -> {status} {error}   {mark}")
    return 0 if status == step.expect else 1


def _explain(step: Step, seen: Seen, upstream: URL) -> list[str]:
    """The string to sign of a request the mock upstream accepted (as ``sign --explain``)."""
    auth = signing.parse_authorization(seen.authorization or "")
    if auth is None:
        return ["(no amx Authorization reached the mock upstream)"]
    parts = signing.RequestParts(
        method=step.method,
        scheme=upstream.scheme,
        host=upstream.raw_authority,
        path_and_query=seen.path,
        headers={"X-Client-Ip": seen.client_ip or ""},
        body=_body(step) or b"",
    )
    plan = signing.compile_scheme(signing.Scheme())  # the demo signs with the default
    context = signing.Context(auth.api_id, auth.request_id, str(auth.timestamp))
    key = bytes.fromhex(DEMO_SECRET.decode())
    same = plan.signature(key, plan.string_to_sign(parts, context)) == auth.signature
    check = "the signature in its header" if same else "NOT the signature in its header"
    return [
        *plan.explain(parts, context),
        "joined by \\n, HMAC-SHA256 keyed with the hex-decoded secret, base64:",
        f"{auth.signature[:6]}..., {check}",
    ]


def _body(step: Step) -> bytes | None:
    return json.dumps(step.body).encode() if step.body is not None else None


def _report(out: Callable[[str], None], number: int, step: Step, status: int, seen: Seen) -> int:
    mark = "ok" if status == step.expect else f"UNEXPECTED (wanted {step.expect})"
    out(f"{number:2}. {step.method:4} {step.path:<18} {step.label}")
    detail = f"    -> {status} {seen.error or ''}".rstrip()
    out(f"{detail}   upstream saw X-Client-Ip {seen.client_ip}   {mark}")
    out(f"       Authorization: {_shorten(seen.authorization)}")
    return 0 if status == step.expect else 1


def _explained(out: Callable[[str], None], log: io.StringIO | None) -> None:
    """The cause the gateway's last upstream_rejected event gave, if there is a log."""
    if log is None:
        return
    events = [json.loads(line) for line in log.getvalue().splitlines() if line.startswith("{")]
    rejected = [e for e in events if e.get("event") == "upstream_rejected"]
    if rejected:
        cause = rejected[-1]["cause"]
        out(f"       the gateway's log explains it: upstream_rejected, cause {cause}")


def metrics_summary(exposition: str) -> list[str]:
    """A few lines drawn from Prometheus text: answers, upstream 401/403, signing failures."""
    answers: dict[str, float] = {}
    upstream: dict[str, float] = {}
    signing_failures = 0.0
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "aleacc_gateway_requests_total":
                status = sample.labels["status"]
                answers[status] = answers.get(status, 0) + sample.value
            elif sample.name == "aleacc_gateway_upstream_responses_total":
                status = sample.labels["status"]
                upstream[status] = upstream.get(status, 0) + sample.value
            elif sample.name == "aleacc_gateway_signing_failures_total":
                signing_failures += sample.value
    by_status = ", ".join(f"{status}: {n:.0f}" for status, n in sorted(answers.items()))
    return [
        f"requests answered {sum(answers.values()):.0f} ({by_status})",
        f"upstream 401s {upstream.get('401', 0):.0f}, upstream 403s {upstream.get('403', 0):.0f}",
        f"signing failures {signing_failures:.0f}",
    ]


def _shorten(header: str | None) -> str:
    """``amx id:signature:request_id:ts`` with the signature and id cut short."""
    if not header:
        return "(none)"
    scheme, _, value = header.partition(" ")
    api_id, sig, request_id, ts = value.split(":")
    return f"{scheme} {api_id}:{sig[:6]}...:{request_id[:8]}...:{ts}"
