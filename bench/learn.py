#!/usr/bin/env python3
"""How long ``learn`` takes over the whole space, on the repository's two samples.

    python bench/learn.py            # three runs; prints each and the median

The samples are config/samples/ (signed with the demo secret under "the session after
the path"); the search runs on every core, as the command does. A figure, not a test:
the suite never asserts wall-clock limits.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_SECRET = "12345678901234567890123456789012" * 2


def once() -> tuple[float, str]:
    samples = ROOT / "config" / "samples"
    command = [sys.executable, "-m", "gateway", "learn", "--secret-env", "LEARN_SECRET"]
    for name in ("signin.curl", "balance.curl"):
        command += ["--curl", (samples / name).read_text()]
    started = time.perf_counter()
    result = subprocess.run(
        command, cwd=ROOT, env={**os.environ, "LEARN_SECRET": DEMO_SECRET},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"learn exited {result.returncode}: {result.stderr}")
    return elapsed, result.stdout.splitlines()[0]


def main() -> int:
    times = []
    for _ in range(3):
        elapsed, line = once()
        times.append(elapsed)
        print(f"{elapsed:6.1f} s  {line}", flush=True)
    print(f"median {statistics.median(times):.1f} s on {os.cpu_count()} core(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
