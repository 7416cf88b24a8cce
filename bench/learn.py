#!/usr/bin/env python3
"""How long ``learn`` takes over the whole space: a figure, never a test's assertion.

    python bench/learn.py            # both cases, three runs each; the median of each

Each run: the wall time and the CPU-seconds of the command and its workers (what a
busy machine cannot shrink: the wall time on an idle machine is about that divided by
the cores).

Two cases, each searched on every core as the command does:
- ``config/samples/``: the repository's two samples (signed with the demo secret under
  "the session after the path");
- three samples made here, with a query, a body and a session between them, signed by
  the gateway's own signing code under Aleacc's default scheme.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from multidict import CIMultiDict  # noqa: E402 - after the path set-up

from gateway import signing  # noqa: E402

API_ID = "12345678901234567890123456789012"
SECRET = API_ID * 2  # the demo secret: 64 hex characters
HOST = "aleacc.example.com"


def repository_samples() -> list[str]:
    samples = ROOT / "config" / "samples"
    return [(samples / name).read_text() for name in ("signin.curl", "balance.curl")]


def three_samples() -> list[str]:
    """A body, a query and a session between three requests, as curl commands."""
    requests = [
        ("POST", "/api/player/signin", b'{"username": "ann", "password": "pw"}', {}),
        ("GET", "/api/player/balance?currency=EUR", b"", {"X-Player-Session-Id": "f00d" * 8}),
        ("POST", "/api/player/signout", b"{}", {"X-Player-Session-Id": "f00d" * 8}),
    ]
    credentials = signing.Credentials(API_ID, bytes.fromhex(SECRET))
    plan = signing.compile_scheme(signing.Scheme())
    curls = []
    for number, (method, target, body, extra) in enumerate(requests, 1):
        headers = CIMultiDict({"X-Client-Ip": "203.0.113.7", **extra})
        if body:
            headers["Content-Type"] = "application/json"
        parts = signing.RequestParts(method, "https", HOST, target, headers, body)
        signed = plan.sign(parts, credentials, f"{number:032x}", 1796054400)
        words = [f"curl 'https://{HOST}{target}' -X {method}"]
        words += [f"-H '{name}: {value}'" for name, value in headers.items()]
        words.append(f"-H 'Authorization: {signed.authorization}'")
        if body:
            words.append(f"--data-raw '{body.decode()}'")
        curls.append(" ".join(words))
    return curls


def once(curls: list[str]) -> tuple[float, float, str]:
    command = [sys.executable, "-m", "gateway", "learn", "--secret-env", "LEARN_SECRET"]
    for curl in curls:
        command += ["--curl", curl]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(
        command, cwd=ROOT, env={**os.environ, "LEARN_SECRET": SECRET},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    # The workers are reaped by learn, so their time is in learn's, which is in ours.
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    if result.returncode != 0:
        raise SystemExit(f"learn exited {result.returncode}: {result.stdout}{result.stderr}")
    return elapsed, cpu, result.stdout.splitlines()[0]


def main() -> int:
    for name, curls in (("config/samples/", repository_samples()), ("three", three_samples())):
        times, cpus = [], []
        for _ in range(3):
            elapsed, cpu, line = once(curls)
            times.append(elapsed)
            cpus.append(cpu)
            print(f"{name:16} {elapsed:6.1f} s  {cpu:6.1f} CPU-s  {line}", flush=True)
        print(
            f"{name:16} median {statistics.median(times):.1f} s, "
            f"{statistics.median(cpus):.1f} CPU-s, on {os.cpu_count()} core(s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
