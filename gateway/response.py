"""One upstream answer: llhttp's callbacks turned into what the proxy reads.

``ResponseParser`` is the httptools callback object: it bounds the head (size, header
count, interim answers) and tells its ``Response`` what arrived. ``Response`` holds the
status and headers, buffers the body as it arrives with back-pressure on the connection,
and times out every wait for the upstream's bytes. The connection that feeds them, and
the pool it goes back to, are in pool.py.
"""

from __future__ import annotations

import asyncio
import re
from typing import Protocol

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from .errors import FaultKind, UpstreamFault

# Reading from the upstream pauses while this much of an answer waits for the caller.
_HIGH_WATER = 256 * 1024
# The status line and headers of an answer, at most (llhttp itself sets no limit);
# the count is aiohttp's own default, which the gateway's callers may well share.
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 128
# Interim (1xx) answers before the final one, at most: more is an upstream gone wrong.
MAX_INTERIM = 8
# A control other than HTAB, which aiohttp would refuse to frame in a status line.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# An answer's headers until its head is in: one empty mapping for all.
_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


class Stream(Protocol):
    """What a response may do to the connection it arrives on."""

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def release(self, reusable: bool) -> None:
        """The answer is finished with: back to the pool, kept alive if ``reusable``."""


class Response:
    """One upstream answer: status and headers at once, the body as it arrives."""

    def __init__(self, stream: Stream, method: str, timeout_s: float) -> None:
        self._stream = stream
        self._timeout_s = timeout_s
        self.head_request = method == "HEAD"
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDictProxy[str] = _NO_HEADERS
        # The header lines as received (names and values as bytes), in order.
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self.complete = False
        self.headers_in = False
        self._until_eof = False
        self._keep_alive = False
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._fault: FaultKind | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._released = False

    # ---------------------------------------------------------------- for the proxy

    async def wait_for_headers(self) -> None:
        while not self.headers_in:
            await self._wait()

    async def readany(self) -> bytes:
        """The next part of the body as it arrived; b"" once the body is complete."""
        while not self._chunks:
            if self.complete:
                return b""
            await self._wait()
        data = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
        self._chunks.clear()
        self._buffered = 0
        if self._paused:
            self._paused = False
            self._stream.resume_reading()
        return data

    async def read(self) -> bytes:
        """The whole body."""
        while not self.complete:
            await self._wait()
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data

    def release(self) -> None:
        """Hand the connection back (kept alive only after a complete, clean answer)."""
        if self._released:
            return
        self._released = True
        reusable = (
            self.complete
            and self._fault is None
            and not self._until_eof
            and not self.head_request
            and self._keep_alive
        )
        self._stream.release(reusable)

    # ---------------------------------------------------------------- from the parser

    def head_received(
        self,
        status: int,
        reason: str,
        headers: CIMultiDict[str],
        keep_alive: bool,
        raw_headers: list[tuple[bytes, bytes]],
    ) -> None:
        """The final answer's head (interim ones never get here). Raises UpstreamFault."""
        self.status = status
        self.reason = reason
        self.headers = CIMultiDictProxy(headers)
        self.raw_headers = raw_headers
        self._keep_alive = keep_alive
        codings = headers.get("Transfer-Encoding")
        if codings is not None and codings.replace(" ", "").lower() != "chunked":
            # A coding the gateway would strip with the header (it is hop-by-hop) while
            # passing the coded bytes on: refused, as on the request side (RFC 9112 §6.1).
            raise UpstreamFault("protocol", sent=True)
        length = headers.get("Content-Length")
        self.content_length = int(length) if length is not None else None
        no_body = self.head_request or status in (204, 304)
        self._until_eof = not no_body and self.content_length is None and codings is None
        self.headers_in = True
        if self.head_request:
            # llhttp cannot be told the answer is to a HEAD, so it would wait for a body.
            self.complete = True
        self._wake()

    def body_received(self, data: bytes) -> None:
        if self.complete:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER and not self._paused:
            self._paused = True
            self._stream.pause_reading()
        self._wake()

    def message_complete(self) -> None:
        self.complete = True
        self._wake()

    def fail(self, kind: FaultKind) -> None:
        if self._fault is None and not self.complete:
            self._fault = kind
        self._wake()

    def connection_lost(self) -> None:
        if self.headers_in and self._until_eof:
            self.message_complete()  # a body delimited by the end of the connection
        else:
            self.fail("cut" if self.headers_in else "reset")

    # ---------------------------------------------------------------- waiting

    async def _wait(self) -> None:
        if self._fault is not None:
            raise UpstreamFault(self._fault, sent=True)
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        # A bare timer, not asyncio.timeout(): this runs several times per request.
        timer = loop.call_later(self._timeout_s, self._timed_out)
        try:
            await self._waiter
        finally:
            timer.cancel()
            self._waiter = None
        if self._fault is not None:
            raise UpstreamFault(self._fault, sent=True)

    def _timed_out(self) -> None:
        self.fail("timeout")
        self._stream.close()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class ResponseParser:
    """llhttp's callbacks for the answers on one connection, with each head's bounds;
    feeds the current answer's Response.

    One per connection, not per answer: llhttp parses a keep-alive connection's answers
    one after another, and a connection is only reused after a complete, clean answer
    (Response.release), when the parser is ready for the next one.
    """

    def __init__(self) -> None:
        self._response: Response | None = None
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._reason = b""
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._received_early = 0
        self._head_bytes = 0
        self._interim = 0
        self._final = False

    def begin(self, response: Response) -> None:
        """The next bytes are ``response``'s."""
        self._response = response
        self._received_early = self._head_bytes = self._interim = 0
        self._final = False

    def close(self) -> None:
        """Let go of llhttp's parser, which holds this object: no cycle left for the GC."""
        self._parser = None
        self._response = None

    def feed(self, data: bytes) -> bool:
        """Parse ``data``; False when the answer is malformed or its head too large (the
        response has failed, and the connection must close)."""
        response, parser = self._response, self._parser
        if parser is None or response is None:
            return False
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            response.fail("protocol")
            return False
        if not response.headers_in:
            # httptools holds a header until its end, so this bounds what an endless
            # one can pile up.
            self._received_early += len(data)
            if self._received_early > MAX_HEAD_BYTES:
                response.fail("protocol")
                return False
        return True

    # ---------------------------------------------------------------- httptools callbacks

    def on_message_begin(self) -> None:
        if self._response is None or self._response.complete:
            # A second answer to one request: stop here; the connection is closed.
            raise UpstreamFault("protocol", sent=True)
        self._reason = b""
        self._raw_headers = []

    def on_status(self, reason: bytes) -> None:
        self._reason += reason
        self._count_head(len(reason))

    def on_header(self, name: bytes, value: bytes) -> None:
        # Kept as bytes, decoded once the head is whole (on_headers_complete); the size
        # is counted here, not in a call to _count_head: this runs for every header line.
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_HEAD_BYTES or len(self._raw_headers) == MAX_HEADERS:
            raise UpstreamFault("protocol", sent=True)  # the parser stops; a 502 follows
        self._raw_headers.append((name, value))

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise UpstreamFault("protocol", sent=True)  # the parser stops; a 502 follows

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None  # noqa: S101 - only it calls back
        status = parser.get_status_code()
        if not 100 <= status <= 599:
            # RFC 9110 §15: three digits from 100 to 599. "099" would be relayed as an
            # invalid "99", and 0 is what Response takes for "no final answer yet".
            raise UpstreamFault("protocol", sent=True)
        if status < 200:
            # An interim answer (103 Early Hints, a stray 100): the final one follows.
            self._interim += 1
            if self._interim > MAX_INTERIM:
                raise UpstreamFault("protocol", sent=True)
            return
        if _CONTROL.search(self._reason) is not None:
            # llhttp lets a reason phrase carry controls that no header line may (RFC
            # 9110 §5.5); relayed, they would reach the caller's parser.
            raise UpstreamFault("protocol", sent=True)
        self._final = True
        response = self._response
        assert response is not None  # noqa: S101 - on_message_begin checked it
        headers = CIMultiDict(
            [
                (name.decode("ascii", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
                for name, value in self._raw_headers
            ]
        )
        response.head_received(
            status,
            self._reason.decode("latin-1"),
            headers,
            bool(parser.should_keep_alive()),
            self._raw_headers,
        )

    def on_body(self, data: bytes) -> None:
        if self._response is not None:
            self._response.body_received(data)

    def on_message_complete(self) -> None:
        if self._final and self._response is not None:  # not the end of an interim answer
            self._response.message_complete()
