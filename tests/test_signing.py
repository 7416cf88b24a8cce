"""Known-answer vectors for the signature. Expected values were computed with
`openssl dgst -sha256 -hmac kat-secret -binary | base64`, not with this code."""

from __future__ import annotations

import os
import uuid

import pytest
from multidict import CIMultiDict

from gateway import signing

SECRET = b"kat-secret"
API_ID = "12345678901234567890123456789012"
REQUEST_ID = "0123456789abcdef0123456789abcdef"
TS = 1433313039
PREFIX = b"12345678901234567890123456789012\n0123456789abcdef0123456789abcdef\n1433313039\n"


def parts(
    method: str = "GET",
    path_and_query: str = "/api/x",
    body: bytes = b"",
    host: str = "aleacc.example.com",
    **headers: str,
) -> signing.RequestParts:
    return signing.RequestParts(
        method=method,
        scheme="https",
        host=host,
        path_and_query=path_and_query,
        headers=CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()}),
        body=body,
    )


VECTORS = [
    pytest.param(
        signing.DEFAULT_FIELDS,
        parts("GET", "/api/player/balance"),
        PREFIX + b"GET\n/api/player/balance\n\n",
        "wdw8c7veWcG+5tx0CVysxFI3D5oEtruqY2HZshEQgHo=",
        id="get-without-body",
    ),
    pytest.param(
        signing.DEFAULT_FIELDS,
        parts(
            "POST",
            "/api/player/signin",
            b'{"username":"ann","password":"pw"}',
            Content_Type="application/json",
        ),
        PREFIX + b'POST\n/api/player/signin\napplication/json\n{"username":"ann","password":"pw"}',
        "YWdqaqzWssqNTeClyw8kjk9cHovAGkOFuDVUKwQBMJs=",
        id="post-json-body",
    ),
    pytest.param(
        signing.DEFAULT_FIELDS,
        parts("GET", "/api/player/signin?a=1&b=%20x"),
        PREFIX + b"GET\n/api/player/signin?a=1&b=%20x\n\n",
        "litHDDAi2kmG7xnzxGL+/sR9DVxxhPs8VWandl756Ek=",
        id="query-kept-raw",
    ),
    pytest.param(
        signing.DEFAULT_FIELDS,
        parts("put", "/api/x", b"\xc3\xa4\xff\n\x00end", Content_Type="application/octet-stream"),
        PREFIX + b"PUT\n/api/x\napplication/octet-stream\n\xc3\xa4\xff\n\x00end",
        "c7SxsoRTmtLOg3/SinLHsZwGy3QeQzz8prS/j8hEOMo=",
        id="non-ascii-body-bytes-and-lowercase-method",
    ),
    pytest.param(
        ("url",),
        parts("GET", "/api/x?a=1"),
        b"https://aleacc.example.com/api/x?a=1",
        "Jc0tekUUQTYMXfzsScXitsoRhFjbJPavhym9qsz6ZhU=",
        id="field-url",
    ),
    pytest.param(
        ("host",),
        parts(host="aleacc.example.com:8443"),
        b"aleacc.example.com:8443",
        "dQetEev3+v7fBp1jVswGDeB/remb1BTgNhegNtduFw4=",
        id="field-host",
    ),
    pytest.param(
        ("path",),
        parts("GET", "/api/x?a=1"),
        b"/api/x",
        "cXl6XEuvTuv5veL4nyrnwbg55clznKdzqRPJ1Dmu6Uc=",
        id="field-path",
    ),
    pytest.param(
        ("query",),
        parts("GET", "/api/x?a=1"),
        b"a=1",
        "fSfD51Awa6SWUzlX6Y8d80IaTnbiQ3kuWl5oWPiNnRw=",
        id="field-query",
    ),
    pytest.param(
        ("header:X-Client-Ip", "header:X-Absent"),
        parts(X_Client_Ip="203.0.113.7"),
        b"203.0.113.7\n",
        "IPewnR+nrA9qLWNydGilI+IY/l/ddvdIH5Bb09rNljU=",
        id="field-header-present-and-absent",
    ),
]


@pytest.mark.parametrize(("fields", "request_parts", "expected_string", "expected_sig"), VECTORS)
def test_known_answers(
    fields: tuple[str, ...],
    request_parts: signing.RequestParts,
    expected_string: bytes,
    expected_sig: str,
) -> None:
    signed = signing.sign(
        fields, request_parts, signing.Credentials(API_ID, SECRET), REQUEST_ID, TS
    )
    assert signed.string_to_sign == expected_string
    assert signed.authorization == f"amx {API_ID}:{expected_sig}:{REQUEST_ID}:{TS}"
    assert len(expected_sig) == 44


def test_aleacc_example_header_parses() -> None:
    sig = "pYEt3GtOHzf1Y16hb3fSlnbpGTB+cdXo6EEx9WgfR1w="
    # Aleacc's documented example uses request_id "1"; the stand-in must accept that form.
    example = f"amx {API_ID}:{sig}:1:1433313039"
    assert signing.parse_authorization(example) == signing.Authorization(API_ID, sig, "1", TS)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "amx",
        "AMX a:" + "A" * 44 + f":{REQUEST_ID}:1",
        "amx a:" + "A" * 43 + f":{REQUEST_ID}:1",
        "amx a:" + "A" * 44 + f":{REQUEST_ID}:-1",
        "amx a:" + "A" * 44 + "::1",
        "amx a:" + "A" * 44 + ":id with space:1",
        "amx :" + "A" * 44 + f":{REQUEST_ID}:1",
        "amx a:" + "A" * 44 + f":{REQUEST_ID}:1:extra",
        "Bearer token",
    ],
)
def test_malformed_authorization_is_refused(value: str) -> None:
    assert signing.parse_authorization(value) is None


def test_verify_is_the_inverse_of_sign() -> None:
    p = parts("POST", "/api/x?y=2", b"{}", Content_Type="application/json")
    signed = signing.sign(
        signing.DEFAULT_FIELDS, p, signing.Credentials(API_ID, SECRET), REQUEST_ID, TS
    )
    auth = signing.parse_authorization(signed.authorization)
    assert auth is not None
    assert signing.verify(signing.DEFAULT_FIELDS, p, SECRET, auth)
    assert not signing.verify(signing.DEFAULT_FIELDS, p, b"other", auth)
    tampered = parts("POST", "/api/x?y=3", b"{}", Content_Type="application/json")
    assert not signing.verify(signing.DEFAULT_FIELDS, tampered, SECRET, auth)


def test_request_ids_are_fresh_uuid4_hex() -> None:
    ids = {signing.new_request_id() for _ in range(5000)}  # crosses several pool refills
    assert len(ids) == 5000
    for request_id in ids:
        parsed = uuid.UUID(request_id)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert request_id == parsed.hex


def test_a_forked_worker_never_repeats_its_parents_request_ids() -> None:
    signing.new_request_id()  # the pool now holds unused random bytes
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.write(write, signing.new_request_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    from_child = os.read(read, 64).decode()
    os.close(read)
    assert from_child != signing.new_request_id()


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("api_id", None),
        ("header:X-Player-Session-Id", None),
        ("header:", "does not name a valid header"),
        ("header:Bad Name", "does not name a valid header"),
        ("bodyy", "unknown field 'bodyy'"),
    ],
)
def test_field_names(name: str, problem: str | None) -> None:
    result = signing.field_problem(name)
    assert (result is None) if problem is None else (result is not None and problem in result)


def test_explain_shows_fields_escaped_and_never_the_secret() -> None:
    body = b'{"a":"\xc3\xa4"}\n\x00' + b"x" * 600
    p = parts("POST", "/api/x", body, Content_Type="application/json")
    lines = signing.explain(signing.DEFAULT_FIELDS, p, API_ID, REQUEST_ID, TS)
    assert lines[:6] == [
        f"api_id: {API_ID}",
        f"request_id: {REQUEST_ID}",
        f"timestamp: {TS}",
        "method: POST",
        "path_and_query: /api/x",
        "content_type: application/json",
    ]
    assert lines[6].startswith('body: {"a":"\\xc3\\xa4"}\\n\\x00xxx')
    assert lines[6].endswith(
        f"... ({len(body)} bytes, sha256 " + __import__("hashlib").sha256(body).hexdigest() + ")"
    )
    assert all("kat-secret" not in line for line in lines)
