"""Reading accepted requests: curl command lines, HAR exports, raw HTTP/1.1 (tables)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.discover.samples import SampleError, parse_curl, parse_har, parse_raw, shell_words

AUTH = "amx 12345678901234567890123456789012:" + "A" * 43 + "=:1:1433313039"
SAMPLES = Path(__file__).parent.parent / "config" / "samples"


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("curl 'a b' \"c d\" e\\ f", ["curl", "a b", "c d", "e f"]),
        ("curl \\\n  -H 'x: y'", ["curl", "-H", "x: y"]),
        ("curl $'a\\nb\\tc\\'d\\\\e'", ["curl", "a\nb\tc'd\\e"]),
        ("curl $'\\u00e4\\xc3\\xa4\\101'", ["curl", "ääA"]),  # \xHH are bytes of UTF-8
        ('curl "a\\"b\\$c"', ["curl", 'a"b$c']),
        ("curl a''b", ["curl", "ab"]),
    ],
)
def test_shell_words(command: str, words: list[str]) -> None:
    assert shell_words(command) == words


def test_chrome_copy_as_curl_with_ansi_c_body() -> None:
    command = (
        "curl 'https://aleacc.example.com/api/player/signin?x=%20y' \\\n"
        "  -H 'accept: */*' \\\n"
        f"  -H 'Authorization: {AUTH}' \\\n"
        "  -H 'content-type: application/json' \\\n"
        '  --data-raw $\'{\\n  "Username": "t\\u00e4st"\\n}\' \\\n'
        "  --compressed"
    )
    sample = parse_curl(command)
    parts = sample.parts
    assert (parts.method, parts.scheme, parts.host) == ("POST", "https", "aleacc.example.com")
    assert parts.path_and_query == "/api/player/signin?x=%20y"
    assert parts.body == '{\n  "Username": "täst"\n}'.encode()
    assert parts.headers["Content-Type"] == "application/json"
    assert (sample.auth.request_id, sample.auth.timestamp) == ("1", 1433313039)


@pytest.mark.parametrize(
    ("extra", "method", "body"),
    [
        ("", "GET", b""),
        ("-X PUT --data-binary 'a=1'", "PUT", b"a=1"),
        ("-d a=1 -d b=2", "POST", b"a=1&b=2"),
        ("--request=DELETE", "DELETE", b""),
        ("--data 'x' -X patch", "PATCH", b"x"),
    ],
)
def test_curl_method_and_data(extra: str, method: str, body: bytes) -> None:
    sample = parse_curl(f"curl https://h/x -H 'Authorization: {AUTH}' {extra}")
    assert (sample.parts.method, sample.parts.body) == (method, body)


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("wget https://h/x", "expected a command starting with 'curl'"),
        (f"curl https://h/x -H 'Authorization: {AUTH}' -F a=b", "cannot use curl option '-F'"),
        (f"curl https://h/x -H 'Authorization: {AUTH}' --user me", "option '--user'"),
        (f"curl https://h/x -H 'Authorization: {AUTH}' -d @body.json", "reads a file"),
        ("curl 'https://h/x", "unterminated ' quote"),
        ("curl $'https://h/x", "unterminated $' quote"),
        ("curl \"$HOME\"", "cannot expand '$'"),
        (f"curl -H 'Authorization: {AUTH}'", "no URL in the command"),
        ("curl https://h/x", "expected one Authorization header, found 0"),
        ("curl https://h/x -H 'Authorization: Bearer abc'", "it starts 'Bearer'"),
        ("curl /x -H 'Authorization: amx a:b:c:d'", "not an absolute http(s) URL"),
        ("curl https://h/x -H", "-H needs a value"),
    ],
)  # fmt: skip
def test_curl_errors_name_what_they_cannot_use(command: str, message: str) -> None:
    with pytest.raises(SampleError, match="^--curl: .*" + _re(message)):
        parse_curl(command)


def _re(text: str) -> str:
    import re

    return re.escape(text)


def test_har_takes_every_amx_entry() -> None:
    def entry(
        method: str, url: str, auth: str | None, body: str | None = None
    ) -> dict[str, object]:
        headers = [{"name": ":authority", "value": "h"}, {"name": "accept", "value": "*/*"}]
        if auth:
            headers.append({"name": "authorization", "value": auth})
        request: dict[str, object] = {"method": method, "url": url, "headers": headers}
        if body is not None:
            request["postData"] = {"mimeType": "application/json", "text": body}
        return {"request": request}

    har = {
        "log": {
            "entries": [
                entry("GET", "https://h/static.js", None),
                entry("POST", "https://h/api/player/signin", AUTH, '{"a": 1}'),
                entry("GET", "https://h/api/player/balance?c=EUR", AUTH),
            ]
        }
    }
    samples = parse_har(json.dumps(har), "x.har")
    assert [s.source for s in samples] == ["x.har entry 2", "x.har entry 3"]
    assert samples[0].parts.body == b'{"a": 1}'
    assert samples[1].parts.path_and_query == "/api/player/balance?c=EUR"
    assert ":authority" not in samples[0].parts.headers


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not a HAR file"),
        ('{"log": {}}', "not a HAR file"),
        ('{"log": {"entries": []}}', "no entry carries an 'Authorization: amx ...' header"),
        ('{"log": {"entries": [{"request": 1}]}}', "entry 1 is not a HAR request"),
    ],
)
def test_har_errors(text: str, message: str) -> None:
    with pytest.raises(SampleError, match=_re(message)):
        parse_har(text, "x.har")


def test_raw_request() -> None:
    raw = (
        b"POST /api/player/signin HTTP/1.1\r\nHost: aleacc.example.com\r\n"
        + f"Authorization: {AUTH}\r\n".encode()
        + b"Content-Length: 5\r\n\r\nhello"
    )
    sample = parse_raw(raw, "r.http")
    assert sample.parts.body == b"hello"
    assert (sample.parts.scheme, sample.parts.host) == ("https", "aleacc.example.com")
    with pytest.raises(SampleError, match="first line is not"):
        parse_raw(b"hello\r\n\r\n", "r.http")
    with pytest.raises(SampleError, match="no Host header"):
        parse_raw(f"GET /x HTTP/1.1\r\nAuthorization: {AUTH}\r\n\r\n".encode(), "r.http")


@pytest.mark.parametrize("name", ["signin.curl", "balance.curl"])
def test_the_repositorys_samples_parse(name: str) -> None:
    sample = parse_curl((SAMPLES / name).read_text())
    assert sample.auth.api_id == "12345678901234567890123456789012"
