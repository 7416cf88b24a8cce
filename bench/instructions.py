#!/usr/bin/env python3
"""Instructions per request, counted by valgrind: a figure the machine's load cannot move.

    python bench/instructions.py                 # the gateway and the stack floor
    python bench/instructions.py --requests 2000
    python bench/instructions.py --tenants       # also GET to the last of 3 tenants by Host

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
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from run import GET_PATH, POST_BODY, POST_PATH, Server, start_floor, start_gateway, start_nginx

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
# With --tenants: a gateway with the default tenant and two more chosen by Host, sent
# requests for the last of them (bench/run.py's start_gateway names their hosts).
TENANTS = 3
TENANT_GATEWAY = "gateway, 3 tenants"
TENANT_SCENARIO = "GET, 3 tenants"
SCENARIOS[TENANT_SCENARIO] = ("GET", GET_PATH, None, {"Host": f"brand-{TENANTS - 1}.bench"})
BASE_SCENARIOS = [s for s in SCENARIOS if s != TENANT_SCENARIO]
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--no-floor", dest="floor", action="store_false")
    parser.add_argument("--tenants", action="store_true", help=f"add the {TENANT_SCENARIO} row")
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        print("valgrind is not installed: apt-get install valgrind", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="aleacc-instructions-") as tmp:
        workdir = Path(tmp)
        upstream = start_nginx("upstream", "upstream.conf", workdir)
        servers: list[Server] = []
        results: dict[str, dict[str, float]] = {}
        try:
            runs = ["gateway", *(["stack floor"] * args.floor), *([TENANT_GATEWAY] * args.tenants)]
            for name in runs:
                out = workdir / f"callgrind.{name.replace(' ', '-')}"
                wrapper = (
                    "valgrind", "--tool=callgrind", "--instr-atstart=no",
                    f"--callgrind-out-file={out}", "--quiet",
                )  # fmt: skip
                if name == "stack floor":
                    server = start_floor(upstream.port, wrapper)
                else:
                    tenants = TENANTS if name == TENANT_GATEWAY else 1
                    server = start_gateway(
                        workdir, upstream.port, 1, wrapper=wrapper, tenants=tenants
                    )
                servers.append(server)
                results[name] = {}
                scenarios = [TENANT_SCENARIO] if name == TENANT_GATEWAY else BASE_SCENARIOS
                for scenario in scenarios:
                    send(server, scenario, WARM_UP)
                    results[name][scenario] = counted(server, scenario, args.requests, out)
                    print(f"{name:12} {scenario:8} {results[name][scenario]:12,.0f}", flush=True)
        finally:
            for server in [*servers, upstream]:
                server.stop()
    print(f"\ninstructions per request ({args.requests} requests, one kept-alive connection)")
    print("| scenario | gateway | stack floor | the gateway's own |")
    print("|---|---:|---:|---:|")
    floors = results.get("stack floor", {})
    rows = [(s, results["gateway"][s], floors.get(s)) for s in BASE_SCENARIOS]
    if args.tenants:
        # The first row's GET, chosen by Host among three tenants: the floor is GET's.
        tenants = results[TENANT_GATEWAY][TENANT_SCENARIO]
        rows.append((TENANT_SCENARIO, tenants, floors.get("GET")))
    for scenario, gateway, floor in rows:
        own = f"{gateway - floor:,.0f}" if floor else "n/a"
        floor_text = f"{floor:,.0f}" if floor else "n/a"
        print(f"| {scenario} | {gateway:,.0f} | {floor_text} | {own} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
