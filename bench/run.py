#!/usr/bin/env python3
"""Benchmark aleacc-gateway beside nginx + njs and a plain nginx proxy, on loopback.

    python bench/run.py            # the full run (about 8 minutes), writes bench/RESULTS.md
    python bench/run.py --quick    # a short run, for trying the harness

See bench/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from gateway import signing  # noqa: E402 - after the path set-up

API_ID = "12345678901234567890123456789012"
KEY = bytes.fromhex("be" * 32)
SECRET = "be" * 32
GET_PATH = "/player/balance?currency=EUR&player=42"
POST_PATH = "/player/signin"
POST_SCRIPT = BENCH / "post.lua"
# name -> (wrk script, connections (None: --connections), heading in the report)
SCENARIOS: dict[str, tuple[Path | None, int | None, str]] = {
    "GET": (None, None, "GET with a query"),
    "POST": (POST_SCRIPT, None, "POST with a {size}-byte JSON body"),
    "POST+XFF": (
        BENCH / "post_xff.lua",
        32,
        "POST with X-Forwarded-For from a trusted peer, 32 connections (what frontends "
        "behind an ingress send)",
    ),
}
POST_BODY = POST_SCRIPT.read_text().split("wrk.body = '", 1)[1].rsplit("'", 1)[0].encode()
NJS_MODULE = Path("/usr/lib/nginx/modules/ngx_http_js_module.so")
TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
FLOOR = "stack floor"
# The gateway's own work per request above the stack's floor, µs of CPU (issue 15).
OWN_WORK_US_GOAL = {"GET": 15, "POST": 18}


# ---------------------------------------------------------------- tools


def ensure_tools() -> dict[str, str]:
    """Install nginx, its njs module and wrk from Debian's packages; say what is missing."""
    wanted = {"nginx": "nginx-light", "wrk": "wrk"}
    missing = [pkg for tool, pkg in wanted.items() if shutil.which(tool) is None]
    if not NJS_MODULE.exists():
        missing.append("libnginx-mod-http-js")
    if missing:
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([*sudo, "apt-get", "update", "-qq"], check=False, env=env)
        subprocess.run(
            [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            check=False,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    problems = {}
    if shutil.which("wrk") is None:
        problems["wrk"] = "wrk is not installed and could not be installed: nothing to measure with"
    if shutil.which("nginx") is None:
        problems["nginx"] = "nginx could not be installed: upstream and nginx rows skipped"
    if not NJS_MODULE.exists():
        problems["njs"] = "libnginx-mod-http-js could not be installed: the njs row is skipped"
    return problems


def version(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError:
        return "not installed"
    return (result.stdout + result.stderr).strip().splitlines()[0]


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, process: subprocess.Popen[bytes], what: str, timeout_s: float = 15
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


@dataclass
class Server:
    """A started server process (nginx or the gateway) and its port."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    scheme: str = "http"

    def cpu_seconds(self) -> float:
        total = 0
        for pid in process_tree(self.process.pid):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime + stime
        return total / TICKS

    def rss_mb(self) -> float:
        """Resident memory of the largest process in the tree (one gateway process)."""
        largest = 0
        for pid in process_tree(self.process.pid):
            try:
                largest = max(largest, int(Path(f"/proc/{pid}/statm").read_text().split()[1]))
            except OSError:
                continue
        return largest * PAGE_KB / 1024

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_nginx(name: str, template: str, workdir: Path, **values: object) -> Server:
    port = free_port()
    load = (
        f"load_module {NJS_MODULE};"
        if "js_import" in (BENCH / "nginx" / template).read_text()
        else ""
    )
    text = (BENCH / "nginx" / "common.conf").read_text() + (BENCH / "nginx" / template).read_text()
    replacements = {
        "dir": workdir,
        "name": name.replace(" ", "-"),
        "port": port,
        "bench": BENCH,
        "load_modules": load,
    }
    for key, value in {**replacements, **values}.items():
        text = text.replace("{" + key + "}", str(value))
    conf = workdir / f"{replacements['name']}.conf"
    conf.write_text(text)
    process = subprocess.Popen(
        ["nginx", "-p", str(workdir), "-c", str(conf), "-e", str(conf.with_suffix(".error.log"))]
    )
    wait_for_port(port, process, name)
    return Server(name, port, process, "https" if values.get("ssl") else "http")


def make_certificate(workdir: Path) -> tuple[Path, Path]:
    """A throwaway self-signed P-256 certificate for the TLS rows (wrk does not verify)."""
    cert, key = workdir / "tls.crt", workdir / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-subj", "/CN=127.0.0.1", "-days", "2", "-keyout", str(key),
         "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def start_gateway(
    workdir: Path,
    upstream_port: int,
    workers: int,
    tls: tuple[Path, Path] | None = None,
    wrapper: tuple[str, ...] = (),
    tenants: int = 1,
    tracing: tuple[str, float] | None = None,
    limits: str | None = None,
) -> Server:
    """The gateway as a process; ``wrapper``: a command to run it under (valgrind);
    ``tenants``: the default one and ``tenants - 1`` more, chosen by Host ``brand-N.bench``;
    ``tracing``: an OTLP/HTTP collector's URL and the sample ratio; ``limits``: a tenant
    and a player rate that never refuses, in the process ("local") or in the Redis at
    this URL."""
    port, admin = free_port(), free_port()
    secret = workdir / "secret"
    secret.write_text(SECRET)
    name = f"gateway x{workers}" if workers > 1 else "gateway"
    if limits:
        name += " local limits" if limits == "local" else " redis limits"
    traced = f"-traced-{tracing[1]}" if tracing else ""
    limited = f"-limits-{'local' if limits == 'local' else 'redis'}" if limits else ""
    conf = workdir / f"gateway-{workers}{'-tls' if tls else ''}-{tenants}{traced}{limited}.toml"
    # The most a rate may be: every request takes a token, none is refused.
    rates = (
        "rate_per_s = 1000000\n" if limits else "",
        "player_rate_per_s = 1000000\n" if limits else "",
        f'store_url = "{limits}"\n' if limits and limits != "local" else "",
    )
    tls_lines = f'tls_cert_file = "{tls[0]}"\ntls_key_file = "{tls[1]}"\n' if tls else ""
    tenant_tables = "".join(
        f'[[tenants]]\nname = "brand-{n}"\napi_id = "{API_ID[:-1]}{n}"\n'
        f'secret_file = "{secret}"\nhosts = ["brand-{n}.bench"]\n'
        for n in range(1, tenants)
    )
    conf.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\nadmin_listen = "127.0.0.1:{admin}"\n'
        f"workers = {workers}\ndrain_delay_s = 0\n{tls_lines}"
        f'[upstream]\nurl = "http://127.0.0.1:{upstream_port}"\n'
        f'[signing]\napi_id = "{API_ID}"\nsecret_file = "{secret}"\n{rates[0]}'
        f"[limits]\nmax_connections = 4096\n{rates[1]}{rates[2]}"
        + (
            f'[tracing]\notlp_endpoint = "{tracing[0]}"\nsample_ratio = {tracing[1]}\n'
            if tracing
            else ""
        )
        + tenant_tables
    )
    log = conf.with_suffix(".log").open("wb")
    process = subprocess.Popen(
        [*wrapper, sys.executable, "-m", "gateway", "serve", "--config", str(conf)],
        stdout=log,
        cwd=ROOT,
    )
    wait_for_port(port, process, f"gateway ({workers} workers)", 120 if wrapper else 15)
    if tls:
        return Server(f"{name} tls", port, process, "https")
    return Server(name, port, process)


def start_redis(workdir: Path) -> Server:
    """Debian's redis-server on a loopback port, nothing kept on disk: the local store."""
    port = free_port()
    options = {
        "port": str(port),
        "bind": "127.0.0.1",
        "save": "",
        "appendonly": "no",
        "dir": str(workdir),
        "logfile": str(workdir / "redis.log"),
    }
    arguments = [part for name, value in options.items() for part in (f"--{name}", value)]
    process = subprocess.Popen(["redis-server", *arguments])
    wait_for_port(port, process, "redis-server")
    return Server("redis", port, process, "redis")


def start_floor(upstream_port: int, wrapper: tuple[str, ...] = ()) -> Server:
    """The stack's floor (bench/floor_proxy.py): the server and the pool, nothing else."""
    port = free_port()
    process = subprocess.Popen(
        [*wrapper, sys.executable, str(BENCH / "floor_proxy.py"), str(port), str(upstream_port)]
    )
    wait_for_port(port, process, "floor proxy", 120 if wrapper else 15)
    return Server(FLOOR, port, process)


# ---------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(
    url: str, connections: int, threads: int, seconds: float, script: Path | None = None
) -> WrkResult:
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency", url]
    if script is not None:
        command[1:1] = ["-s", str(script)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    return WrkResult(
        requests=int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        p50_ms=_ms(percentiles["50"]),
        p99_ms=_ms(percentiles["99"]),
        errors=(int(errors.group(1)) if errors else 0)
        + (sum(map(int, socket_errors.groups())) if socket_errors else 0),
    )


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_s: float
    requests: int
    errors: int

    @property
    def per_cpu_s(self) -> float:
        return self.requests / self.cpu_s if self.cpu_s else float("nan")


def median(samples: list[Sample], figure: str) -> float:
    """The median of one figure (a Sample attribute) over a row's runs."""
    return statistics.median(getattr(sample, figure) for sample in samples)


def target(server: Server, scenario: str) -> str:
    """The URL a scenario loads on ``server``."""
    path = POST_PATH if scenario.startswith("POST") else GET_PATH
    return f"{server.scheme}://127.0.0.1:{server.port}{path}"


def measure(server: Server, scenario: str, args: argparse.Namespace) -> Sample:
    before = server.cpu_seconds()
    script, connections, _ = SCENARIOS[scenario]
    result = wrk(
        target(server, scenario), connections or args.connections, args.threads, args.duration,
        script,
    )  # fmt: skip
    cpu = server.cpu_seconds() - before
    return Sample(result.rps, result.p50_ms, result.p99_ms, cpu, result.requests, result.errors)


# ---------------------------------------------------------------- checks


def verify_signatures(upstream_log: Path, servers: list[Server]) -> dict[str, tuple[int, int]]:
    """Send a tagged sample through each signing proxy; verify what reached the upstream."""
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE  # the TLS rows' throwaway certificate
    for server in servers:
        tag = server.name.replace(" ", "")
        for i in range(10):
            for post in (False, True):
                path = f"{POST_PATH}?bench={tag}&n={i}" if post else f"{GET_PATH}&bench={tag}&n={i}"
                request = urllib.request.Request(  # noqa: S310 - http(s), loopback
                    f"{server.scheme}://127.0.0.1:{server.port}{path}",
                    data=POST_BODY if post else None,
                    headers={"X-Bench-Sample": "1", "Content-Type": "application/json"}
                    if post
                    else {"X-Bench-Sample": "1"},
                )
                with urllib.request.urlopen(request, timeout=5, context=unverified) as answer:  # noqa: S310
                    answer.read()
    time.sleep(0.5)  # nginx writes its access log line after the answer
    results: dict[str, tuple[int, int]] = {}
    plan = signing.compile_scheme(signing.Scheme())
    for line in upstream_log.read_text().splitlines():
        method, target, _content_type, client_ip, header = line.split("\t")
        tag = re.search(r"bench=([^&]+)", target).group(1)  # type: ignore[union-attr]
        auth = signing.parse_authorization(header)
        parts = signing.RequestParts(
            method=method,
            scheme="http",
            host="",
            path_and_query=target,
            headers={"X-Client-Ip": "" if client_ip == "-" else client_ip},
            body=POST_BODY if method == "POST" else b"",
        )
        ok = auth is not None and plan.verify(parts, KEY, auth)
        good, total = results.get(tag, (0, 0))
        results[tag] = (good + int(ok), total + 1)
    return results


def soak(server: Server, seconds: float, args: argparse.Namespace) -> list[float]:
    """RSS (MB) every second while wrk loads ``server`` for ``seconds``."""
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(1.0):
            samples.append(server.rss_mb())

    thread = threading.Thread(target=sample)
    thread.start()
    wrk(target(server, "GET"), args.connections, args.threads, seconds)
    done.set()
    thread.join()
    return samples


# ---------------------------------------------------------------- report


def report(args: argparse.Namespace, context: dict[str, object]) -> str:
    rows: dict[str, dict[str, list[Sample]]] = context["rows"]  # type: ignore[assignment]
    lines = [
        "# Benchmark results",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {os.cpu_count()} cores, {platform.machine()}, {platform.platform()}",
        f"- versions: Python {platform.python_version()}; {context['versions']}",
        f"- command: `{' '.join(['python', 'bench/run.py', *sys.argv[1:]])}`",
        f"- load: wrk, {args.connections} connections, {args.threads} thread(s), "
        f"{args.duration} s per run, {args.rounds} rounds with the rows' order rotated each "
        "round; medians shown. Every proxy runs one worker process unless noted; the "
        "upstream is nginx with one worker. All on one machine, so wrk, the upstream and "
        "the proxy share its cores.",
        f"- {FLOOR}: a reference row, not a product (bench/floor_proxy.py): aiohttp's "
        "low-level server and the gateway's upstream pool forwarding as-is, with no checks, "
        "signing, metrics or log line; what any proxy on this stack costs.",
        "",
    ]
    for skipped in context["skipped"]:  # type: ignore[attr-defined]
        lines.append(f"- skipped: {skipped}")
    for scenario, (_, _, heading) in SCENARIOS.items():
        label = heading.format(size=len(POST_BODY))
        lines += [
            "",
            f"## {label}",
            "",
            "| proxy | req/s | p50 ms | p99 ms | CPU s per run | req per CPU-second "
            "| vs nginx+njs (TLS rows: vs nginx+njs tls) | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, scenarios in rows.items():
            samples = scenarios[scenario]
            per_cpu = median(samples, "per_cpu_s")
            # A TLS row is set against nginx+njs with TLS on its listener too.
            njs = rows.get("nginx+njs tls" if name.endswith(" tls") else "nginx+njs")
            njs_per_cpu = median(njs[scenario], "per_cpu_s") if njs else None
            ratio = f"{per_cpu / njs_per_cpu:.2f}x" if njs_per_cpu else "n/a"
            lines.append(
                f"| {name} | {median(samples, 'rps'):,.0f} "
                f"| {median(samples, 'p50_ms'):.2f} "
                f"| {median(samples, 'p99_ms'):.2f} "
                f"| {median(samples, 'cpu_s'):.2f} "
                f"| {per_cpu:,.0f} | {ratio} | {sum(s.errors for s in samples)} |"
            )
    latency: dict[str, dict[str, float]] = context["latency"]  # type: ignore[assignment]
    lines += [
        "",
        "## Added latency at one connection (p50, proxy minus direct to the upstream)",
        "",
        "| proxy | GET ms | POST ms |",
        "|---|---:|---:|",
    ]
    for name, values in latency.items():
        if name == "direct":
            continue
        lines.append(
            f"| {name} | {values['GET'] - latency['direct']['GET']:.3f} "
            f"| {values['POST'] - latency['direct']['POST']:.3f} |"
        )
    lines.append(
        f"\nDirect to the upstream: GET {latency['direct']['GET']:.3f} ms, "
        f"POST {latency['direct']['POST']:.3f} ms p50."
    )
    signatures: dict[str, tuple[int, int]] = context["signatures"]  # type: ignore[assignment]
    lines += ["", "## Signatures checked at the upstream", ""]
    for tag, (good, total) in signatures.items():
        lines.append(f"- {tag}: {good} of {total} sampled requests carry a valid signature")
    lines += ["", "## Against the targets (issue 15)", ""]
    lines += targets(rows, latency, context["rss"])  # type: ignore[arg-type]
    rss: list[float] = context["rss"]  # type: ignore[assignment]
    if rss:
        lines += [
            "",
            f"## Memory: one gateway process under load for {len(rss)} s",
            "",
            f"RSS at 5 s {rss[min(4, len(rss) - 1)]:.1f} MB, max {max(rss):.1f} MB, "
            f"at the end {rss[-1]:.1f} MB (sampled every second).",
        ]
    return "\n".join(lines) + "\n"


def targets(
    rows: dict[str, dict[str, list[Sample]]],
    latency: dict[str, dict[str, float]],
    rss: list[float],
) -> list[str]:
    """One line per target: the figure, the target, met or not."""

    def per_cpu(name: str, scenario: str) -> float:
        return median(rows[name][scenario], "per_cpu_s")

    def rps(name: str, scenario: str) -> float:
        return median(rows[name][scenario], "rps")

    out = []
    for scenario in SCENARIOS:
        if "gateway" not in rows:
            break
        if "nginx+njs" in rows:
            ratio = per_cpu("gateway", scenario) / per_cpu("nginx+njs", scenario)
            out.append(_target(f"{scenario} req per CPU-second vs nginx+njs", ratio, ">=", 0.45))
        if FLOOR in rows:
            gateway_us = 1e6 / per_cpu("gateway", scenario)
            floor_us = 1e6 / per_cpu(FLOOR, scenario)
            own_goal = OWN_WORK_US_GOAL["GET" if scenario == "GET" else "POST"]
            out.append(
                _target(
                    f"{scenario} the gateway's own work, µs of CPU per request above the "
                    f"stack's floor ({gateway_us:.0f} = {floor_us:.0f} + own)",
                    gateway_us - floor_us,
                    "<=",
                    own_goal,
                )
            )
        if scenario in latency.get("direct", {}):  # measured for GET and POST
            added = latency["gateway"][scenario] - latency["direct"][scenario]
            out.append(_target(f"{scenario} added p50 latency, ms", added, "<=", 0.10))
        multi = [name for name in rows if name.startswith("gateway x")]
        if multi:
            scale = rps(multi[0], scenario) / rps("gateway", scenario)
            out.append(_target(f"{scenario} throughput, {multi[0]} vs 1 worker", scale, ">=", 1.7))
            efficiency = per_cpu(multi[0], scenario) / per_cpu("gateway", scenario)
            out.append(
                f"  - for comparison, req per CPU-second, {multi[0]} vs 1 worker: "
                f"{efficiency:.2f} (1.00: the workers cost each other nothing, so the "
                "throughput ratio is bounded by the CPU that wrk and the upstream leave)"
            )
        if "gateway tls" in rows:
            cost = 1e6 / per_cpu("gateway tls", scenario) - 1e6 / per_cpu("gateway", scenario)
            line = f"  - TLS on the listener costs the gateway {cost:.0f} µs of CPU per {scenario}"
            if "nginx+njs tls" in rows:
                njs_cost = 1e6 / per_cpu("nginx+njs tls", scenario) - 1e6 / per_cpu(
                    "nginx+njs", scenario
                )
                line += f" (nginx+njs: {njs_cost:.0f} µs)"
            out.append(line)
    if rss:
        out.append(_target("max RSS of one process, MB", max(rss), "<", 60))
        settled = rss[min(4, len(rss) - 1)]
        growth = (rss[-1] - settled) / settled * 100
        out.append(_target("RSS growth from 5 s to the end, %", growth, "<=", 5))
    return out


def _target(what: str, value: float, op: str, goal: float) -> str:
    met = value >= goal if op == ">=" else value <= goal
    return f"- {what}: {value:.3f} (target {op} {goal}) — {'met' if met else 'NOT met'}"


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="also a gateway with N workers")
    parser.add_argument("--soak", type=float, default=60, help="seconds of RSS sampling")
    parser.add_argument(
        "--no-floor",
        dest="floor",
        action="store_false",
        help="leave out the stack-floor reference row (bench/floor_proxy.py)",
    )
    parser.add_argument(
        "--no-tls",
        dest="tls",
        action="store_false",
        help="leave out the rows with TLS on the listener (gateway tls, nginx+njs tls)",
    )
    parser.add_argument(
        "--limits",
        action="store_true",
        help="add the rows with rate limits that never refuse: in the process (gateway "
        "local limits) and in a local Redis (gateway redis limits)",
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s, 10 s soak")
    parser.add_argument(
        "--rows",
        help="only these rows, comma-separated (e.g. 'gateway,nginx+njs,stack floor'): "
        "for measuring one change quickly; the full run keeps every row",
    )
    parser.add_argument("--output", type=Path, default=BENCH / "RESULTS.md")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration, args.soak = 1, 3, 10
    problems = ensure_tools()
    if "wrk" in problems or "nginx" in problems:
        print("\n".join(problems.values()), file=sys.stderr)
        return 1
    skipped = [problems["njs"]] if "njs" in problems else []
    versions = "; ".join(
        [
            version(["nginx", "-v"]),
            version(["wrk", "--version"]),
            f"njs module {'yes' if NJS_MODULE.exists() else 'no'}",
        ]
    )
    with tempfile.TemporaryDirectory(prefix="aleacc-bench-") as tmp:
        workdir = Path(tmp)
        servers: list[Server] = []
        try:
            upstream = start_nginx("upstream", "upstream.conf", workdir)
            servers.append(upstream)
            rows_servers: list[Server] = []
            wanted = set(args.rows.split(",")) if args.rows else None

            def want(name: str) -> bool:
                return wanted is None or name in wanted

            if want("plain-nginx"):
                rows_servers.append(
                    start_nginx(
                        "plain-nginx", "plain-proxy.conf", workdir, upstream_port=upstream.port
                    )
                )
            if "njs" not in problems and want("nginx+njs"):
                rows_servers.append(
                    start_nginx(
                        "nginx+njs",
                        "njs-proxy.conf",
                        workdir,
                        upstream_port=upstream.port,
                        api_id=API_ID,
                        secret=SECRET,
                        ssl="",
                        tls="",
                    )
                )
            if want("gateway"):
                rows_servers.append(start_gateway(workdir, upstream.port, 1))
            if args.tls:
                cert, key = make_certificate(workdir)
                if want("gateway tls"):
                    rows_servers.append(start_gateway(workdir, upstream.port, 1, (cert, key)))
                if "njs" not in problems and want("nginx+njs tls"):
                    rows_servers.append(
                        start_nginx(
                            "nginx+njs tls",
                            "njs-proxy.conf",
                            workdir,
                            upstream_port=upstream.port,
                            api_id=API_ID,
                            secret=SECRET,
                            ssl=" ssl",
                            tls=f"ssl_certificate {cert}; ssl_certificate_key {key}; "
                            "ssl_protocols TLSv1.2 TLSv1.3;",
                        )
                    )
            if args.workers > 1 and want(f"gateway x{args.workers}"):
                rows_servers.append(start_gateway(workdir, upstream.port, args.workers))
            if args.limits:
                if want("gateway local limits"):
                    rows_servers.append(start_gateway(workdir, upstream.port, 1, limits="local"))
                if want("gateway redis limits"):
                    redis = start_redis(workdir)
                    servers.append(redis)
                    store = f"redis://127.0.0.1:{redis.port}/0"
                    rows_servers.append(start_gateway(workdir, upstream.port, 1, limits=store))
            if args.floor and want(FLOOR):
                rows_servers.append(start_floor(upstream.port))
            servers += rows_servers
            for server in rows_servers:  # warm-up: connections, caches, the JIT-less paths
                wrk(target(server, "GET"), args.connections, args.threads, 2)
            rows: dict[str, dict[str, list[Sample]]] = {
                s.name: {scenario: [] for scenario in SCENARIOS} for s in rows_servers
            }
            for round_number in range(args.rounds):
                shift = round_number % len(rows_servers)
                order = rows_servers[shift:] + rows_servers[:shift]  # drift hits every row alike
                for scenario in SCENARIOS:
                    for server in order:
                        sample = measure(server, scenario, args)
                        rows[server.name][scenario].append(sample)
                        print(
                            f"round {round_number + 1} {scenario:4} {server.name:12} "
                            f"{sample.rps:9,.0f} req/s {sample.per_cpu_s:9,.0f} req/CPU-s "
                            f"p50 {sample.p50_ms:.2f} ms p99 {sample.p99_ms:.2f} ms",
                            flush=True,
                        )
            latency = {}
            for server in [upstream, *rows_servers]:
                name = "direct" if server is upstream else server.name
                latency[name] = {
                    scenario: statistics.median(
                        wrk(target(server, scenario), 1, 1, 2, SCENARIOS[scenario][0]).p50_ms
                        for _ in range(3)
                    )
                    for scenario in ("GET", "POST")
                }
            signers = [s for s in rows_servers if s.name not in ("plain-nginx", FLOOR)]
            signatures = verify_signatures(workdir / "upstream.sample.log", signers)
            gateway_one = next((s for s in rows_servers if s.name == "gateway"), None)
            rss = soak(gateway_one, args.soak, args) if gateway_one and args.soak > 0 else []
        finally:
            for server in servers:
                server.stop()
    text = report(
        args,
        {"rows": rows, "latency": latency, "signatures": signatures, "rss": rss,
         "versions": versions, "skipped": skipped},
    )  # fmt: skip
    args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
