"""The online search: candidate schemes tried against the upstream, best first.

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

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from .. import request_ids, signing
from ..config import Settings, TenantSettings
from ..forwarding import base_path, host_header, upstream_path_and_query
from ..toml_writer import signing_table
from .candidates import CANDIDATES, INCOMING_LABEL

FOUND, NONE = 0, 1
DEFAULT_CLIENT_IP = "192.0.2.1"  # RFC 5737 documentation address: no real player's


@dataclass(frozen=True, slots=True)
class Attempt:
    """One candidate tried: its label and the upstream's status."""

    label: str
    status: int


@dataclass(frozen=True, slots=True)
class Target:
    """The tenant probed for: its api_id and where its requests go."""

    api_id: str
    scheme: str
    host: str
    base_path: str


async def probe(
    settings: Settings, tenant: TenantSettings, secret: bytes, args: argparse.Namespace
) -> int:
    """Try the candidates in turn, printing each answer; FOUND at the first accepted."""
    upstream = settings.upstream
    base = settings.upstream_of(tenant)
    to = Target(tenant.api_id, base.scheme, host_header(base), base_path(base))
    target = upstream_path_and_query(to.base_path, args.path)
    url = URL(f"{to.scheme}://{to.host}{target}", encoded=True)
    # Without a base path the incoming path is the whole path: that candidate is the default.
    candidates = [c for c in CANDIDATES if to.base_path or c[0] != INCOMING_LABEL]
    budget = min(args.max_requests, len(candidates))
    print(
        f"probe: up to {budget} {args.method.upper()} request(s) to {url}, one per candidate "
        f"scheme, {args.interval_s:g} s apart; stops at the first answer that is not 403"
    )
    tried: list[Attempt] = []
    timeout = aiohttp.ClientTimeout(
        total=upstream.timeout_s, sock_connect=upstream.connect_timeout_s
    )
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as client:
        for number, (label, scheme) in enumerate(candidates[:budget], 1):
            try:
                key = signing.decode_secret(secret, scheme.secret_encoding)
            except ValueError:
                print(f"{number:3}. {label}: skipped (the secret is not {scheme.secret_encoding})")
                continue
            if tried and args.interval_s:
                await asyncio.sleep(args.interval_s)
            try:
                status = await _send(client, url, target, to, scheme, key, args)
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = type(exc).__name__ if isinstance(exc, TimeoutError) else exc
                print(f"probe: {url}: no answer ({reason})", file=sys.stderr)
                break
            tried.append(Attempt(label, status))
            print(f"{number:3}. {label}: {status}")
            if status != 403:
                print(f"\nAccepted (status {status}, not 403):\n\n{signing_table(scheme)}")
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
    to: Target,
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
        host=to.host,
        path_and_query=target,
        base_path=to.base_path,
        headers=headers,
        body=body,
    )
    plan = signing.compile_scheme(scheme)
    credentials = signing.Credentials(to.api_id, key)
    request_id = request_ids.MAKERS[scheme.request_id_format]()
    signed = plan.sign(parts, credentials, request_id, plan.timestamp(time.time()))
    headers["Authorization"] = signed.authorization
    async with client.request(
        parts.method, url, headers=headers, data=body or None, allow_redirects=False
    ) as response:
        await response.read()
        return response.status
