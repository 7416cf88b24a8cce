"""Signed requests that Aleacc accepted, read from what an integrator has at hand.

Pure parsing: a "Copy as cURL" command (Chrome, Firefox, Swagger UI), a HAR export, or
a raw HTTP/1.1 request in; request parts and the ``amx`` header they carried out.
Every error says which token or entry it could not use, never a header's value.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from multidict import CIMultiDict
from yarl import URL

from ..signing import Authorization, RequestParts, parse_authorization

# The samples are files an integrator found, and learn reads them as untrusted. What an
# accepted request can hold is bounded by what servers accept, and learn never needs more:
# a HAR of a long browser session is a few MB; an Aleacc body is at most the gateway's own
# default limit; common servers refuse URLs and headers beyond these.
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_URL_BYTES = 8 * 1024
MAX_HEADER_BYTES = 64 * 1024  # all of one request's header lines
MAX_BODY_BYTES = 1024 * 1024
MAX_HAR_ENTRIES = 20_000  # entries looked at, signed or not
# Samples searched: more tell nothing new and cost time in every verification.
MAX_SAMPLES = 16


class SampleError(ValueError):
    """A sample that cannot be used; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One accepted request: what was sent, and the header that signed it."""

    source: str
    parts: RequestParts
    auth: Authorization


# ------------------------------------------------------------------ curl


# curl options that take a value but change nothing that is signed.
_IGNORED_WITH_VALUE = frozenset(
    {"--connect-timeout", "-m", "--max-time", "--retry", "-o", "--output", "-w", "--write-out"}
)
# curl options without a value that change nothing that is signed.
_IGNORED_FLAGS = frozenset(
    {
        "--compressed", "-s", "--silent", "-S", "--show-error", "-i", "--include", "-k",
        "--insecure", "-L", "--location", "-v", "--verbose", "-g", "--globoff", "--http1.1",
        "--http2", "--http1.0", "-f", "--fail", "--no-buffer", "-N",
    }
)  # fmt: skip
_DATA = frozenset({"-d", "--data", "--data-raw", "--data-binary", "--data-ascii"})
_WITH_VALUE = _DATA | _IGNORED_WITH_VALUE | {
    "-X", "--request", "-H", "--header", "--url", "-b", "--cookie", "-A", "--user-agent",
    "-e", "--referer",
}  # fmt: skip
# $'...' escapes (bash's ANSI-C quoting), as Chrome's "Copy as cURL (bash)" writes them.
_ANSI_C = {
    "a": "\a", "b": "\b", "e": "\x1b", "E": "\x1b", "f": "\f", "n": "\n", "r": "\r",
    "t": "\t", "v": "\v", "\\": "\\", "'": "'", '"': '"', "?": "?",
}  # fmt: skip
_ANSI_C_NUMERIC = re.compile(
    r"x([0-9A-Fa-f]{1,2})|u([0-9A-Fa-f]{1,4})|U([0-9A-Fa-f]{1,8})|([0-7]{1,3})"
)


def shell_words(command: str) -> list[str]:
    """Split a bash command line: '...', "...", $'...', backslashes, line continuations."""
    words: list[str] = []
    word: list[str] | None = None
    i, n = 0, len(command)
    while i < n:
        c = command[i]
        if c in " \t\r\n":
            if word is not None:
                words.append("".join(word))
                word = None
            i += 1
            continue
        word = word if word is not None else []
        if c == "\\":
            if command[i + 1 : i + 2] == "\n":  # a line continuation
                i += 2
                if not word:
                    word = None
                continue
            word.append(command[i + 1 : i + 2])
            i += 2
        elif c == "'":
            end = command.find("'", i + 1)
            if end < 0:
                raise SampleError(f"unterminated ' quote at {_near(command, i)}")
            word.append(command[i + 1 : end])
            i = end + 1
        elif c == "$" and command[i + 1 : i + 2] == "'":
            text, i = _ansi_c(command, i + 2)
            word.append(text)
        elif c == '"':
            text, i = _double_quoted(command, i + 1)
            word.append(text)
        else:
            word.append(c)
            i += 1
    if word is not None:
        words.append("".join(word))
    return words


def _near(command: str, i: int) -> str:
    return repr(command[max(0, i - 10) : i + 20])


def _ansi_c(command: str, i: int) -> tuple[str, int]:
    out: list[str] = []
    while i < len(command):
        c = command[i]
        if c == "'":
            # Bash's \xHH and \NNN are bytes: rebuild the UTF-8 they spell.
            return "".join(out).encode("latin-1", "surrogateescape").decode(
                "utf-8", "surrogateescape"
            ), i + 1
        if c != "\\":
            out.append(c.encode("utf-8").decode("latin-1"))
            i += 1
            continue
        nxt = command[i + 1 : i + 2]
        if nxt in _ANSI_C:
            out.append(_ANSI_C[nxt])
            i += 2
            continue
        match = _ANSI_C_NUMERIC.match(command, i + 1)
        if match is None:
            out.append("\\" + nxt)
            i += 2
            continue
        hex_byte, u4, u8, octal = match.groups()
        if hex_byte or octal:
            out.append(chr(int(hex_byte, 16) if hex_byte else int(octal, 8) & 0xFF))
        else:
            out.append(chr(int(u4 or u8, 16)).encode("utf-8").decode("latin-1"))
        i = match.end()
    raise SampleError(f"unterminated $' quote at {_near(command, i)}")


def _double_quoted(command: str, i: int) -> tuple[str, int]:
    out: list[str] = []
    while i < len(command):
        c = command[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\\" and command[i + 1 : i + 2] in ('"', "\\", "$", "`", "\n"):
            if command[i + 1] != "\n":
                out.append(command[i + 1])
            i += 2
            continue
        if c in "$`":
            raise SampleError(f"cannot expand {c!r} inside double quotes at {_near(command, i)}")
        out.append(c)
        i += 1
    raise SampleError(f'curl: unterminated " quote at {_near(command, i)}')


def parse_curl(command: str, source: str = "--curl") -> Sample:
    """A sample from a "Copy as cURL" command line."""
    try:
        words = shell_words(command)
    except SampleError as exc:
        raise SampleError(f"{source}: {exc}") from None
    if not words or words[0] not in ("curl", "curl.exe"):
        raise SampleError(f"{source}: expected a command starting with 'curl'")
    method: str | None = None
    url: str | None = None
    headers: CIMultiDict[str] = CIMultiDict()
    data: list[str] = []
    i = 1
    while i < len(words):
        word = words[i]
        option, eq, inline = word.partition("=") if word.startswith("--") else (word, "", "")
        if option in _WITH_VALUE:
            if eq:
                value = inline
            elif i + 1 < len(words):
                value = words[i + 1]
                i += 1
            else:
                raise SampleError(f"{source}: {option} needs a value")
            if option in ("-X", "--request"):
                method = value
            elif option in ("-H", "--header"):
                name, sep, header = value.partition(":")
                if not sep or not name.strip():
                    raise SampleError(f"{source}: header {name.strip()!r} is not 'Name: value'")
                headers.add(name.strip(), header.strip())
            elif option == "--url":
                url = value
            elif option in ("-b", "--cookie"):
                headers.add("Cookie", value)
            elif option in ("-A", "--user-agent"):
                headers.add("User-Agent", value)
            elif option in ("-e", "--referer"):
                headers.add("Referer", value)
            elif option in _DATA:
                if value.startswith("@") and option != "--data-raw":
                    raise SampleError(
                        f"{source}: {option} {value[:40]!r} reads a file: paste the body"
                    )
                data.append(value)
        elif option in _IGNORED_FLAGS:
            pass
        elif word.startswith("-") and word != "-":
            raise SampleError(
                f"{source}: cannot use curl option {word!r} (it may change what was signed)"
            )
        elif url is None:
            url = word
        else:
            raise SampleError(f"{source}: a second URL {word!r}")
        i += 1
    if url is None:
        raise SampleError(f"{source}: no URL in the command")
    body = "&".join(data).encode("utf-8", "surrogateescape")
    return _sample(source, method or ("POST" if data else "GET"), url, headers, body)


# ------------------------------------------------------------------ HAR


def decoded(data: bytes, source: str) -> str:
    """A sample file's text; SampleError naming the file for anything but UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SampleError(
            f"{source}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None


def parse_har(text: str, source: str) -> list[Sample]:
    """Every entry of a HAR export whose request carries an ``amx`` Authorization."""
    try:
        entries = json.loads(text)["log"]["entries"]
    except RecursionError:
        raise SampleError(f"{source}: not a HAR file (nested too deeply)") from None
    except (ValueError, KeyError, TypeError):
        raise SampleError(f"{source}: not a HAR file (no log.entries)") from None
    if not isinstance(entries, list):
        raise SampleError(f"{source}: not a HAR file (log.entries is not a list)")
    if len(entries) > MAX_HAR_ENTRIES:
        raise SampleError(f"{source}: more than {MAX_HAR_ENTRIES:,} entries: export fewer")
    samples = []
    for number, entry in enumerate(entries, 1):
        try:
            request = entry["request"]
            pairs = [(h["name"], h["value"]) for h in request.get("headers", [])]
            if not any(n.lower() == "authorization" and v.startswith("amx ") for n, v in pairs):
                continue
            # HTTP/2 pseudo-headers (":authority") are not headers of the request.
            headers = CIMultiDict((n, v) for n, v in pairs if not n.startswith(":"))
            body = (
                (request.get("postData") or {}).get("text", "").encode("utf-8", "surrogateescape")
            )
            samples.append(
                _sample(
                    f"{source} entry {number}", request["method"], request["url"], headers, body
                )
            )
        except (KeyError, TypeError, AttributeError, UnicodeError):
            raise SampleError(f"{source}: entry {number} is not a HAR request") from None
    if not samples:
        raise SampleError(f"{source}: no entry carries an 'Authorization: amx ...' header")
    return samples


# ------------------------------------------------------------------ raw HTTP/1.1


def parse_raw(data: bytes, source: str, scheme: str = "https") -> Sample:
    """A sample from an HTTP/1.1 request as bytes (origin-form target, a Host header)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")
    lines = head.decode("utf-8", "surrogateescape").replace("\r\n", "\n").split("\n")
    request_line = lines[0].split(" ")
    if len(request_line) != 3 or not request_line[2].startswith("HTTP/"):
        raise SampleError(f"{source}: the first line is not 'METHOD /target HTTP/1.1'")
    method, target, _ = request_line
    headers: CIMultiDict[str] = CIMultiDict()
    for number, line in enumerate(lines[1:], 2):
        name, value = _header_line(line, f"{source}: line {number}")
        headers.add(name, value)
    codings = headers.get("Transfer-Encoding")
    if codings is not None:
        if codings.strip().lower() != "chunked" or "Content-Length" in headers:
            raise SampleError(f"{source}: only a chunked body without Content-Length is read")
        body = dechunked(body, source)
    length = headers.get("Content-Length")
    if length is not None:
        if not length.isdigit() or int(length) > len(body):
            raise SampleError(f"{source}: Content-Length {length[:20]!r} does not match the body")
        body = body[: int(length)]
    if target.startswith("/"):
        host = headers.get("Host")
        if not host:
            raise SampleError(f"{source}: no Host header for the target {target[:40]!r}")
        target = f"{scheme}://{host}{target}"
    return _sample(source, method, target, headers, body)


# RFC 9110 §5.1: a field name is a token. Whitespace before the colon (RFC 9112 §5.1)
# or at the start of the line (a folded line, §5.2) is not part of a token either.
_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# RFC 9110 §5.5: no control character in a value but HTAB (NUL, CR and LF are named).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _header_line(line: str, where: str) -> tuple[str, str]:
    """A raw request's header line as (name, value); SampleError for what HTTP/1.1 refuses."""
    name, colon, value = line.partition(":")
    if not colon or not name.strip():
        raise SampleError(f"{where}: header line {name[:40]!r} is not 'Name: value'")
    if not _FIELD_NAME.fullmatch(name):
        # A server must refuse such a message, so Aleacc never signed one.
        raise SampleError(
            f"{where}: {name[:40]!r} is not a header name (whitespace before the colon or "
            "at the start of the line is not allowed in HTTP/1.1)"
        )
    control = _CONTROL.search(value)
    if control is not None:
        byte = ord(control.group())
        raise SampleError(f"{where}: the value of {name} holds a control character (0x{byte:02x})")
    return name, value.strip(" \t")


_CHUNK_SIZE = re.compile(rb"^([0-9A-Fa-f]{1,8})(;[^\r\n]*)?\r?$")


def dechunked(data: bytes, source: str) -> bytes:
    """A chunked body (RFC 9112 §7.1) decoded strictly; SampleError for any flaw."""
    body = bytearray()
    rest = data
    while True:
        line, found, rest = rest.partition(b"\n")
        match = _CHUNK_SIZE.match(line)
        if not found or match is None:
            raise SampleError(f"{source}: the chunked body is malformed (a chunk size line)")
        size = int(match.group(1), 16)
        if size == 0:
            return bytes(body)  # trailer fields, if any, are not signed
        if len(body) + size > MAX_BODY_BYTES:
            raise SampleError(f"{source}: the body is over {MAX_BODY_BYTES // 1024} KiB")
        chunk, rest = rest[:size], rest[size:]
        if len(chunk) < size or not rest.startswith((b"\r\n", b"\n")):
            raise SampleError(f"{source}: the chunked body is malformed (a chunk is cut)")
        body += chunk
        rest = rest[2:] if rest.startswith(b"\r\n") else rest[1:]


def _sample(source: str, method: str, url: str, headers: CIMultiDict[str], body: bytes) -> Sample:
    if len(url) > MAX_URL_BYTES:
        raise SampleError(f"{source}: the URL is over {MAX_URL_BYTES // 1024} KiB")
    if sum(len(n) + len(v) + 4 for n, v in headers.items()) > MAX_HEADER_BYTES:
        raise SampleError(f"{source}: the headers are over {MAX_HEADER_BYTES // 1024} KiB")
    if len(body) > MAX_BODY_BYTES:
        raise SampleError(f"{source}: the body is over {MAX_BODY_BYTES // 1024} KiB")
    try:
        parsed = URL(url, encoded=True)
    except ValueError:
        parsed = URL()
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise SampleError(f"{source}: {url[:60]!r} is not an absolute http(s) URL")
    values = headers.getall("Authorization", [])
    if len(values) != 1:
        raise SampleError(f"{source}: expected one Authorization header, found {len(values)}")
    auth = parse_authorization(values[0])
    if auth is None:
        scheme = values[0].partition(" ")[0][:20]
        raise SampleError(
            f"{source}: the Authorization header is not 'amx api_id:signature:request_id:"
            f"timestamp' (it starts {scheme!r})"
        )
    query = parsed.raw_query_string
    parts = RequestParts(
        method=method.upper(),
        scheme=parsed.scheme,
        host=headers.get("Host") or parsed.raw_authority,
        path_and_query=(parsed.raw_path or "/") + (f"?{query}" if query else ""),
        headers=headers,
        body=body,
    )
    return Sample(source, parts, auth)


def usable(samples: list[Sample]) -> list[Sample]:
    """The samples to search: duplicates dropped (a HAR repeats requests), at most
    MAX_SAMPLES of them, the first ones kept."""
    seen: set[tuple[object, ...]] = set()
    kept = []
    for sample in samples:
        parts = sample.parts
        key = (
            parts.method,
            parts.host,
            parts.path_and_query,
            parts.body,
            tuple(parts.headers.items()),
            sample.auth,
        )
        if key not in seen:
            seen.add(key)
            kept.append(sample)
    return kept[:MAX_SAMPLES]
