"""Test-side wire tools: a fault-injecting TCP relay and an independent HTTP/1.1 parser check.

No such relay can be installed here, so this is a small asyncio one. The framing check
uses h11, a parser that shares no code with aiohttp's.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Literal

import h11

HOP_BY_HOP = {
    b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade",
    b"proxy-connection", b"proxy-authorization",
}  # fmt: skip

Mode = Literal["pass", "blackhole", "reset_on_request", "cut_response"]


@dataclass
class Relay:
    """Listens on loopback and relays to ``target``, recording what the gateway sends.

    Modes: ``pass``; ``blackhole`` (accept, read, never answer); ``reset_on_request``
    (reset the connection as soon as a request arrives); ``cut_response`` (relay
    ``cut_after`` bytes of the answer, then reset).
    """

    target: tuple[str, int]
    mode: Mode = "pass"
    cut_after: int = 0
    streams: list[bytearray] = field(default_factory=list)
    open_connections: int = 0
    client_closed: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self, sock: object = None) -> Relay:
        if sock is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        else:
            self._server = await asyncio.start_server(self._handle, sock=sock)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.open_connections += 1
        received = bytearray()
        self.streams.append(received)
        upstream: asyncio.StreamWriter | None = None
        try:
            if self.mode == "blackhole":
                while chunk := await reader.read(65536):
                    received += chunk
                return
            if self.mode == "reset_on_request":
                received += await reader.read(65536)
                writer.transport.abort()
                return
            up_reader, upstream = await asyncio.open_connection(*self.target)
            await asyncio.gather(
                self._pump(reader, upstream, received, limit=None),
                self._pump(
                    up_reader,
                    writer,
                    None,
                    limit=self.cut_after if self.mode == "cut_response" else None,
                ),
            )
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.client_closed.set()
            self.open_connections -= 1
            for w in (writer, upstream):
                if w is not None:
                    w.close()
            self._tasks.discard(task)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        record: bytearray | None,
        limit: int | None,
    ) -> None:
        sent = 0
        while chunk := await reader.read(65536):
            if record is not None:
                record += chunk
            if limit is not None and sent + len(chunk) >= limit:
                writer.write(chunk[: limit - sent])
                await writer.drain()
                writer.transport.abort()  # a reset mid-answer
                raise ConnectionResetError
            writer.write(chunk)
            sent += len(chunk)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()


class FramingError(AssertionError):
    """What the gateway sent upstream is not one clean HTTP/1.1 message per request."""


def check_framing(stream: bytes) -> int:
    """Parse everything one connection carried; return the number of requests in it.

    Fails unless every request is a well-formed HTTP/1.1 message with a Content-Length
    equal to its body (or no body), no Transfer-Encoding, no hop-by-hop header, and
    the stream ends between messages.
    """
    _check_heads_strictly(stream)
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(stream)
    conn.receive_data(b"")
    requests = 0
    body = 0
    declared: int | None = None
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise FramingError(f"h11 refused the stream: {exc}") from None
        if isinstance(event, h11.Request):
            names = [name.lower() for name, _ in event.headers]
            lengths = [v for n, v in event.headers if n.lower() == b"content-length"]
            if b"transfer-encoding" in names:
                raise FramingError("Transfer-Encoding sent upstream")
            if HOP_BY_HOP & set(names):
                raise FramingError(f"hop-by-hop header sent upstream: {HOP_BY_HOP & set(names)}")
            if names.count(b"host") != 1 or len(lengths) > 1:
                raise FramingError("Host or Content-Length not exactly once")
            declared = int(lengths[0]) if lengths else None
            body = 0
        elif isinstance(event, h11.Data):
            body += len(event.data)
        elif isinstance(event, h11.EndOfMessage):
            if declared is not None and declared != body:
                raise FramingError(f"Content-Length {declared} but {body} body bytes")
            requests += 1
            conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
            conn.send(h11.EndOfMessage())
            conn.start_next_cycle()
        elif event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
            if conn.their_state not in (h11.IDLE, h11.DONE, h11.CLOSED, h11.MUST_CLOSE):
                raise FramingError(f"the stream ends inside a message ({conn.their_state})")
            return requests
        elif event is h11.PAUSED:  # pragma: no cover - we always answer before reading on
            raise FramingError("h11 paused")


def _check_heads_strictly(stream: bytes) -> None:
    """What h11 tolerates but a clean sender never emits: bare LF, obs-fold, repeats."""
    offset = 0
    while offset < len(stream):
        end = stream.find(b"\r\n\r\n", offset)
        if end < 0:
            raise FramingError("a message head does not end in CRLF CRLF")
        head = stream[offset:end]
        if b"\n" in head.replace(b"\r\n", b""):
            raise FramingError("bare LF in a message head")
        lines = head.split(b"\r\n")
        if any(line[:1] in (b" ", b"\t") for line in lines[1:]):
            raise FramingError("obs-fold in a message head")
        lengths = [ln for ln in lines[1:] if ln.lower().startswith(b"content-length:")]
        if len(lengths) > 1:
            raise FramingError("Content-Length repeated")
        body = int(lengths[0].split(b":", 1)[1]) if lengths else 0
        offset = end + 4 + body
