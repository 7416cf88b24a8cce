"""The README's worked signing example is what the code prints."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_worked_example_matches_the_code() -> None:
    block = README.split("```console\n", 1)[1].split("```", 1)[0]
    command, *expected = block.splitlines()
    words = shlex.split(command.removeprefix("$ "))
    env_assignment, program, *args = words
    name, _, value = env_assignment.partition("=")
    assert program == "aleacc-gateway"
    result = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env={**os.environ, name: value},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.splitlines() == expected


def test_openssl_line_in_readme_gives_the_same_signature() -> None:
    signature = README.split("```console\n", 1)[1].split("```", 1)[0].rsplit(":", 3)[1]
    assert f"# {signature}" in README
