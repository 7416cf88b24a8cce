"""Known-answer vectors for the signature, then the scheme's parts.

Every expected signature was computed outside this code, with openssl:
`printf '<string to sign>' | openssl dgst -sha256 -mac HMAC -macopt hexkey:<secret> -binary
| base64` (or `-hmac kat-secret` for a UTF-8 key). The first vector is Aleacc's own example.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway import signing

API_ID = "12345678901234567890123456789012"
# Aleacc's example secret: the api_id twice, 64 hex characters, hex-decoded into the key.
HEX_SECRET = API_ID.encode() * 2
UTF8_SECRET = b"kat-secret"
TS = 1433313039
EXAMPLE_BODY = b'{\n  "Username": "test",\n  "Password": "testar"\n}'
SESSION = "5f2b8e0c9d1a4e6f"
LEGACY_FIELDS = (
    "api_id", "request_id", "timestamp", "method", "path_and_query", "content_type", "body"
)  # fmt: skip
LEGACY_PREFIX = b"12345678901234567890123456789012\n0123456789abcdef0123456789abcdef\n1433313039\n"
LEGACY_ID = "0123456789abcdef0123456789abcdef"


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


DEFAULT = signing.Scheme()
DEFAULT_PLAN = signing.compile_scheme(DEFAULT)
LEGACY = signing.Scheme(fields=LEGACY_FIELDS, secret_encoding="utf-8")

# (scheme, secret as stored, request_id, timestamp, request, string to sign, signature)
VECTORS = [
    pytest.param(
        DEFAULT, HEX_SECRET, "1", TS,
        parts("POST", "/player/signin", EXAMPLE_BODY, Content_Type="application/json"),
        b"12345678901234567890123456789012\n1\n1433313039\n/player/signin\n" + EXAMPLE_BODY,
        "pYEt3GtOHzf1Y16hb3fSlnbpGTB+cdXo6EEx9WgfR1w=",
        id="aleacc-example",
    ),
    pytest.param(
        DEFAULT, HEX_SECRET, "1", TS,
        parts("GET", "/player/balance", X_Player_Session_Id=SESSION, X_Client_Ip="203.0.113.7"),
        b"12345678901234567890123456789012\n1\n1433313039\n5f2b8e0c9d1a4e6f\n203.0.113.7\n"
        b"/player/balance\n",
        "9p1vpJ+CLJ6S77M5CTFU7RevaXiCuyXs2QEv52xhUBU=",
        id="session-and-client-ip-present-empty-body",
    ),
    pytest.param(
        DEFAULT, HEX_SECRET, "1", TS,
        parts("POST", "/player/signin", b'{"Username":"test","Password":"testar"}',
              X_Client_Ip="203.0.113.7"),
        b"12345678901234567890123456789012\n1\n1433313039\n203.0.113.7\n/player/signin\n"
        b'{"Username":"test","Password":"testar"}',
        "Hni64HL3/oOGRyJcEJu5TfK1jODMZ9WU9/uY583J/k4=",
        id="client-ip-present-session-absent",
    ),
    pytest.param(
        DEFAULT, HEX_SECRET, "1", TS,
        parts("GET", "/player/history?from=2015-06-01&q=a%20b", X_Client_Ip="203.0.113.7"),
        b"12345678901234567890123456789012\n1\n1433313039\n203.0.113.7\n"
        b"/player/history?from=2015-06-01&q=a%20b\n",
        "jLQGKDCNd4vRbkpDAs5pCMoBrSA6pyw0lkw2D4HCw+Q=",
        id="query-kept-raw",
    ),
    pytest.param(
        DEFAULT, HEX_SECRET, "1", TS,
        parts("POST", "/api/player/signin", EXAMPLE_BODY),
        b"12345678901234567890123456789012\n1\n1433313039\n/api/player/signin\n" + EXAMPLE_BODY,
        "Dhsu5hRhRS4j9yfyj/TndhmZ4zf3f1WWXyjbHcPd7FM=",
        id="base-path",
    ),
    pytest.param(
        DEFAULT, HEX_SECRET, "1", TS,
        parts("GET", "/player/balance"),
        b"12345678901234567890123456789012\n1\n1433313039\n/player/balance\n",
        "lZ+bM2xz6QgElbuyKzOh6SXbC/+2oEfn1+0NssJAldc=",
        id="empty-body-is-an-empty-last-line",
    ),
    pytest.param(
        signing.Scheme(signature_encoding="hex", timestamp_unit="ms"), HEX_SECRET, "1",
        TS * 1000,
        parts("GET", "/player/balance"),
        b"12345678901234567890123456789012\n1\n1433313039000\n/player/balance\n",
        "91e06c82079f361641be984aa6c012d91d963e641a21f5cbdf9f062f03e8f7c0",
        id="hex-signature-milliseconds",
    ),
    pytest.param(
        signing.Scheme(
            fields=("api_id", "method", "url|lower|urlencode", "timestamp", "request_id",
                    "body|md5|base64"),
            separator="", secret_encoding="base64",
        ),
        b"a2F0LXNlY3JldA==", "1", TS,
        parts("POST", "/API/Player/Signin?Lang=EN", b'{"a":1}', host="Aleacc.example.com"),
        b"12345678901234567890123456789012POST"
        b"https%3a%2f%2faleacc.example.com%2fapi%2fplayer%2fsignin%3flang%3den"
        b"14333130391u2y1xo30ZSlByvZSo2by2A==",
        "rqgtN1kEd1Enx3dSD3vEjbCDCBLpjup6/2TORi3hcZA=",
        id="amx-classic-layout-base64-key",
    ),
    pytest.param(
        signing.Scheme(
            fields=("method|lower", "path|percent", "query", "body|sha256|hex", "content_type?"),
            separator="&", secret_encoding="utf-8",
        ),
        UTF8_SECRET, "1", TS,
        parts("PUT", "/api/a~b%20c?q=1", b"hello"),
        b"put&%2Fapi%2Fa~b%2520c&q=1&"
        b"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        "Yqf8fI2uEAuj2INYGEsbD5GE1cduyZu4mMeRUKdDPac=",
        id="percent-sha256-hex-and-an-absent-optional-last-field",
    ),
    # The layout the gateway signed before Aleacc's example was reproduced: still
    # available with secret_encoding = "utf-8" and the old field list.
    pytest.param(
        LEGACY, UTF8_SECRET, LEGACY_ID, TS,
        parts("POST", "/api/player/signin", b'{"username":"ann","password":"pw"}',
              Content_Type="application/json"),
        LEGACY_PREFIX
        + b'POST\n/api/player/signin\napplication/json\n{"username":"ann","password":"pw"}',
        "YWdqaqzWssqNTeClyw8kjk9cHovAGkOFuDVUKwQBMJs=",
        id="legacy-layout-post",
    ),
    pytest.param(
        LEGACY, UTF8_SECRET, LEGACY_ID, TS,
        parts("put", "/api/x", b"\xc3\xa4\xff\n\x00end", Content_Type="application/octet-stream"),
        LEGACY_PREFIX + b"PUT\n/api/x\napplication/octet-stream\n\xc3\xa4\xff\n\x00end",
        "c7SxsoRTmtLOg3/SinLHsZwGy3QeQzz8prS/j8hEOMo=",
        id="legacy-layout-non-ascii-body-and-lowercase-method",
    ),
    pytest.param(
        signing.Scheme(fields=("url",), secret_encoding="utf-8"), UTF8_SECRET, LEGACY_ID, TS,
        parts("GET", "/api/x?a=1"),
        b"https://aleacc.example.com/api/x?a=1",
        "Jc0tekUUQTYMXfzsScXitsoRhFjbJPavhym9qsz6ZhU=",
        id="field-url",
    ),
    pytest.param(
        signing.Scheme(fields=("host",), secret_encoding="utf-8"), UTF8_SECRET, LEGACY_ID, TS,
        parts(host="aleacc.example.com:8443"),
        b"aleacc.example.com:8443",
        "dQetEev3+v7fBp1jVswGDeB/remb1BTgNhegNtduFw4=",
        id="field-host",
    ),
    pytest.param(
        signing.Scheme(fields=("path",), secret_encoding="utf-8"), UTF8_SECRET, LEGACY_ID, TS,
        parts("GET", "/api/x?a=1"),
        b"/api/x",
        "cXl6XEuvTuv5veL4nyrnwbg55clznKdzqRPJ1Dmu6Uc=",
        id="field-path",
    ),
    pytest.param(
        signing.Scheme(fields=("query",), secret_encoding="utf-8"), UTF8_SECRET, LEGACY_ID, TS,
        parts("GET", "/api/x?a=1"),
        b"a=1",
        "fSfD51Awa6SWUzlX6Y8d80IaTnbiQ3kuWl5oWPiNnRw=",
        id="field-query",
    ),
    pytest.param(
        signing.Scheme(fields=("header:X-Client-Ip", "header:X-Absent"), secret_encoding="utf-8"),
        UTF8_SECRET, LEGACY_ID, TS,
        parts(X_Client_Ip="203.0.113.7"),
        b"203.0.113.7\n",
        "IPewnR+nrA9qLWNydGilI+IY/l/ddvdIH5Bb09rNljU=",
        id="header-present-and-absent-without-question-mark-keeps-its-line",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("scheme", "secret", "request_id", "timestamp", "request_parts", "expected_string",
     "expected_sig"),
    VECTORS,
)  # fmt: skip
def test_known_answers(
    scheme: signing.Scheme,
    secret: bytes,
    request_id: str,
    timestamp: int,
    request_parts: signing.RequestParts,
    expected_string: bytes,
    expected_sig: str,
) -> None:
    plan = signing.compile_scheme(scheme)
    key = signing.decode_secret(secret, scheme.secret_encoding)
    signed = plan.sign(request_parts, signing.Credentials(API_ID, key), request_id, timestamp)
    assert signed.string_to_sign == expected_string
    assert signed.authorization == f"amx {API_ID}:{expected_sig}:{request_id}:{timestamp}"
    auth = signing.parse_authorization(signed.authorization)
    assert auth is not None
    assert auth.signature_encoding == scheme.signature_encoding
    assert plan.verify(request_parts, key, auth)


def test_the_default_is_aleaccs_scheme() -> None:
    assert signing.Scheme() == signing.Scheme(
        fields=(
            "api_id",
            "request_id",
            "timestamp",
            "header:X-Player-Session-Id?",
            "header:X-Client-Ip?",
            "path_and_query",
            "body",
        ),
        separator="\n",
        secret_encoding="hex",
        signature_encoding="base64",
        timestamp_unit="s",
    )


def test_aleacc_example_header_parses() -> None:
    sig = "pYEt3GtOHzf1Y16hb3fSlnbpGTB+cdXo6EEx9WgfR1w="
    example = f"amx {API_ID}:{sig}:1:1433313039"
    auth = signing.parse_authorization(example)
    assert auth == signing.Authorization(API_ID, sig, "1", TS)
    assert auth.signature_encoding == "base64"


@pytest.mark.parametrize(
    ("transform", "value", "expected"),
    [
        # .NET HttpUtility.UrlEncode: these kept, space "+", the rest %xx in lower case.
        ("urlencode", b"AZaz09-_.!*()", b"AZaz09-_.!*()"),
        ("urlencode", b"a b~'/?=&%\xc3\xbc", b"a+b%7e%27%2f%3f%3d%26%25%c3%bc"),
        # RFC 3986: unreserved kept (tilde too), the rest %XX in upper case.
        ("percent", b"AZaz09-_.~", b"AZaz09-_.~"),
        ("percent", b"a b!*()/\xc3\xbc", b"a%20b%21%2A%28%29%2F%C3%BC"),
        ("lower", b"ABC\xc3\x84", b"abc\xc3\x84"),  # ASCII only
        ("upper", b"abc\xc3\xa4", b"ABC\xc3\xa4"),
        ("md5", b"", b""),
        ("md5", b"hello", bytes.fromhex("5d41402abc4b2a76b9719d911017c592")),
        ("sha256", b"", b""),
        ("base64", b"", b""),
        ("base64", b"\xff\x00", b"/wA="),
        ("hex", b"\xff\x00", b"ff00"),
    ],
)
def test_transforms(transform: str, value: bytes, expected: bytes) -> None:
    assert signing.TRANSFORMS[transform](value) == expected


@pytest.mark.parametrize(
    ("secret", "encoding", "key"),
    [
        (b"00ff", "hex", b"\x00\xff"),
        (b"00FF", "hex", b"\x00\xff"),
        (b"a2F0", "base64", b"kat"),
        (b"kat secret", "utf-8", b"kat secret"),
    ],
)
def test_secret_decodes_into_the_key(secret: bytes, encoding: str, key: bytes) -> None:
    assert signing.decode_secret(secret, encoding) == key


@pytest.mark.parametrize(
    ("secret", "encoding"),
    [(b"kat-secret", "hex"), (b"abc", "hex"), (b"00 ff", "hex"), (b"a2F0*", "base64"),
     (b"a2F", "base64"), (b"====", "base64")],
)  # fmt: skip
def test_a_secret_that_does_not_decode_is_refused_without_its_value(
    secret: bytes, encoding: str
) -> None:
    with pytest.raises(ValueError, match=encoding) as raised:
        signing.decode_secret(secret, encoding)
    assert secret.decode() not in str(raised.value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "amx",
        "AMX a:" + "A" * 43 + f"=:{LEGACY_ID}:1",
        "amx a:" + "A" * 43 + f":{LEGACY_ID}:1",
        "amx a:" + "A" * 44 + f":{LEGACY_ID}:1",  # base64 of 32 bytes ends in one "="
        "amx a:" + "a" * 63 + f":{LEGACY_ID}:1",
        "amx a:" + "A" * 64 + f":{LEGACY_ID}:1",  # hex is lower case
        "amx a:" + "A" * 43 + f"=:{LEGACY_ID}:-1",
        "amx a:" + "A" * 43 + "=::1",
        "amx a:" + "A" * 43 + "=:id with space:1",
        "amx :" + "A" * 43 + f"=:{LEGACY_ID}:1",
        "amx a:" + "A" * 43 + f"=:{LEGACY_ID}:1:extra",
        "Bearer token",
    ],
)
def test_malformed_authorization_is_refused(value: str) -> None:
    assert signing.parse_authorization(value) is None


def test_verify_is_the_inverse_of_sign() -> None:
    plan = DEFAULT_PLAN
    key = signing.decode_secret(HEX_SECRET, "hex")
    p = parts("POST", "/api/x?y=2", b"{}", X_Client_Ip="192.0.2.1")
    signed = plan.sign(p, signing.Credentials(API_ID, key), LEGACY_ID, TS)
    auth = signing.parse_authorization(signed.authorization)
    assert auth is not None
    assert plan.verify(p, key, auth)
    assert not plan.verify(p, b"other", auth)
    for tampered in (
        parts("POST", "/api/x?y=3", b"{}", X_Client_Ip="192.0.2.1"),
        parts("POST", "/api/x?y=2", b"{}", X_Client_Ip="192.0.2.2"),
        parts("POST", "/api/x?y=2", b"{}", X_Client_Ip="192.0.2.1", X_Player_Session_Id="s"),
    ):
        assert not plan.verify(tampered, key, auth)


@pytest.mark.parametrize(
    ("fields", "problems"),
    [
        (("api_id", "header:X-Player-Session-Id?", "body|md5|base64", "url|lower|urlencode?"), []),
        (("header:",), ["does not name a valid header"]),
        (("header:Bad Name?",), ["does not name a valid header"]),
        (("bodyy",), ["unknown field 'bodyy'"]),
        (("body|md4",), ["unknown transform(s) 'md4'"]),
        (("body?|md5",), ["'?' may only end the expression"]),
        (("body", "body|md5"), ["duplicate field(s) body"]),
        (("api_id", "api_id?"), ["duplicate field(s) api_id"]),
        (("bodyy", "body|md4", "x"),
         ["unknown field 'bodyy'", "unknown transform(s) 'md4'", "unknown field 'x'"]),
        ((), ["at least one field"]),
    ],
)  # fmt: skip
def test_every_bad_expression_is_reported(fields: tuple[str, ...], problems: list[str]) -> None:
    found = signing.scheme_problems(signing.Scheme(fields=fields))
    assert len(found) == len(problems)
    for message, expected in zip(found, problems, strict=True):
        assert expected in message
    if not problems:
        signing.compile_scheme(signing.Scheme(fields=fields))
    else:
        with pytest.raises(signing.SchemeError):
            signing.compile_scheme(signing.Scheme(fields=fields))


def test_explain_marks_left_out_fields_escapes_values_and_never_shows_the_secret() -> None:
    body = b'{"a":"\xc3\xa4"}\n\x00' + b"x" * 600
    p = parts("POST", "/api/x", body, X_Client_Ip="203.0.113.7")
    context = signing.Context(API_ID, LEGACY_ID, str(TS))
    lines = DEFAULT_PLAN.explain(p, context)
    assert lines[:6] == [
        f"api_id: {API_ID}",
        f"request_id: {LEGACY_ID}",
        f"timestamp: {TS}",
        "header:X-Player-Session-Id?: (empty: left out, with its separator)",
        "header:X-Client-Ip?: 203.0.113.7",
        "path_and_query: /api/x",
    ]
    assert lines[6].startswith('body: {"a":"\\xc3\\xa4"}\\n\\x00xxx')
    assert lines[6].endswith(f"... ({len(body)} bytes, sha256 {hashlib.sha256(body).hexdigest()})")
    assert all(HEX_SECRET.decode() not in line for line in lines)


header_text = st.text(
    st.characters(codec="utf-8", exclude_characters="\r\n") | st.just("\udce9"),
    max_size=12,
)


@given(
    session=st.lists(header_text, max_size=2),
    client_ip=st.lists(header_text, max_size=2),
    path_and_query=st.text(max_size=20).map(lambda p: "/" + p),
    body=st.binary(max_size=40),
    context=st.tuples(st.text(max_size=8), st.text(max_size=8), st.text(max_size=8)),
)
def test_aleaccs_unrolled_string_is_the_generic_loops(
    session: list[str],
    client_ip: list[str],
    path_and_query: str,
    body: bytes,
    context: tuple[str, str, str],
) -> None:
    """The default field list is built by one function; any other list by the field loop.
    Both must give the same bytes, empty and repeated optional headers included."""
    headers: CIMultiDict[str] = CIMultiDict(
        [("X-Player-Session-Id", v) for v in session] + [("x-client-ip", v) for v in client_ip]
    )
    request = signing.RequestParts("POST", "https", "h", path_and_query, headers, body)
    plan = signing.compile_scheme(DEFAULT)
    generic = plan.values(request, signing.Context(*context))
    expected = plan.separator.join(value for value in generic if value is not None)
    assert plan.string_to_sign(request, signing.Context(*context)) == expected


def test_an_unknown_request_id_format_is_a_scheme_problem() -> None:
    assert signing.scheme_problems(signing.Scheme(request_id_format="int")) == [
        "request_id_format 'int' must be one of hex32, decimal, uuid"
    ]


@pytest.mark.parametrize(
    ("base", "path_and_query", "incoming"),
    [
        ("/api", "/api/player/signin?a=1", "/player/signin?a=1"),
        ("/api", "/api/a%2Fb?q=%20x", "/a%2Fb?q=%20x"),  # bytes kept as received
        ("/api", "/api/", "/"),
        ("", "/player/signin", "/player/signin"),
        ("/api/v2", "/api/v2/x", "/x"),
    ],
)
def test_the_incoming_fields_sign_the_callers_target_without_the_base_path(
    base: str, path_and_query: str, incoming: str
) -> None:
    request = signing.RequestParts("GET", "https", "h", path_and_query, {}, b"", base)
    context = signing.Context("id", "1", "1")
    plan = signing.compile_scheme(
        signing.Scheme(fields=("incoming_path_and_query", "incoming_path"), separator="|")
    )
    assert plan.string_to_sign(request, context) == (
        f"{incoming}|{incoming.partition('?')[0]}".encode()
    )
