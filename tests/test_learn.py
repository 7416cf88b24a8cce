"""learn and probe end to end: the stand-in runs a scheme, the reference signer (written
from docs/signing.md, not gateway.signing) makes requests it accepts, learn or probe finds the
scheme, and a gateway configured with it is accepted on requests never seen."""

from __future__ import annotations

import shlex
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from gateway import signing
from gateway.config import SigningSettings
from gateway.discover import candidates
from gateway.discover import learn as learning
from gateway.discover.samples import parse_curl
from gateway.mock.upstream import DEMO_API_ID, DEMO_SECRET, MockSettings, create_mock_app, journal

from . import reference
from .reference import RefRequest, RefScheme
from .support import (
    SECRET_ENV,
    StartGateway,
    remember_sensitive,
    run_cli,
    serve_app,
    settings_for,
)

REPO = Path(__file__).parent.parent
IP = "203.0.113.7"
SESSION = "9c3e51d0a7f24b6e8d1c0b2a3f4e5d6c"
SIGNIN = b'{\n  "Username": "demo-player",\n  "Password": "pw"\n}'
CLASSIC = RefScheme(
    fields=("api_id", "method", "url|lower|urlencode", "timestamp", "request_id",
            "body|md5|base64"),
    separator="", secret_encoding="base64",
)  # fmt: skip
CLASSIC_SECRET = b"a2F0LXNlY3JldC1mb3ItdGVzdHM="


def gateway_scheme(scheme: RefScheme) -> signing.Scheme:
    return signing.Scheme(
        scheme.fields,
        scheme.separator,
        scheme.secret_encoding,
        scheme.signature_encoding,
        scheme.timestamp_unit,
    )


def as_curl(request: RefRequest) -> str:
    """The request as a browser's "Copy as cURL" would write it."""
    words = ["curl", shlex.quote(request.url), "-X", request.method]
    for name, value in request.headers.items():
        words += ["-H", shlex.quote(f"{name}: {value}")]
    if request.body:
        body = request.body.decode().replace("\\", "\\\\").replace("'", "\\'")
        words += ["--data-raw", "$'" + body.replace("\n", "\\n") + "'"]
    lines = [" ".join(words[i : i + 2]) for i in range(0, len(words), 2)]
    return " \\\n  ".join(lines)


class StandIn:
    """The stand-in verifying ``scheme``, and accepted samples signed by the reference."""

    def __init__(self, scheme: RefScheme, secret: bytes, decimal_ids: bool = False) -> None:
        """``decimal_ids``: the samples carry integer ids, and only those are accepted."""
        self.scheme, self.secret, self.decimal_ids = scheme, secret, decimal_ids
        self.app = create_mock_app(
            MockSettings(
                secrets=(secret,),
                scheme=gateway_scheme(scheme),
                base_path="/api",
                request_id_format="decimal" if decimal_ids else None,
            )
        )

    async def __aenter__(self) -> StandIn:
        self.runner, self.url = await serve_app(self.app)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for seen in journal(self.app):
            remember_sensitive(seen.authorization, seen.session_id)
        await self.runner.cleanup()

    async def accepted_sample(
        self, method: str, target: str, body: bytes = b"", status: int = 200, **headers: str
    ) -> str:
        """Sign with the reference signer, have the stand-in accept it, return the curl."""
        headers = {k.replace("_", "-"): v for k, v in headers.items()}
        if body:
            headers["Content-Type"] = "application/json"
        request = RefRequest(method, f"{self.url}/api{target}", headers, body, base_path="/api")
        ts = int(time.time() * (1000 if self.scheme.timestamp_unit == "ms" else 1))
        # An integer id, as the one public client of this API shape makes them.
        request_id = (
            str(uuid.uuid4().int % (2**31 - 1) + 1) if self.decimal_ids else uuid.uuid4().hex
        )
        auth = reference.authorization(
            self.scheme, request, DEMO_API_ID, self.secret, request_id, ts
        )
        request.headers["Authorization"] = auth
        async with (
            aiohttp.ClientSession() as client,
            client.request(
                method, URL(request.url, encoded=True), headers=request.headers, data=body or None
            ) as r,
        ):
            assert r.status == status, (await r.text(), journal(self.app)[-1])
        return as_curl(request)


async def learn(secret: bytes, curls: list[str], *extra: str) -> tuple[int, str, str]:
    args = [a for c in curls for a in ("--curl", c)]
    return await run_cli(
        "learn",
        "--secret-env",
        "LEARN_SECRET",
        *args,
        *extra,
        env={"LEARN_SECRET": secret.decode()},
    )


async def gateway_accepted(
    stand_in: StandIn, table: dict[str, object], start_gateway: StartGateway
) -> None:
    """A gateway with the learned table is accepted on requests the samples never had."""
    table["fields"] = tuple(table["fields"])  # type: ignore[arg-type]
    scheme = signing.Scheme(**table)  # type: ignore[arg-type]
    sign = SigningSettings(api_id=DEMO_API_ID, secret_env=SECRET_ENV, scheme=scheme)
    gw = await start_gateway(
        settings_for(stand_in.url / "api", signing={"scheme": sign.scheme}),
        environ={SECRET_ENV: stand_in.secret.decode()},
    )
    player = {"username": "new", "password": "pw"}
    hdrs = {"X-Forwarded-For": "198.51.100.9"}
    async with aiohttp.ClientSession() as client:
        async with client.post(gw.url / "player/signup", json=player, headers=hdrs) as r:
            assert r.status == 201, await r.text()
        async with client.post(gw.url / "player/signin", json=player, headers=hdrs) as r:
            assert r.status == 200, await r.text()
            session = (await r.json())["session_id"]
        hdrs["X-Player-Session-Id"] = session
        async with client.get(gw.url / "player/balance", headers=hdrs) as r:
            assert r.status == 200, await r.text()
        for method in ("PUT", "DELETE"):
            url = URL(f"{gw.url}/echo?Other=Query&x=%20y", encoded=True)
            async with client.request(method, url, data=b"[1, 2]", headers=hdrs) as r:
                assert r.status == 200, await r.text()


def table_of(out: str) -> dict[str, object]:
    signing_table: dict[str, object] = tomllib.loads(out)["signing"]
    return signing_table


@pytest.mark.parametrize(
    ("scheme", "secret", "max_fields"),
    [
        pytest.param(CLASSIC, CLASSIC_SECRET, "6", id="amx-classic"),
        pytest.param(
            RefScheme(fields=("api_id", "request_id", "timestamp", "path_and_query", "body"),
                      signature_encoding="hex", timestamp_unit="ms"),
            DEMO_SECRET, "5", id="neither-header-hex-ms",
        ),
    ],
)  # fmt: skip
async def test_learn_finds_the_scheme_and_the_gateway_is_accepted_with_it(
    start_gateway: StartGateway, scheme: RefScheme, secret: bytes, max_fields: str
) -> None:
    async with StandIn(scheme, secret) as stand_in:
        curls = [
            await stand_in.accepted_sample("POST", "/echo", SIGNIN, X_Client_Ip=IP),
            await stand_in.accepted_sample(
                "GET", "/echo?currency=EUR&Page=2", X_Client_Ip=IP, X_Player_Session_Id=SESSION
            ),
            await stand_in.accepted_sample("DELETE", "/echo", X_Client_Ip=IP),
        ]
        code, out, err = await learn(secret, curls, "--toml", "--max-fields", max_fields)
        assert code == 0, out + err
        table = table_of(out)
        assert table["fields"] == list(scheme.fields)
        await gateway_accepted(stand_in, table, start_gateway)


async def test_integer_request_ids_are_learned_and_a_decimal_only_upstream_takes_the_gateway(
    start_gateway: StartGateway,
) -> None:
    scheme = RefScheme(fields=("api_id", "request_id", "timestamp", "path_and_query", "body"))
    async with StandIn(scheme, DEMO_SECRET, decimal_ids=True) as stand_in:
        curls = [
            await stand_in.accepted_sample("POST", "/echo", SIGNIN, X_Client_Ip=IP),
            await stand_in.accepted_sample(
                "GET", "/echo?currency=EUR", X_Client_Ip=IP, X_Player_Session_Id=SESSION
            ),
            await stand_in.accepted_sample("DELETE", "/echo", X_Client_Ip=IP),
        ]
        code, out, err = await learn(DEMO_SECRET, curls, "--toml", "--max-fields", "5")
        assert code == 0, out + err
        table = table_of(out)
        assert table["request_id_format"] == "decimal"
        # The gateway signing with it is accepted by an upstream that takes integers only,
        # and refused with its default (hex32) ids.
        await gateway_accepted(stand_in, table, start_gateway)
        gw = await start_gateway(
            settings_for(stand_in.url / "api"), environ={SECRET_ENV: DEMO_SECRET.decode()}
        )
        async with aiohttp.ClientSession() as client, client.get(gw.url / "echo") as r:
            assert r.status == 403
        assert journal(stand_in.app)[-1].error == "malformed_request_id"


async def test_headers_each_sample_lacks_are_placed_from_the_samples_that_carry_them() -> None:
    # Neither sample carries both optional headers, so whichever the search signs leaves
    # one out: its place is found from the other sample.
    scheme = RefScheme(
        fields=(
            "api_id",
            "header:X-Player-Session-Id?",
            "request_id",
            "timestamp",
            "path_and_query",
            "header:X-Client-Ip?",
        ),
    )
    async with StandIn(scheme, DEMO_SECRET) as stand_in:
        curls = [
            await stand_in.accepted_sample("GET", "/echo?a=1", X_Player_Session_Id=SESSION),
            await stand_in.accepted_sample("POST", "/echo", SIGNIN, X_Client_Ip=IP),
        ]
    code, out, err = await learn(DEMO_SECRET, curls, "--toml", "--max-fields", "6")
    assert code == 0, out + err
    assert table_of(out)["fields"] == list(scheme.fields)


INCOMING = RefScheme(fields=tuple(candidates.INCOMING_FIELDS))


async def test_a_scheme_that_signs_the_path_below_the_base_is_learned_and_checked(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    below = RefScheme(fields=("api_id", "request_id", "timestamp", "incoming_path_and_query"))
    async with StandIn(below, DEMO_SECRET) as stand_in:
        # Aleacc's own paths have two segments: the base is the prefix above them.
        player = b'{"username": "below", "password": "pw"}'
        curls = [
            await stand_in.accepted_sample(
                "POST", "/player/signup", player, 201, X_Client_Ip=IP, X_Player_Session_Id=SESSION
            ),
            await stand_in.accepted_sample(
                "POST", "/player/signin?lang=en", player, X_Client_Ip=IP
            ),
        ]
        code, out, err = await learn(DEMO_SECRET, curls, "--max-fields", "4")
        assert code == 0, out + err
        table = table_of(out.split("\n\n", 1)[1].split("\n\n", 1)[0])
        assert table["fields"] == list(below.fields)
        assert "It signs the path below the base path /api: upstream.url must end in /api" in out
        assert "  incoming_path_and_query: /player/signup" in out  # the first sample's string
        # Checked against a config whose upstream URL has no base path: said, as a warning.
        config = probe_config(tmp_path, stand_in.url, DEMO_SECRET, path="")
        code, out, err = await run_cli(
            "learn",
            "--config",
            str(config),
            "--toml",
            "--max-fields",
            "4",
            *(a for c in curls for a in ("--curl", c)),
        )
        assert code == 0, out + err
        assert f"warning: {config}: upstream.url has no path, not /api" in err
        await gateway_accepted(stand_in, table, start_gateway)


async def test_probe_tries_the_path_below_the_base_third(tmp_path: Path) -> None:
    async with StandIn(INCOMING, DEMO_SECRET) as stand_in:
        config = probe_config(tmp_path, stand_in.url, DEMO_SECRET)
        code, out, err = await run_cli(
            "probe", "--config", str(config), "--path", "/echo", "--interval-s", "0"
        )
    assert code == 0, out + err
    assert out.splitlines()[3] == (
        "  3. Aleacc's scheme, the path below upstream.url's base path: 200"
    )


SESSION_AFTER_PATH = RefScheme(
    fields=("api_id", "request_id", "timestamp", "header:X-Client-Ip?", "path_and_query",
            "header:X-Player-Session-Id?", "body"),
)  # fmt: skip


async def test_the_readme_walk_through_learns_the_repositorys_samples_in_the_whole_space(
    start_gateway: StartGateway,
) -> None:
    # config/samples/ were signed with the demo secret under "the session after the path".
    curls = [(REPO / "config" / "samples" / n).read_text() for n in ("signin.curl", "balance.curl")]
    code, out, err = await learn(DEMO_SECRET, curls)
    assert code == 0, out + err
    assert out.startswith("learn: one scheme fits every sample (2 sample(s), ")
    table = table_of(out.split(":\n\n", 1)[1].split("\n\nThe first sample", 1)[0])
    assert table["fields"] == list(SESSION_AFTER_PATH.fields)
    assert "  header:X-Player-Session-Id?: (empty: left out, with its separator)" in out
    assert DEMO_SECRET.decode() not in out + err
    async with StandIn(SESSION_AFTER_PATH, DEMO_SECRET) as stand_in:
        await gateway_accepted(stand_in, table, start_gateway)


async def test_a_scheme_outside_the_space_is_no_fit() -> None:
    outside = RefScheme(fields=("api_id", "request_id", "timestamp", "host", "path_and_query"))
    async with StandIn(outside, DEMO_SECRET) as stand_in:
        curls = [
            await stand_in.accepted_sample("POST", "/echo", SIGNIN, X_Client_Ip=IP),
            await stand_in.accepted_sample("GET", "/echo?a=1", X_Client_Ip=IP),
        ]
    code, out, err = await learn(DEMO_SECRET, curls, "--max-fields", "6")
    assert (code, out) == (1, "")
    assert err.startswith("learn: no scheme reproduces every sample (2 sample(s), ")
    assert '[signing]\nfields = ["api_id", "request_id", "timestamp", "header:X-Player' in err
    assert "a body changed on its way into the sample" in err
    assert "a proxy that rewrote the path" in err


async def test_samples_that_cannot_settle_it_say_what_to_add() -> None:
    async with StandIn(RefScheme(), DEMO_SECRET) as stand_in:
        curls = [await stand_in.accepted_sample("GET", "/echo", X_Client_Ip=IP)]
    code, out, err = await learn(DEMO_SECRET, curls, "--max-fields", "6")
    assert code == 2, out + err
    assert "kinds of scheme fit every sample, and the samples cannot settle it" in out
    advice = out.split("To tell them apart: ", 1)[1].split("\n", 1)[0]
    assert "add a POST with a JSON body" in advice
    assert "add a request with a query" in advice
    assert "add a request carrying X-Player-Session-Id" in advice
    assert "# fit 1 of " in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--curl", "curl 'https://h/x"], "learn: --curl #1: unterminated ' quote"),
        (["--curl", "curl https://h/x -H 'Authorization: Bearer t'"], "it starts 'Bearer'"),
        (["--har", "{har}"], "learn: {har}: no entry carries an 'Authorization: amx ...' header"),
        (["--raw", "{missing}"], "learn: {missing}: No such file or directory"),
        ([], "learn: give at least one sample: --curl, --har or --raw"),
    ],
)
async def test_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    har = tmp_path / "x.har"
    har.write_text('{"log": {"entries": []}}')
    names = {"har": str(har), "missing": str(tmp_path / "missing.http")}
    args = [a.format(**names) for a in args]
    code, out, err = await run_cli(
        "learn", "--secret-env", "LEARN_SECRET", *args, env={"LEARN_SECRET": "00ff"}
    )
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1
    assert message.format(**names) in err


async def test_a_missing_secret_is_one_line_naming_it() -> None:
    curl = f"curl https://h/x -H 'Authorization: amx a:{'A' * 43}=:1:1'"
    code, out, err = await run_cli("learn", "--secret-env", "NO_SUCH_SECRET_VAR", "--curl", curl)
    assert (code, out) == (2, "")
    assert err == "learn: environment variable NO_SUCH_SECRET_VAR is unset or empty\n"


# ------------------------------------------------------------------ probe


def probe_config(tmp_path: Path, upstream: URL, secret: bytes, path: str = "/api") -> Path:
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(secret)
    config = tmp_path / "gw.toml"
    config.write_text(
        f'[upstream]\nurl = "{upstream}{path}"\n'
        f'[signing]\napi_id = "{DEMO_API_ID}"\nsecret_file = "{secret_file}"\n'
    )
    return config


async def test_probe_finds_the_stand_ins_scheme_and_stops_there(tmp_path: Path) -> None:
    async with StandIn(SESSION_AFTER_PATH, DEMO_SECRET) as stand_in:
        config = probe_config(tmp_path, stand_in.url, DEMO_SECRET)
        code, out, err = await run_cli(
            "probe",
            "--config",
            str(config),
            "--path",
            "/echo",
            "--interval-s",
            "0",
            "--session-id",
            SESSION,
        )
        seen = journal(stand_in.app)
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0].startswith(f"probe: up to 16 GET request(s) to {stand_in.url}/api/echo")
    assert lines[1:8] == [
        "  1. Aleacc's scheme (the default): 403",
        "  2. Aleacc's scheme, decimal request ids: 403",
        "  3. Aleacc's scheme, the path below upstream.url's base path: 403",
        "  4. neither header signed (exactly the example's fields): 403",
        "  5. the client IP not signed: 403",
        "  6. the session not signed: 403",
        "  7. the session after the path: 200",
    ]
    assert table_of(out.split("not 403):\n\n", 1)[1])["fields"] == list(SESSION_AFTER_PATH.fields)
    assert [s.status for s in seen] == [403] * 6 + [200]  # and nothing after
    assert all(s.client_ip == "192.0.2.1" and s.session_id == SESSION for s in seen)


async def test_probe_without_a_fit_says_what_it_tried(tmp_path: Path) -> None:
    outside = RefScheme(fields=("api_id", "request_id", "timestamp", "host", "path_and_query"))
    async with StandIn(outside, DEMO_SECRET) as stand_in:
        config = probe_config(tmp_path, stand_in.url, DEMO_SECRET)
        code, out, err = await run_cli(
            "probe",
            "--config",
            str(config),
            "--path",
            "/echo",
            "--interval-s",
            "0",
            "--max-requests",
            "3",
        )
        seen = journal(stand_in.app)
    assert code == 1
    assert len(seen) == 3
    assert out.count(": 403") == 3
    assert err == "probe: none of the 3 scheme(s) tried was accepted; see above.\n"


async def test_probe_to_an_upstream_that_is_not_there_is_one_line(tmp_path: Path) -> None:
    config = probe_config(tmp_path, URL("http://127.0.0.1:9"), DEMO_SECRET)
    code, _, err = await run_cli("probe", "--config", str(config), "--path", "/echo")
    assert code == 1
    assert err.splitlines()[0].startswith("probe: http://127.0.0.1:9/api/echo: no answer (")
    assert "Traceback" not in err


def test_progress_starts_before_the_first_part_and_any_order_gives_one_answer() -> None:
    # One sample, where two kinds of scheme fit: an answer with some order to lose.
    samples = [parse_curl((REPO / "config" / "samples" / "signin.curl").read_text(), "signin")]
    heard: list[tuple[str, int]] = []

    def backwards(
        search: Callable[[learning.Part], tuple[int, learning.Found]], parts: list[learning.Part]
    ) -> Iterator[tuple[int, learning.Found]]:
        # A pool hands parts back as they finish: here the last one first.
        for part in reversed(parts):
            found = search(part)
            heard.append(("finished", part[0]))
            yield found

    def progress(done: int, total: int) -> None:
        heard.append(("progress", done))

    result = learning.learn(samples, DEMO_SECRET, run=backwards, progress=progress, max_fields=6)
    parts = len(heard) // 2
    assert heard[:2] == [("progress", 0), ("finished", parts - 1)]
    assert heard[-1] == ("progress", parts)
    assert len(result.classes) == 2
    assert result == learning.learn(samples, DEMO_SECRET, max_fields=6)
