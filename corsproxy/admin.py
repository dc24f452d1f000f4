"""The admin listener (SPEC 6): /healthz, /readyz, /metrics, /config."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from corsproxy.metrics import CONTENT_TYPE


@dataclass(frozen=True)
class AdminView:
    """What the admin endpoints read; each is a callable so they always see the present."""

    ready: Callable[[], bool]
    metrics: Callable[[], bytes]
    config: Callable[[], dict[str, Any]]


def make_admin_app(view: AdminView) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        if view.ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    async def metrics(request: web.Request) -> web.Response:
        response = web.Response(body=view.metrics())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    async def config(request: web.Request) -> web.Response:
        return web.Response(
            text=json.dumps(view.config(), indent=2, default=str) + "\n",
            content_type="application/json",
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/config", config)
    return app


async def start_admin(view: AdminView, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(make_admin_app(view), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
