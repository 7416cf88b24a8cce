"""Derive the player's IP from the direct peer and ``X-Forwarded-For``.

Pure: trusted networks are parsed once at start-up; each request is one walk.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from typing import Literal, NamedTuple

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Source = Literal["xff", "peer", "fallback"]


def parse_network(value: str) -> Network:
    """Parse a CIDR (or a bare address, as a /32 or /128); raise ValueError if invalid."""
    return ipaddress.ip_network(value.strip(), strict=False)


def _canonical(address: Address) -> Address:
    # A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d; trust rules and
    # Aleacc's blacklists speak plain IPv4, so compare and report it that way.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=4096)
def parse_address(value: str) -> Address | None:
    """Parse an address as it appears in X-Forwarded-For or as a peer; None if malformed.

    Accepts ``1.2.3.4``, ``1.2.3.4:5678``, ``2001:db8::1``, ``[2001:db8::1]`` and
    ``[2001:db8::1]:443``.
    """
    text = value.strip()
    if "%" in text:
        # An IPv6 zone ("fe80::1%eth0"): ipaddress takes any text after the "%", which
        # would then be sent upstream as the player's address. Malformed here.
        return None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        port = text[end + 1 :]
        if port and not (port[0] == ":" and _is_port(port[1:])):
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # IPv4 with a port; a bare IPv6 has two or more colons
        text, _, port = text.partition(":")
        if not _is_port(port):
            return None
    try:
        return _canonical(ipaddress.ip_address(text))
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def _peer(peer: str) -> tuple[Address | None, str]:
    """The peer's address and its text as reported (canonical when it parses)."""
    # A link-local peer may carry its interface's zone: the address without it.
    address = parse_address(peer.partition("%")[0]) if peer else None
    return address, str(address) if address is not None else peer


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 5 and int(text) <= 65535


class ClientIp(NamedTuple):
    """The derived address and where it came from (a metric label)."""

    address: str
    source: Source


class NetworkSet:
    """A fixed set of networks, asked whether an address belongs to one of them: the
    proxies trusted to write X-Forwarded-For, or the clients a listener or tenant admits.

    Answers are remembered per address (up to KNOWN_ADDRESSES, then forgotten at once):
    the same few ingress and proxy addresses come with every request, and walking the
    networks for each would cost more than a dict lookup.
    """

    __slots__ = ("_known", "_networks")

    def __init__(self, networks: Iterable[Network]) -> None:
        self._networks = tuple(networks)
        self._known: dict[Address, bool] = {}

    def __contains__(self, address: Address) -> bool:
        known = self._known.get(address)
        if known is None:
            if len(self._known) >= KNOWN_ADDRESSES:
                self._known.clear()
            known = self._known[address] = any(address in network for network in self._networks)
        return known

    def __bool__(self) -> bool:
        return bool(self._networks)


KNOWN_ADDRESSES = 4096


@functools.lru_cache(maxsize=4096)
def _text(address: Address) -> str:
    return str(address)


def derive_client_ip(
    peer: str | None, forwarded_for: Sequence[str], trusted: NetworkSet
) -> ClientIp:
    """Apply the rule of docs/signing.md, "What the gateway does with headers".

    ``forwarded_for`` holds every X-Forwarded-For field line in order. Sources:
    ``peer`` when the peer is used as is (untrusted, or no header); ``xff`` when an
    untrusted address was found in the header; ``fallback`` when the header was
    consulted but yielded only trusted hops or was malformed.
    """
    peer_address, peer_text = _peer(peer or "")
    if peer_address is None or peer_address not in trusted or not forwarded_for:
        return ClientIp(peer_text, "peer")

    # Walk right to left: each hop appends the address it received from, so only the
    # rightmost entries were written by proxies we trust; anything left of the first
    # untrusted hop may be forged by the client (as uvicorn's proxy_headers explains).
    entries = ",".join(forwarded_for).split(",")
    last_valid: Address | None = None
    for entry in reversed(entries):
        address = parse_address(entry)
        if address is None:
            break
        if address not in trusted:
            return ClientIp(_text(address), "xff")
        last_valid = address
    else:
        # Every hop was trusted: the leftmost is the best guess at the origin.
        return ClientIp(str(last_valid), "fallback")
    return ClientIp(str(last_valid) if last_valid is not None else peer_text, "fallback")
