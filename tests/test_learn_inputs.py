"""``learn`` reads its sample files as untrusted: every malformed or oversized input is
one line naming the file (and the entry), exit 2, never a traceback, a hang or unbounded
memory. The corpus is tests/data/learn/; the cases too large to keep are made here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.discover.samples import (
    MAX_BODY_BYTES,
    MAX_FILE_BYTES,
    MAX_SAMPLES,
    SampleError,
    dechunked,
    parse_raw,
)

from .support import run_cli

CORPUS = Path(__file__).parent / "data" / "learn"
AUTH = (
    "amx 12345678901234567890123456789012:pYEt3GtOHzf1Y16hb3fSlnbpGTB+cdXo6EEx9WgfR1w=:1:1433313039"
)
SECRET = {"LEARN_SECRET": "12345678901234567890123456789012" * 2}
NO_SPACE = "(whitespace before the colon or at the start of the line is not allowed in HTTP/1.1)"
SESSION = "X-Player-Session-Id"


def har(*entries: dict[str, object]) -> str:
    return json.dumps({"log": {"entries": list(entries)}})


def signed_entry(url: str = "https://aleacc.example.com/player/signin") -> dict[str, object]:
    headers = [{"name": "Authorization", "value": AUTH}]
    return {"request": {"method": "GET", "url": url, "headers": headers}}


def unsigned_entry() -> dict[str, object]:
    return {"request": {"method": "GET", "url": "https://h/"}}


async def learn_on(option: str, path: Path) -> tuple[int, str, str]:
    return await run_cli(
        "learn",
        "--secret-env",
        "LEARN_SECRET",
        option,
        str(path),
        "--max-fields",
        "4",
        env=SECRET,
    )


@pytest.mark.parametrize(
    ("name", "option", "message"),
    [
        ("deeply-nested.har", "--har", "not a HAR file (nested too deeply)"),
        ("not-utf8.har", "--har", "not UTF-8 text (byte 0xff at offset 69)"),
        ("bad-chunked.raw", "--raw", "the chunked body is malformed (a chunk size line)"),
        ("entry-not-a-request.har", "--har", "entry 1 is not a HAR request"),
        ("space-before-colon.raw", "--raw", f"line 2: 'Host ' is not a header name {NO_SPACE}"),
        (
            "nul-in-value.raw",
            "--raw",
            f"line 4: the value of {SESSION} holds a control character (0x00)",
        ),
    ],
)
async def test_each_hostile_file_is_one_line_naming_it(
    name: str, option: str, message: str
) -> None:
    path = CORPUS / name
    code, out, err = await learn_on(option, path)
    assert code == 2, out + err
    assert err == f"learn: {path}: {message}\n"
    assert "Traceback" not in out + err


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: har(signed_entry("https://aleacc.example.com/" + "a" * 20_000_000)),
         "entry 1: the URL is over 8 KiB"),
        (lambda: har(*[unsigned_entry()] * 20_001),
         "more than 20,000 entries: export fewer"),
        (lambda: " " * (MAX_FILE_BYTES + 1), f"larger than {MAX_FILE_BYTES // 2**20} MiB"),
    ],
    ids=["a-20-MB-URL", "too-many-entries", "a-file-over-the-limit"],
)  # fmt: skip
async def test_oversized_inputs_are_refused_before_they_are_searched(
    tmp_path: Path, make: object, message: str
) -> None:
    path = tmp_path / "big.har"
    path.write_text(make())  # type: ignore[operator]
    code, out, err = await learn_on("--har", path)
    assert code == 2, out + err
    assert err.startswith(f"learn: {path}")
    assert message in err
    assert len(err.splitlines()) == 1


async def test_repeated_entries_are_used_once_and_the_samples_are_capped(
    tmp_path: Path,
) -> None:
    # 1,000 signed entries, all the same but for 20 URLs: 20 distinct samples, 16 used.
    entries = [signed_entry(f"https://aleacc.example.com/p{i % 20}") for i in range(1000)]
    path = tmp_path / "many.har"
    path.write_text(har(*entries))
    code, _, err = await learn_on("--har", path)
    assert f"learn: {MAX_SAMPLES} of 1000 samples used (duplicates dropped, at most 16)" in err
    assert code == 1  # they were not signed under any scheme: searched, none fits


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
        (b"2;ext=1\r\nhi\r\n3\r\n yo\r\n0\r\nTrailer: x\r\n\r\n", b"hi yo"),
        (b"5\nhello\n0\n\n", b"hello"),  # bare LF, as a hand-made file has them
    ],
)
def test_a_chunked_raw_body_is_decoded(body: bytes, expected: bytes) -> None:
    assert dechunked(body, "f") == expected


@pytest.mark.parametrize(
    "body",
    [
        b"5\r\nab\r\n0\r\n\r\n",
        b"zz\r\nab\r\n",
        b"5\r\nhello",
        f"{MAX_BODY_BYTES + 1:x}\r\n".encode(),
    ],
)
def test_a_malformed_or_oversized_chunked_body_is_refused(body: bytes) -> None:
    with pytest.raises(SampleError):
        dechunked(body, "f")


def test_a_raw_request_with_both_framings_is_refused() -> None:
    raw = (
        f"POST /x HTTP/1.1\r\nHost: h\r\nAuthorization: {AUTH}\r\n"
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    ).encode()
    with pytest.raises(SampleError, match="only a chunked body without Content-Length"):
        parse_raw(raw, "f")
