"""A tiny upstream for ``corsproxy demo``: it answers with what it received, as JSON.

``?echo_cors=1`` makes it send its own permissive Access-Control-* headers, the classic
mistake the proxy exists to neutralise, so the stripping is visible. A WebSocket upgrade
is echoed message by message.
"""

from __future__ import annotations

from aiohttp import WSMsgType, web


async def echo(request: web.BaseRequest) -> web.StreamResponse:
    if request.headers.get("Upgrade", "").lower() == "websocket":
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws
    body = await request.read()
    response = web.json_response(
        {
            "method": request.method,
            "path": request.raw_path.partition("?")[0],
            "query": request.query_string,
            "headers": [[name, value] for name, value in request.headers.items()],
            "body_bytes": len(body),
        }
    )
    response.headers["X-Request-ID"] = request.headers.get("X-Request-ID", "echo-1")
    if request.query.get("echo_cors"):
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers["Access-Control-Allow-Methods"] = "*"
    return response


async def start_echo(host: str = "127.0.0.1", port: int = 0) -> tuple[web.ServerRunner, int]:
    runner = web.ServerRunner(web.Server(echo, access_log=None))
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner, runner.addresses[0][1]


def main(argv: list[str] | None = None) -> int:
    """``python -m corsproxy.tools.echo [--listen HOST:PORT]``: the echo upstream alone.

    For docker-compose.yml (the example upstream behind the proxy) and manual tests; `SIGTERM`
    and `SIGINT` stop it with exit status 0.
    """
    import argparse
    import asyncio
    import signal
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m corsproxy.echo", description="the corsproxy demo's echo upstream"
    )
    parser.add_argument(
        "--listen", default="127.0.0.1:3000", metavar="HOST:PORT", help="default 127.0.0.1:3000"
    )
    args = parser.parse_args(argv)
    host, sep, port = args.listen.rpartition(":")
    if not sep or not port.isdigit():
        parser.error(f"--listen: expected HOST:PORT, got {args.listen!r}")
    host = host.strip("[]") or "0.0.0.0"

    async def run() -> None:
        runner, bound = await start_echo(host, int(port))
        print(f"echo upstream listening on {host}:{bound}", file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    try:
        asyncio.run(run())
    except OSError as exc:
        message = exc.strerror or exc
        print(f"echo: error: cannot listen on {args.listen}: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
