"""The stack's floor: aiohttp's low-level server and the gateway's upstream pool, no more.

No checks, no signing, no client IP, no metrics and no log line: what a proxy built on
this stack costs before it does any of the gateway's own work. bench/run.py measures it
as a reference row, so the report shows how much of a gateway request is the stack and
how much is the gateway. Never something to deploy.

    python bench/floor_proxy.py PORT UPSTREAM_PORT
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import uvloop
from aiohttp import web
from yarl import URL

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.egress import Direct
from gateway.pool import Pool, framed_head


async def serve(port: int, upstream_port: int) -> None:
    pool = Pool(
        Direct(URL(f"http://127.0.0.1:{upstream_port}"), connect_timeout_s=2),
        max_connections=256,
        timeout_s=10,
        idle_timeout_s=4,
    )

    async def handle(request: web.BaseRequest) -> web.Response:
        body = await request.read()
        lines = [b"Host: 127.0.0.1:%d" % upstream_port]
        if request.content_type:
            lines.append(b"Content-Type: " + request.content_type.encode())
        head = framed_head(request.method, request.raw_path, lines, len(body))
        answer = await pool.request(head, body, method=request.method)
        try:
            content = await answer.read()
        finally:
            answer.release()
        return web.Response(
            status=answer.status, body=content, content_type=answer.headers.get("Content-Type")
        )

    runner = web.ServerRunner(web.Server(handle), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), int(sys.argv[2])))
