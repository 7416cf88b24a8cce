"""What a person at a terminal sees: learn's progress bar from the start of the search,
and Ctrl-C on a command that works for a while (learn, probe, demo): one line, exit
130, nothing it started left running. Each command runs on a pty of its own."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from gateway.mock.upstream import DEMO_SECRET

from .support import config_file, serve_handler
from .terminal import CTRL_C, Terminal

SAMPLES = Path(__file__).parent.parent / "config" / "samples"
LEARN_ON_THE_SAMPLES = (
    "learn", "--secret-env", "LEARN_SECRET",
    "--curl", (SAMPLES / "signin.curl").read_text(),
    "--curl", (SAMPLES / "balance.curl").read_text(),
)  # fmt: skip
SECRET = {"LEARN_SECRET": DEMO_SECRET.decode()}


@pytest.fixture
async def terminals() -> AsyncIterator[list[Terminal]]:
    started: list[Terminal] = []
    yield started
    for terminal in started:
        terminal.close()


def lines_after(terminal: Terminal, mark: str) -> list[str]:
    """The lines shown after the last ``mark``, as a screen keeps them: a progress bar
    redrawn with carriage returns, then cleared, leaves nothing."""
    rest = terminal.text.rpartition(mark)[2]
    return [line.rpartition("\r")[2] for line in rest.split("\r\n") if line.rpartition("\r")[2]]


async def test_learn_shows_its_progress_before_the_search_ends(
    terminals: list[Terminal],
) -> None:
    # A smaller space than the samples' scheme needs: quick, and it ends with no fit.
    terminal = await Terminal.start(*LEARN_ON_THE_SAMPLES, "--max-fields", "5", env=SECRET)
    terminals.append(terminal)
    await terminal.shows("searching:   0%")
    # The answer is printed when the search ends: the bar was there before it.
    assert "learn: no scheme" not in terminal.text
    assert await terminal.ended() == 1
    assert "learn: no scheme reproduces every sample" in terminal.text


async def test_ctrl_c_on_learn_is_one_line_and_ends_its_workers(
    terminals: list[Terminal],
) -> None:
    terminal = await Terminal.start(*LEARN_ON_THE_SAMPLES, env=SECRET)
    terminals.append(terminal)
    await terminal.shows("searching")
    # The command and its workers, one per core, all busy searching (and, where
    # multiprocessing starts workers through a fork server, that server).
    assert len(terminal.session()) >= 1 + (os.cpu_count() or 1)
    terminal.type(CTRL_C)
    assert await terminal.ended() == 130
    assert lines_after(terminal, "searching") == ["learn: interrupted"]
    assert terminal.session() == []


async def test_ctrl_c_on_probe_is_one_line(tmp_path: Path, terminals: list[Terminal]) -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"error": "invalid_signature"}, status=403)

    runner, upstream = await serve_handler(refuse)
    try:
        secret = tmp_path / "secret"
        secret.write_bytes(DEMO_SECRET)
        config = config_file(tmp_path / "gateway.toml", upstream / "api", secret)
        terminal = await Terminal.start(
            "probe", "--config", str(config), "--path", "/player/balance", "--interval-s", "60"
        )
        terminals.append(terminal)
        # The first candidate was refused; the probe now waits a minute before the next.
        await terminal.shows(": 403\r\n")
        terminal.type(CTRL_C)
        assert await terminal.ended() == 130
        assert lines_after(terminal, ": 403") == ["probe: interrupted"]
        assert terminal.session() == []
    finally:
        await runner.cleanup()


async def test_ctrl_c_on_the_demo_is_one_line_and_stops_its_servers(
    terminals: list[Terminal],
) -> None:
    terminal = await Terminal.start("demo")
    terminals.append(terminal)
    # Its servers are up. The walk after this line (eight requests through the gateway,
    # the metrics, the servers' shutdown) outlasts the keypress by far.
    await terminal.shows("mock upstream")
    terminal.type(CTRL_C)
    assert await terminal.ended() == 130
    assert terminal.text.rstrip().endswith("\r\ndemo: interrupted")
    assert "demo ok" not in terminal.text
    assert "Traceback" not in terminal.text
    assert terminal.session() == []
