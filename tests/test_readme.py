"""The README's worked signing example is what the code prints, and what openssl computes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

README = (Path(__file__).parent.parent / "README.md").read_text()
EXAMPLE_HEADER = "amx 12345678901234567890123456789012:pYEt3GtOHzf1Y16hb3fSlnbpGTB+cdXo6EEx9WgfR1w=:1:1433313039"  # fmt: skip # noqa: E501


def block(fence: str, after: str) -> str:
    return README.split(after, 1)[1].split(f"```{fence}\n", 1)[1].split("```", 1)[0]


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
