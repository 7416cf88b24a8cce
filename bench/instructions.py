#!/usr/bin/env python3
"""Instructions per request, counted by valgrind: a figure the machine's load cannot move.

    python bench/instructions.py                 # the gateway and the stack floor
    python bench/instructions.py --requests 2000
    python bench/instructions.py --tenants       # also GET to the last of 3 tenants by Host
    python bench/instructions.py --tracing       # also GET with tracing at ratio 1.0 and 0.1
    python bench/instructions.py --limits        # also GET with rate limits, local and in Redis

The wrk rows in bench/run.py measure CPU time, which moves by ±10 % from run to run on a
shared 2-core machine: too much to see a step of a few microseconds. Here the gateway
(and the stack-floor proxy) run under ``valgrind --tool=callgrind`` with counting off; a
warm-up goes through, then counting is switched on for a fixed number of requests sent
one after another on one kept-alive connection (GET, POST, POST with X-Forwarded-For, as
in bench/run.py), and the user-space instructions they cost are divided by their number.
The same code gives the same count to within a fraction of a per cent; the kernel's share
(sockets) is not counted, and is the same for every version of the gateway. valgrind
comes from Debian (``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from run import (
    GET_PATH,
    POST_BODY,
    POST_PATH,
    Server,
    start_floor,
    start_gateway,
    start_nginx,
    start_redis,
)

SCENARIOS = {
    "GET": ("GET", GET_PATH, None, {}),
    "POST": ("POST", POST_PATH, POST_BODY, {"Content-Type": "application/json"}),
    "POST+XFF": (
        "POST",
        POST_PATH,
        POST_BODY,
        {"Content-Type": "application/json", "X-Forwarded-For": "203.0.113.7, 10.1.2.3"},
    ),
}
# Rows of their own, each from a gateway started for it and sent a GET (so the floor is
# GET's): --tenants, the last of three tenants chosen by Host (bench/run.py's
# start_gateway names their hosts); --tracing, spans exported to a local OTLP/HTTP sink at
# two sample ratios (the export thread's instructions are counted too).
EXTRA_ROWS = {
    "tenants": [("GET, 3 tenants", {"tenants": 3}, {"Host": "brand-2.bench"})],
    "tracing": [
        ("GET, tracing at 1.0", {"tracing": 1.0}, {}),
        ("GET, tracing at 0.1", {"tracing": 0.1}, {}),
    ],
    # A tenant's and a player's rate that never refuse: each request takes its tokens in
    # the process, or in a local Redis (the gateway's side of the round trip only).
    "limits": [
        ("GET, local limits", {"limits": "local"}, {}),
        ("GET, limits in Redis", {"limits": "redis"}, {}),
    ],
}
for _rows in EXTRA_ROWS.values():
    for _name, _, _headers in _rows:
        SCENARIOS[_name] = ("GET", GET_PATH, None, _headers)
BASE_SCENARIOS = ["GET", "POST", "POST+XFF"]
WARM_UP = 300


def send(server: Server, scenario: str, count: int) -> None:
    method, path, body, headers = SCENARIOS[scenario]
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    for _ in range(count):
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"{server.name}: {scenario} answered {response.status}")
    connection.close()


def counted(server: Server, scenario: str, count: int, out: Path) -> float:
    """Instructions per request for ``count`` requests of ``scenario``."""
    pid = str(server.process.pid)
    subprocess.run(["callgrind_control", "--zero", pid], check=True, capture_output=True)
    subprocess.run(["callgrind_control", "--instr=on", pid], check=True, capture_output=True)
    send(server, scenario, count)
    subprocess.run(["callgrind_control", "--instr=off", pid], check=True, capture_output=True)
    for old in out.parent.glob(f"{out.name}*"):
        old.unlink()
    subprocess.run(["callgrind_control", "--dump", pid], check=True, capture_output=True)
    total = 0
    for dump in out.parent.glob(f"{out.name}*"):
        match = re.search(r"^totals: (\d+)", dump.read_text(errors="replace"), re.M)
        total += int(match.group(1)) if match else 0
    return total / count


class _Sink(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP collector that takes every export and keeps nothing."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--no-floor", dest="floor", action="store_false")
    for option in EXTRA_ROWS:
        parser.add_argument(f"--{option}", action="store_true", help=f"add the {option} rows")
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        print("valgrind is not installed: apt-get install valgrind", file=sys.stderr)
        return 1
    extras = [row for option, rows in EXTRA_ROWS.items() if getattr(args, option) for row in rows]
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    collector = f"http://127.0.0.1:{sink.server_address[1]}"
    with tempfile.TemporaryDirectory(prefix="aleacc-instructions-") as tmp:
        workdir = Path(tmp)
        upstream = start_nginx("upstream", "upstream.conf", workdir)
        servers: list[Server] = []
        store = None
        if args.limits:
            redis = start_redis(workdir)
            servers.append(redis)
            store = f"redis://127.0.0.1:{redis.port}/0"
        results: dict[str, float] = {}
        floors: dict[str, float] = {}
        runs = [("gateway", {}, BASE_SCENARIOS)]
        runs += [("stack floor", {}, BASE_SCENARIOS)] * args.floor
        runs += [(name, options, [name]) for name, options, _ in extras]
        try:
            for number, (name, options, scenarios) in enumerate(runs):
                out = workdir / f"callgrind.{number}"
                wrapper = (
                    "valgrind", "--tool=callgrind", "--instr-atstart=no",
                    f"--callgrind-out-file={out}", "--quiet",
                )  # fmt: skip
                if name == "stack floor":
                    server = start_floor(upstream.port, wrapper)
                else:
                    ratio = options.get("tracing")
                    limits = options.get("limits")
                    server = start_gateway(
                        workdir, upstream.port, 1, wrapper=wrapper,
                        tenants=int(options.get("tenants", 1)),
                        tracing=(collector, ratio) if ratio is not None else None,
                        limits=store if limits == "redis" else limits,
                    )  # fmt: skip
                servers.append(server)
                for scenario in scenarios:
                    send(server, scenario, WARM_UP)
                    count = counted(server, scenario, args.requests, out)
                    (floors if name == "stack floor" else results)[scenario] = count
                    print(f"{name:12} {scenario:20} {count:12,.0f}", flush=True)
        finally:
            for server in [*servers, upstream]:
                server.stop()
            sink.shutdown()
    print(f"\ninstructions per request ({args.requests} requests, one kept-alive connection)")
    print("| scenario | gateway | stack floor | the gateway's own |")
    print("|---|---:|---:|---:|")
    for scenario in [*BASE_SCENARIOS, *(name for name, _, _ in extras)]:
        gateway = results[scenario]
        floor = floors.get(scenario if scenario in BASE_SCENARIOS else "GET")
        own = f"{gateway - floor:,.0f}" if floor else "n/a"
        floor_text = f"{floor:,.0f}" if floor else "n/a"
        print(f"| {scenario} | {gateway:,.0f} | {floor_text} | {own} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
