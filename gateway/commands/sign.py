"""``aleacc-gateway sign``: sign one request offline and print the header."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from multidict import CIMultiDict
from yarl import URL

from .. import request_ids, signing
from ..config import DEFAULT_TENANT, TenantSettings
from ..forwarding import base_path, host_header, upstream_path_and_query
from ..secret import SecretError, load_key
from .common import Commands, config_tenant, parse_toml_string


def add_parser(commands: Commands) -> None:
    """The ``sign`` subcommand's arguments."""
    sign = commands.add_parser("sign", help="sign one request offline and print the header")
    sign.add_argument("method")
    sign.add_argument(
        "url",
        help="the upstream URL, e.g. https://aleacc.example.com/api/x?a=1; with --config, "
        "a target such as /player/balance?a=1 below its upstream.url",
    )
    sign.add_argument("--config", type=Path, help="take api_id, secret and scheme from here")
    sign.add_argument(
        "--tenant", metavar="NAME", help="with --config: this tenant's (default: [signing]'s)"
    )
    sign.add_argument("--api-id", help="instead of --config")
    source = sign.add_mutually_exclusive_group()
    source.add_argument("--secret-file", type=Path, help="instead of --config")
    source.add_argument("--secret-env", help="instead of --config: variable holding the secret")
    scheme = sign.add_argument_group("scheme (each overrides --config or the default)")
    scheme.add_argument("--fields", help="comma-separated field expressions")
    scheme.add_argument("--separator", help="as in a TOML string: '\\n' is a newline")
    scheme.add_argument("--secret-encoding", choices=signing.SECRET_ENCODINGS)
    scheme.add_argument("--signature-encoding", choices=signing.SIGNATURE_ENCODINGS)
    scheme.add_argument("--timestamp-unit", choices=signing.TIMESTAMP_UNITS)
    scheme.add_argument(
        "--request-id-format",
        choices=signing.REQUEST_ID_FORMATS,
        help="the form of a fresh request id (without --request-id)",
    )
    body = sign.add_mutually_exclusive_group()
    body.add_argument("--body-file", type=Path)
    body.add_argument("--data", help="the body as text")
    sign.add_argument(
        "-H", "--header", action="append", default=[], help="'Name: value', repeatable"
    )
    sign.add_argument(
        "--base-path",
        help="the part of the URL's path that is the upstream's own, as in upstream.url "
        "(default: --config's, else none); the incoming_* fields sign what follows it",
    )
    sign.add_argument("--request-id", help="default: a fresh random one")
    sign.add_argument("--timestamp", type=int, help="default: now")
    sign.add_argument("--explain", action="store_true", help="also print the string to sign")
    sign.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the Authorization header (and with --explain the string to sign); 2 for bad input."""
    try:
        api_id, key, plan, upstream = _signing_inputs(args)
        url = _absolute(args.url, upstream)
        headers: CIMultiDict[str] = CIMultiDict()
        for line in args.header:
            name, sep, value = line.partition(":")
            if not sep or not name.strip():
                raise ValueError(f"-H {line!r}: expected 'Name: value'")
            headers.add(name.strip(), value.strip())
        body = args.body_file.read_bytes() if args.body_file else (args.data or "").encode()
    except OSError as exc:
        print(f"sign: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    except (ValueError, SecretError) as exc:
        print(f"sign: {exc}", file=sys.stderr)
        return 2
    query = url.raw_query_string
    config_base = base_path(upstream) if upstream is not None else ""
    base = (args.base_path if args.base_path is not None else config_base).rstrip("/")
    parts = signing.RequestParts(
        method=args.method.upper(),
        scheme=url.scheme,
        host=url.raw_authority,
        path_and_query=(url.raw_path or "/") + (f"?{query}" if query else ""),
        headers=headers,
        body=body,
        base_path=base if (url.raw_path or "/").startswith(base + "/") else "",
    )
    request_id = args.request_id or request_ids.MAKERS[plan.scheme.request_id_format]()
    timestamp = args.timestamp if args.timestamp is not None else plan.timestamp(time.time())
    signed = plan.sign(parts, signing.Credentials(api_id, key), request_id, timestamp)
    if args.explain:
        print("string to sign, one field per line (escaped):")
        context = signing.Context(api_id, request_id, str(timestamp))
        for line in plan.explain(parts, context):
            print(f"  {line}")
        separator = repr(plan.scheme.separator)[1:-1]
        print(f'  ({len(signed.string_to_sign)} bytes, fields joined by "{separator}")')
    print(f"Authorization: {signed.authorization}")
    return 0


def _absolute(target: str, upstream: URL | None) -> URL:
    """The URL to sign: ``target`` itself, or a target below the config's upstream URL
    (as the gateway would send a request for it)."""
    if target.startswith("/") and upstream is not None:
        path_and_query = upstream_path_and_query(base_path(upstream), target)
        return URL(f"{upstream.scheme}://{host_header(upstream)}{path_and_query}", encoded=True)
    url = URL(target, encoded=True)
    if url.scheme not in ("http", "https") or not url.raw_host:
        where = " (a target like /player/balance needs --config)" if target.startswith("/") else ""
        raise ValueError(f"{target!r} is not an absolute http(s) URL{where}")
    return url


def _signing_inputs(
    args: argparse.Namespace,
) -> tuple[str, bytes, signing.Plan, URL | None]:
    """The api_id, the key, the compiled scheme and the config's upstream URL (the
    tenant's; None without --config)."""
    upstream = None
    if args.config is not None:
        settings, sign = config_tenant(args.config, args.tenant)
        upstream = settings.upstream_of(sign)
    elif args.tenant is not None:
        raise ValueError("--tenant needs --config")
    elif args.api_id and (args.secret_file or args.secret_env):
        sign = TenantSettings(
            name=DEFAULT_TENANT,
            api_id=args.api_id,
            secret_file=args.secret_file,
            secret_env=args.secret_env,
        )
    else:
        raise ValueError("give --config, or --api-id with --secret-file or --secret-env")
    overrides: dict[str, Any] = {}
    if args.fields:
        overrides["fields"] = tuple(f.strip() for f in args.fields.split(","))
    if args.separator is not None:
        overrides["separator"] = parse_toml_string(args.separator, "--separator")
    for name in ("secret_encoding", "signature_encoding", "timestamp_unit", "request_id_format"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    sign = dataclasses.replace(sign, scheme=dataclasses.replace(sign.scheme, **overrides))
    plan = signing.compile_scheme(sign.scheme)  # SchemeError is a ValueError
    return sign.api_id, load_key(sign), plan, upstream
