#!/usr/bin/env python3
"""A plain aiohttp + uvloop CORS proxy: the peer of docs/performance.md#targets.

What someone would write in an afternoon: aiohttp's web server, one pooled ``ClientSession``,
the same rules as the benchmark's corsproxy and nginx configs (one allowed origin with
credentials, preflights answered 204, upstream ``Access-Control-*`` hidden, others 403).
It checks nothing else (no path normalisation, no hop-by-hop handling), so it does less
work per request than corsproxy. Used only by benchmarks/run.py.

    python benchmarks/plain_aiohttp_proxy.py PORT UPSTREAM_URL ORIGIN
"""

from __future__ import annotations

import sys

import aiohttp
import uvloop
from aiohttp import web

PREFLIGHT = {
    "Access-Control-Allow-Methods": "GET, HEAD, POST, PUT",
    "Access-Control-Allow-Headers": "Content-Type, X-Request-ID",
    "Access-Control-Max-Age": "600",
    "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
}
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}


def main() -> None:
    port, upstream, allowed = int(sys.argv[1]), sys.argv[2], sys.argv[3]

    async def handle(request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is not None and origin != allowed:
            return web.Response(status=403)
        cors = {"Access-Control-Allow-Origin": allowed, "Access-Control-Allow-Credentials": "true"}
        if request.method == "OPTIONS" and origin is not None:
            return web.Response(status=204, headers={**cors, **PREFLIGHT})
        session: aiohttp.ClientSession = request.app["session"]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        async with session.request(
            request.method,
            upstream + request.path_qs,
            headers=headers,
            data=request.content if request.body_exists else None,
            allow_redirects=False,
        ) as resp:
            response = web.StreamResponse(status=resp.status)
            for k, v in resp.headers.items():
                if k.lower() not in HOP and not k.lower().startswith("access-control-"):
                    response.headers.add(k, v)
            if origin is not None:
                response.headers.update(cors)
                response.headers["Vary"] = "Origin"
            await response.prepare(request)
            async for chunk in resp.content.iter_chunked(256 * 1024):
                await response.write(chunk)
            await response.write_eof()
            return response

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
        )
        yield
        await app["session"].close()

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", handle)
    loop = uvloop.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
