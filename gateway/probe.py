"""``aleacc-gateway probe``: try candidate schemes against the upstream, best first.

Online and bounded: one request per candidate, to the configured upstream only, at most
``--max-requests`` of them, ``--interval-s`` apart; it stops at the first answer that is
not 403 (Aleacc's answer to a bad signature) and prints that scheme's TOML.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from . import signing
from .candidates import CANDIDATES
from .config import ConfigError, Settings, load_settings
from .forwarding import upstream_path_and_query
from .secret import SecretUnavailable, read_secret

FOUND, NONE = 0, 1
DEFAULT_CLIENT_IP = "192.0.2.1"  # RFC 5737 documentation address: no real player's


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``probe`` subcommand's arguments."""
    probe = commands.add_parser(
        "probe",
        help="find the signing scheme by asking the upstream (sends requests)",
        description="Send one request per candidate scheme, best first, to the configured "
        "upstream; stop at the first answer that is not 403.",
    )
    probe.add_argument("--config", type=Path, required=True)
    probe.add_argument("--path", required=True, help="a harmless path, e.g. /player/balance")
    probe.add_argument("--method", default="GET", help="default: GET")
    probe.add_argument("--max-requests", type=int, default=16, help="default: 16")
    probe.add_argument("--interval-s", type=float, default=1.0, help="pause between requests")
    probe.add_argument("--session-id", help="send X-Player-Session-Id, to place it too")
    probe.add_argument("--client-ip", default=DEFAULT_CLIENT_IP,
                       help=f"X-Client-Ip to send (default: {DEFAULT_CLIENT_IP})")  # fmt: skip
    probe.add_argument("--data", help="a body to send (none by default)")
    probe.set_defaults(run=run)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One candidate tried: its label and the upstream's status."""

    label: str
    status: int


def run(args: argparse.Namespace) -> int:
    """The command: 0 found, 1 none (or bad input, said in one line)."""
    if not 1 <= args.max_requests <= 100 or not 0 <= args.interval_s <= 60:
        print("probe: --max-requests must be 1-100 and --interval-s 0-60", file=sys.stderr)
        return NONE
    if not args.path.startswith("/"):
        print(f"probe: --path {args.path!r} must start with /", file=sys.stderr)
        return NONE
    try:
        settings = load_settings(args.config)
        secret = read_secret(settings.signing)
    except ConfigError as exc:
        print(f"probe: {args.config}: " + "; ".join(exc.problems), file=sys.stderr)
        return NONE
    except SecretUnavailable as exc:
        print(f"probe: {exc}", file=sys.stderr)
        return NONE
    return asyncio.run(_probe(settings, secret, args))


async def _probe(settings: Settings, secret: bytes, args: argparse.Namespace) -> int:
    upstream = settings.upstream
    target = upstream_path_and_query(upstream.base_path, args.path)
    url = URL(f"{upstream.url.scheme}://{upstream.host_header}{target}", encoded=True)
    budget = min(args.max_requests, len(CANDIDATES))
    print(
        f"probe: up to {budget} {args.method.upper()} request(s) to {url}, one per candidate "
        f"scheme, {args.interval_s:g} s apart; stops at the first answer that is not 403"
    )
    tried: list[Attempt] = []
    timeout = aiohttp.ClientTimeout(
        total=upstream.timeout_s, sock_connect=upstream.connect_timeout_s
    )
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as client:
        for number, (label, scheme) in enumerate(CANDIDATES[:budget], 1):
            try:
                key = signing.decode_secret(secret, scheme.secret_encoding)
            except ValueError:
                print(f"{number:3}. {label}: skipped (the secret is not {scheme.secret_encoding})")
                continue
            if tried and args.interval_s:
                await asyncio.sleep(args.interval_s)
            try:
                status = await _send(client, url, target, settings, scheme, key, args)
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = type(exc).__name__ if isinstance(exc, TimeoutError) else exc
                print(f"probe: {url}: no answer ({reason})", file=sys.stderr)
                break
            tried.append(Attempt(label, status))
            print(f"{number:3}. {label}: {status}")
            if status != 403:
                print(f"\nAccepted (status {status}, not 403):\n\n{scheme.toml()}")
                return FOUND
    print(
        f"probe: none of the {len(tried)} scheme(s) tried was accepted; see above.",
        file=sys.stderr,
    )
    return NONE


async def _send(
    client: aiohttp.ClientSession,
    url: URL,
    target: str,
    settings: Settings,
    scheme: signing.Scheme,
    key: bytes,
    args: argparse.Namespace,
) -> int:
    """Sign one request as the gateway would (fresh request id and time) and send it."""
    body = (args.data or "").encode()
    headers: CIMultiDict[str] = CIMultiDict({"X-Client-Ip": args.client_ip})
    if args.session_id:
        headers["X-Player-Session-Id"] = args.session_id
    if body:
        headers["Content-Type"] = "application/json"
    parts = signing.RequestParts(
        method=args.method.upper(),
        scheme=url.scheme,
        host=settings.upstream.host_header,
        path_and_query=target,
        headers=headers,
        body=body,
    )
    plan = signing.compile_scheme(scheme)
    credentials = signing.Credentials(settings.signing.api_id, key)
    signed = plan.sign(parts, credentials, signing.new_request_id(), plan.timestamp(time.time()))
    headers["Authorization"] = signed.authorization
    async with client.request(
        parts.method, url, headers=headers, data=body or None, allow_redirects=False
    ) as response:
        await response.read()
        return response.status
