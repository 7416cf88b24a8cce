"""The framing check itself refuses what a smuggling gateway would send."""

from __future__ import annotations

import pytest

from .wire import FramingError, check_framing

GOOD = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok"


def test_one_clean_message_counts_one() -> None:
    assert check_framing(GOOD) == 1
    assert check_framing(GOOD + GOOD) == 2
    assert check_framing(b"") == 0


@pytest.mark.parametrize(
    "stream",
    [
        b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
        b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: h\r\nHost: i\r\n\r\n",
        b"GET /x HTTP/1.1\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nok",  # truncated body
        b"GET /x HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",  # obs-fold
        b"GET /x HTTP/1.1\nHost: h\n\n",  # bare LF
    ],
)
def test_bad_streams_are_refused(stream: bytes) -> None:
    with pytest.raises(FramingError):
        check_framing(stream)


def test_a_smuggled_second_request_is_counted() -> None:
    smuggled = (
        b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"
        b"GET /admin HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    assert check_framing(smuggled) == 2  # the fixtures expect 1 per request: this fails them
