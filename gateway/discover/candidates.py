"""The schemes ``probe`` tries, best first, and ``learn`` names when nothing fits.

One list, ordered by how likely each layout is for Aleacc, each entry saying where it
comes from. The first is Aleacc's scheme as its example header reproduces it; next its
neighbours that differ only where that example is silent (where the session id and the
client IP go); then the family of the 2015 ASP.NET Web API HMAC sample whose
``amx APPId:Signature:Nonce:Timestamp`` header Aleacc's has the shape of.
"""

from __future__ import annotations

from ..signing import DEFAULT_FIELDS, Scheme

_HEAD = ("api_id", "request_id", "timestamp")
_SESSION = "header:X-Player-Session-Id?"
_IP = "header:X-Client-Ip?"
_CLASSIC = ("api_id", "method", "url|lower|urlencode", "timestamp", "request_id", "body|md5|base64")

# Aleacc's fields with the caller's path (below upstream.url's base path) signed instead.
INCOMING_FIELDS = tuple(
    "incoming_path_and_query" if f == "path_and_query" else f for f in DEFAULT_FIELDS
)
INCOMING_LABEL = "Aleacc's scheme, the path below upstream.url's base path"

CANDIDATES: tuple[tuple[str, Scheme], ...] = (
    # Aleacc's example header, reproduced; the two headers where a public client of the
    # same API shape (goa-codebet/enji-sdk) puts them: the default.
    ("Aleacc's scheme (the default)", Scheme()),
    # Both public data points use an integer id (Aleacc's example "1"; enji-sdk a random
    # integer): a server that parses it as one refuses 32 hex characters.
    ("Aleacc's scheme, decimal request ids", Scheme(request_id_format="decimal")),
    # Where Aleacc is hosted under a prefix, it may sign the path below it.
    (INCOMING_LABEL, Scheme(fields=INCOMING_FIELDS)),
    # The example has neither header: each neighbour moves or drops one of them.
    ("neither header signed (exactly the example's fields)",
     Scheme(fields=(*_HEAD, "path_and_query", "body"))),
    ("the client IP not signed", Scheme(fields=(*_HEAD, _SESSION, "path_and_query", "body"))),
    ("the session not signed", Scheme(fields=(*_HEAD, _IP, "path_and_query", "body"))),
    ("the session after the path",
     Scheme(fields=(*_HEAD, _IP, "path_and_query", _SESSION, "body"))),
    ("both headers after the path",
     Scheme(fields=(*_HEAD, "path_and_query", _SESSION, _IP, "body"))),
    ("both headers after the body",
     Scheme(fields=(*_HEAD, "path_and_query", "body", _SESSION, _IP))),
    ("client IP before the session",
     Scheme(fields=(*_HEAD, _IP, _SESSION, "path_and_query", "body"))),
    ("the query left out of the path",
     Scheme(fields=(*_HEAD, _SESSION, _IP, "path", "body"))),
    ("the optional headers kept as empty lines when absent",
     Scheme(fields=(*_HEAD, "header:X-Player-Session-Id", "header:X-Client-Ip",
                    "path_and_query", "body"))),
    # The 2015 sample ("amx classic"): no separator, the lower-cased URL-encoded absolute
    # URI, the body's MD5 in base64, the secret base64-decoded; seconds, then ms.
    ("the 2015 ASP.NET sample's layout",
     Scheme(fields=_CLASSIC, separator="", secret_encoding="base64")),
    ("the 2015 sample's layout, milliseconds",
     Scheme(fields=_CLASSIC, separator="", secret_encoding="base64", timestamp_unit="ms")),
    ("the 2015 sample's layout, the secret as text",
     Scheme(fields=_CLASSIC, separator="", secret_encoding="utf-8")),
    # Aleacc's layout with the secret's text as the key, as some clients misread it.
    ("Aleacc's scheme, the secret as text", Scheme(secret_encoding="utf-8")),
    ("Aleacc's scheme, milliseconds", Scheme(timestamp_unit="ms")),
    # What this gateway signed before the example was reproduced.
    ("the gateway's earlier layout",
     Scheme(fields=(*_HEAD, "method", "path_and_query", "content_type", "body"),
            secret_encoding="utf-8")),
)  # fmt: skip
