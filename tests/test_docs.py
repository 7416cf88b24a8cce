"""The documentation: its worked signing example is what the code prints and what openssl
computes, its quick start is the README's, its command table has every option the
parser has, and every relative link in it resolves."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import cli

ROOT = Path(__file__).parent.parent
SIGNING = (ROOT / "docs" / "signing.md").read_text()
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "CONTRIBUTING.md", ROOT / "SECURITY.md"]
PAGES += sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
EXAMPLE_HEADER = "amx 12345678901234567890123456789012:pYEt3GtOHzf1Y16hb3fSlnbpGTB+cdXo6EEx9WgfR1w=:1:1433313039"  # fmt: skip # noqa: E501


def block(fence: str, after: str) -> str:
    return SIGNING.split(after, 1)[1].split(f"```{fence}\n", 1)[1].split("```", 1)[0]


def bash(command: str) -> subprocess.CompletedProcess[str]:
    # The README's commands are run by bash as a user would, with the gateway on PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(
        ["bash", "-c", command],
        env={**os.environ, "PATH": path},
        capture_output=True,
        text=True,
        check=True,
    )


def test_worked_example_prints_aleaccs_header() -> None:
    command, *expected = block("console", "### Worked example").splitlines()
    result = bash(command.removeprefix("$ "))
    assert result.stdout.splitlines() == expected
    assert expected[-1] == f"Authorization: {EXAMPLE_HEADER}"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="run scripts/install-test-tools")
def test_openssl_line_in_readme_gives_aleaccs_signature() -> None:
    command, expected = block("sh", "The same signature from a shell").rsplit("\n# ", 1)
    assert bash(command).stdout.strip() == expected.strip() == EXAMPLE_HEADER.split(":")[1]


def anchors(page: Path) -> set[str]:
    """The fragment each heading of ``page`` gets, as GitHub makes them."""
    found = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^a-z0-9 _-]", "", text).replace(" ", "-"))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    links = LINK.findall(page.read_text())
    for link in links:
        if re.match(r"^[a-z]+:", link):
            continue  # an absolute URL: not this repository's to check
        path, _, fragment = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.exists(), f"{page.name}: {link}: no such file"
        if fragment:
            assert fragment in anchors(target), f"{page.name}: {link}: no such heading"


def test_the_readme_is_a_landing_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 10 * 1024
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in readme, f"the README's map misses docs/{page.name}"


def cli_options() -> dict[str, list[str]]:
    """Each command's options as the parser has them ("" for the command itself): the
    first long name of each (``-H/--header``: ``--header``), a positional in capitals."""

    def names(parser: argparse.ArgumentParser) -> list[str]:
        found = []
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            if action.help == argparse.SUPPRESS:
                continue  # internal: the supervisor's arguments to its workers
            longs = [o for o in action.option_strings if o.startswith("--")]
            found.append(longs[0] if longs else action.dest.upper())
        return found

    parser = cli.build_parser()
    options = {"": names(parser)}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            options.update({name: names(sub) for name, sub in action.choices.items()})
    return options


def test_the_readmes_command_table_has_every_option_of_every_command() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = {
        m.group(1): m.group(0)
        for m in re.finditer(r"^\| `aleacc-gateway ((?:[a-z][a-z-]*)?).*$", readme, re.M)
    }
    for command, options in cli_options().items():
        assert command in rows, f"the README's command table has no row for {command!r}"
        for option in options:
            mentioned = re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", rows[command])
            assert mentioned, f"the README's row for {command or 'aleacc-gateway'} lacks {option}"
