"""screen_headers: one pass over a request's header lines checks them and sorts them for
forwarding and signing. Pure, so tested on header lines directly; the functional and
hardening suites test the same rules through real sockets."""

from __future__ import annotations

import pytest

from gateway.errors import BadRequest
from gateway.forwarding import RequestHeaders, screen_headers

SIGNED = frozenset({b"x-player-session-id", b"x-forwarded-for", b"x-hop"})


def read(
    *lines: tuple[bytes, bytes], version: tuple[int, int] = (1, 1), proxy: bool = False
) -> RequestHeaders:
    return screen_headers(lines, version, forward_proxy_headers=proxy, signed=SIGNED)


def test_end_to_end_lines_pass_byte_for_byte_and_in_order() -> None:
    result = read(
        (b"Host", b"gw"),
        (b"X-Player-Session-Id", b"s\xe9ssion"),  # not UTF-8: the same bytes go on
        (b"accept", b"*/*"),
        (b"Content-Length", b"3"),
        (b"Authorization", b"caller's"),
        (b"X-Client-Ip", b"6.6.6.6"),
        (b"TE", b"trailers"),
    )
    assert result.lines == [b"X-Player-Session-Id: s\xe9ssion", b"accept: */*"]
    ((name, value),) = result.signed
    assert (name, value.encode("utf-8", "surrogateescape")) == (
        "X-Player-Session-Id",
        b"s\xe9ssion",
    )


def test_lines_named_by_connection_are_dropped_wherever_they_stand() -> None:
    result = read(
        (b"X-Hop", b"1"),  # before the Connection line that names it
        (b"Host", b"gw"),
        (b"Connection", b"keep-alive, X-HOP"),
        (b"X-Kept", b"2"),
    )
    assert result.lines == [b"X-Kept: 2"]
    assert result.signed == []  # never sent, so never signed


@pytest.mark.parametrize("proxy", [False, True])
def test_proxy_topology_is_read_and_passed_on_only_when_asked(proxy: bool) -> None:
    result = read(
        (b"Host", b"gw"),
        (b"X-Forwarded-For", b"203.0.113.7"),
        (b"x-forwarded-for", b"10.0.0.1"),
        (b"Forwarded", b"for=1.2.3.4"),
        proxy=proxy,
    )
    assert result.forwarded_for == ["203.0.113.7", "10.0.0.1"]
    if proxy:
        assert result.lines == [
            b"X-Forwarded-For: 203.0.113.7",
            b"x-forwarded-for: 10.0.0.1",
            b"Forwarded: for=1.2.3.4",
        ]
        assert [name for name, _ in result.signed] == ["X-Forwarded-For", "x-forwarded-for"]
    else:
        assert result.lines == []
        assert result.signed == []


@pytest.mark.parametrize(
    ("lines", "version", "reason"),
    [
        ([(b"Host", b"a"), (b"Host", b"b")], (1, 1), "exactly one Host"),
        ([], (1, 1), "exactly one Host"),
        ([(b"Host", b"a")], (2, 0), "only HTTP/1.0 and HTTP/1.1"),
        ([(b"Host", b"a"), (b"Expect", b"100-continue"), (b"Expect", b"x")], (1, 1), "expectation"),
        (
            [(b"Host", b"a"), (b"Content-Length", b"1"), (b"content-length", b"1")],
            (1, 1),
            "repeated",
        ),
        ([(b"Transfer-Encoding", b"chunked")], (1, 0), "not HTTP/1.0"),
        ([(b"Host", b"a"), (b"Transfer-Encoding", b"gzip, chunked")], (1, 1), "only the chunked"),
        ([(b"Host", b"a"), (b"Upgrade", b"h2c")], (1, 1), "upgrades"),
    ],
)
def test_ambiguous_requests_are_refused(
    lines: list[tuple[bytes, bytes]], version: tuple[int, int], reason: str
) -> None:
    with pytest.raises(BadRequest, match=reason):
        read(*lines, version=version)


def test_what_is_accepted() -> None:
    assert read((b"Host", b"a"), (b"Expect", b"100-Continue")).lines == []
    assert read((b"Transfer-Encoding", b"Chunked"), (b"Host", b"a")).lines == []
    assert read(version=(1, 0)).lines == []  # HTTP/1.0 needs no Host
