"""The X-Forwarded-For walk (docs/signing.md), as a table."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.client_ip import (
    KNOWN_ADDRESSES,
    NetworkSet,
    derive_client_ip,
    parse_address,
    parse_network,
)

TRUSTED = NetworkSet(
    map(parse_network, ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "2001:db8:ffff::/48"])
)

CASES = [
    # peer, X-Forwarded-For lines, expected address, expected source
    ("203.0.113.9", ["198.51.100.1"], "203.0.113.9", "peer"),  # untrusted peer: header ignored
    ("127.0.0.1", [], "127.0.0.1", "peer"),  # trusted peer, no header
    ("127.0.0.1", ["198.51.100.1"], "198.51.100.1", "xff"),
    ("127.0.0.1", ["198.51.100.1, 10.0.0.2, 10.0.0.3"], "198.51.100.1", "xff"),  # proxy chain
    ("127.0.0.1", ["1.1.1.1, 198.51.100.1, 10.0.0.2"], "198.51.100.1", "xff"),  # forged left part
    ("127.0.0.1", ["10.0.0.1, 10.0.0.2"], "10.0.0.1", "fallback"),  # all trusted: leftmost
    ("127.0.0.1", ["198.51.100.1:5678"], "198.51.100.1", "xff"),  # IPv4 with port
    ("127.0.0.1", ["2001:db8::1"], "2001:db8::1", "xff"),
    ("127.0.0.1", ["[2001:db8::1]"], "2001:db8::1", "xff"),
    ("127.0.0.1", ["[2001:db8::1]:443"], "2001:db8::1", "xff"),
    ("127.0.0.1", ["2001:DB8:0:0::1"], "2001:db8::1", "xff"),  # canonical form out
    ("127.0.0.1", ["2001:db8:ffff::5, [2001:db8::7]:80"], "2001:db8::7", "xff"),
    ("::1", ["198.51.100.1"], "198.51.100.1", "xff"),  # IPv6 loopback peer
    ("::ffff:127.0.0.1", ["198.51.100.1"], "198.51.100.1", "xff"),  # dual-stack peer
    ("127.0.0.1", ["  198.51.100.1 ,\t10.0.0.2  "], "198.51.100.1", "xff"),  # whitespace
    ("127.0.0.1", ["198.51.100.1", "10.0.0.2"], "198.51.100.1", "xff"),  # two field lines
    ("127.0.0.1", ["198.51.100.1, 10.0.0.2", "10.0.0.3"], "198.51.100.1", "xff"),
    ("127.0.0.1", ["198.51.100.2", "198.51.100.1"], "198.51.100.1", "xff"),  # order kept
    ("127.0.0.1", ["198.51.100.1, garbage, 10.0.0.2"], "10.0.0.2", "fallback"),  # stops walk
    ("127.0.0.1", ["garbage"], "127.0.0.1", "fallback"),  # nothing valid: the peer
    ("127.0.0.1", [""], "127.0.0.1", "fallback"),  # empty header
    ("127.0.0.1", ["198.51.100.1,,10.0.0.2"], "10.0.0.2", "fallback"),  # empty entry
    ("127.0.0.1", ["unknown, 10.0.0.2"], "10.0.0.2", "fallback"),  # RFC 7239 obfuscated
    ("127.0.0.1", ["198.51.100.1:99999"], "127.0.0.1", "fallback"),  # bad port
    ("127.0.0.1", ["[2001:db8::1"], "127.0.0.1", "fallback"),  # unclosed bracket
    ("127.0.0.1", ["[2001:db8::1]x"], "127.0.0.1", "fallback"),
    # An IPv6 zone is malformed: ipaddress would keep any text after "%" as its scope.
    ("127.0.0.1", ["fe80::2%25'\"{}"], "127.0.0.1", "fallback"),
    ("127.0.0.1", ["198.51.100.1, fe80::2%eth0"], "127.0.0.1", "fallback"),
    ("127.0.0.1", ["[fe80::2%eth0]:443"], "127.0.0.1", "fallback"),
    ("fe80::1%eth0", ["198.51.100.1"], "fe80::1", "peer"),  # a peer's zone is dropped
    ("127.0.0.1", ["1.2.3.4.5"], "127.0.0.1", "fallback"),
    ("127.0.0.1", ["198.51.100.1\x00"], "127.0.0.1", "fallback"),
    ("127.0.0.1", ["198.51.100.1, " * 1000 + "10.0.0.1"], "198.51.100.1", "xff"),  # long chain
]


@pytest.mark.parametrize(("peer", "xff", "address", "source"), CASES)
def test_derive_client_ip(peer: str, xff: list[str], address: str, source: str) -> None:
    result = derive_client_ip(peer, xff, TRUSTED)
    assert (result.address, result.source) == (address, source)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        ("1.2.3.4:80", "1.2.3.4"),
        ("[::1]:80", "::1"),
        ("::1", "::1"),
        ("1.2.3.4:", None),
        ("1.2.3.4:x", None),
        ("[1.2.3.4]", "1.2.3.4"),
        ("", None),
        ("[]", None),
        ("٣.٣.٣.٣", None),  # non-ASCII digits are not an address
    ],
)
def test_parse_address(text: str, expected: str | None) -> None:
    parsed = parse_address(text)
    assert (str(parsed) if parsed is not None else None) == expected


def test_unparseable_peer_is_passed_as_is() -> None:
    # A unix-socket peer has no IP; the header cannot be trusted then.
    assert derive_client_ip("", ["198.51.100.1"], TRUSTED).source == "peer"


def test_remembered_answers_stay_right_past_the_limit() -> None:
    trusted = NetworkSet([parse_network("10.0.0.0/8")])
    for n in range(KNOWN_ADDRESSES + 10):  # past the limit: forgotten once, asked again
        inside = ipaddress.ip_address(f"10.0.{n // 256}.{n % 256}")
        outside = ipaddress.ip_address(f"11.0.{n // 256}.{n % 256}")
        assert inside in trusted
        assert outside not in trusted
    assert ipaddress.ip_address("10.0.0.0") in trusted
