#!/usr/bin/env python3
"""Where one gateway process spends its CPU under a wrk load: py-spy's top frames.

    python bench/profile.py GET          # or POST, POST+XFF; --seconds, --svg FILE

Starts the benchmark's nginx upstream and one gateway (as bench/run.py does), warms it
up, then samples it with py-spy while wrk loads it, and prints the frames that hold the
most samples: by their own time (the flame graph's top edges) and, for the gateway's own
functions, including what they call. ``--svg`` also writes the flame graph. py-spy comes
from PyPI (``pip install py-spy``); it needs ptrace (root, or CAP_SYS_PTRACE).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from run import SCENARIOS, start_gateway, start_nginx, target, wrk

# "function (path/to/file.py:123)" in py-spy's raw (collapsed) output
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^:()]+)(?::\d+)?\)$")


# Under uvloop only some samples reach back to the entry point: leave it out of the shares.
_ENTRY_POINTS = ("(gateway/cli.py)", "(gateway/__main__.py)", "(serve.py)")


def frame_name(frame: str) -> str:
    """``function (module)`` without the line number, so a function's lines add up."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    path = Path(match["file"])
    module = path.name if path.parent.name != "gateway" else f"gateway/{path.name}"
    return f"{match['function']} ({module})"


Shares = list[tuple[str, int]]


def top_frames(collapsed: str, count: int) -> tuple[int, Shares, Shares]:
    """(samples, by own time, the gateway's functions by time including callees)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack:
            continue
        frames = [frame_name(f) for f in stack.split(";") if f]
        weight = int(samples)
        total += weight
        own[frames[-1]] += weight
        for name in set(frames):
            if "(gateway/" in name and not name.endswith(_ENTRY_POINTS):
                inclusive[name] += weight
    return total, own.most_common(count), inclusive.most_common(count)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenario", choices=list(SCENARIOS), nargs="?", default="GET")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--svg", type=Path, help="also write the flame graph here")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 1
    script, connections, _ = SCENARIOS[args.scenario]
    with tempfile.TemporaryDirectory(prefix="aleacc-profile-") as tmp:
        workdir = Path(tmp)
        upstream = start_nginx("upstream", "upstream.conf", workdir)
        gateway = start_gateway(workdir, upstream.port, 1)
        try:
            url = target(gateway, args.scenario)
            wrk(url, connections or 64, 1, 2, script)  # warm-up
            outputs = [("raw", workdir / "stacks.txt")]
            if args.svg:
                outputs.append(("flamegraph", args.svg))
            for fmt, output in outputs:
                load = threading.Thread(
                    target=wrk, args=(url, connections or 64, 1, args.seconds + 1, script)
                )
                load.start()
                subprocess.run(
                    [py_spy, "record", "--pid", str(gateway.process.pid), "--rate", "250",
                     "--duration", str(args.seconds), "--format", fmt, "--output", str(output),
                     "--nonblocking"],
                    check=True, capture_output=True,
                )  # fmt: skip
                load.join()
            total, own, inclusive = top_frames((workdir / "stacks.txt").read_text(), args.top)
        finally:
            gateway.stop()
            upstream.stop()
    print(f"{args.scenario}: {total} samples\n\nown time (the flame graph's top edges)")
    for name, samples in own:
        print(f"{samples / total:6.1%}  {name}")
    print("\nthe gateway's functions, including what they call")
    for name, samples in inclusive:
        print(f"{samples / total:6.1%}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
