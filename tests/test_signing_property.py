"""Property: whatever the gateway signs, the stand-in verifies from the bytes it received."""

from __future__ import annotations

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from gateway.errors import BadRequest
from gateway.forwarding import check_target
from gateway.mock.upstream import journal

from .support import Gateway, Mock

# RFC 3986 pchar without '%', plus percent-escapes that tempt normalisation.
PCHAR = "abcXYZ019-._~!$&'()*+,;=:@"
ESCAPES = ["%20", "%2F", "%2f", "%7e", "%7E", "%C3%A4", "%25", "%3F", "%23", "%2B"]
segment = st.lists(
    st.sampled_from(list(PCHAR)) | st.sampled_from(ESCAPES), min_size=1, max_size=8
).map("".join)


def accepted(target: str) -> bool:
    """The gateway's own rule: dot segments (also "..;x", also encoded) are refused
    before signing, and tested elsewhere."""
    try:
        check_target("GET", target)
    except BadRequest:
        return False
    return True


path = st.lists(segment, min_size=1, max_size=5).map(lambda s: "/" + "/".join(s)).filter(accepted)
# A query may carry encoded control bytes (the gateway refuses them only in paths).
query = st.lists(
    st.sampled_from(list(PCHAR + "/?")) | st.sampled_from([*ESCAPES, "%00", "%0D%0A"]),
    max_size=20,
).map("".join)


@settings(
    max_examples=150,
    deadline=None,
    # One stand-in and one gateway serve every example: that is the point of the test.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]),
    path=path,
    query=query,
    body=st.binary(max_size=2048),
    content_type=st.none() | st.sampled_from(["application/json", "text/plain; charset=utf-8"]),
)
async def test_the_stand_in_accepts_what_the_gateway_signs(
    gateway: Gateway,
    mock: Mock,
    client: aiohttp.ClientSession,
    method: str,
    path: str,
    query: str,
    body: bytes,
    content_type: str | None,
) -> None:
    target = path + (f"?{query}" if query else "")
    headers = {"Content-Type": content_type} if content_type else {}
    url = URL(f"{gateway.url}{target}", encoded=True)
    async with client.request(method, url, data=body or None, headers=headers) as r:
        await r.read()
        # Verification precedes routing at the stand-in: an unknown path after a good
        # signature is 404; a bad signature would be 403.
        assert r.status == 404, (r.status, journal(mock.app)[-1])
    assert journal(mock.app)[-1].error == "not_found"
