"""The admin listener (SPEC 6): /healthz, /readyz, /metrics, /config.

Served by the proxy's own HTTP/1.1 listener: four fixed answers do not need a web framework,
and a worker that never sees a WebSocket then never loads aiohttp (about 11 MiB per process).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from corsproxy.config import BUILTIN_CORS
from corsproxy.listener import TEXT_PLAIN, ClientConnection, Exchange, Listener
from corsproxy.metrics import CONTENT_TYPE
from corsproxy.policy import Settings

TEXT = "text/plain; charset=utf-8"
JSON = "application/json; charset=utf-8"
IDLE = 75.0
SHUTDOWN = 5.0


@dataclass(frozen=True)
class AdminView:
    """What the admin endpoints read; each is a callable so they always see the present."""

    ready: Callable[[], bool]
    metrics: Callable[[], bytes]
    config: Callable[[], dict[str, Any]]


def admin_answer(view: AdminView, method: str, target: str) -> tuple[int, str, bytes]:
    """Status, content type and body for one admin request."""
    path = target.split("?", 1)[0]
    if path not in ("/healthz", "/readyz", "/metrics", "/config"):
        return 404, TEXT, b"404: Not Found\n"
    if method not in ("GET", "HEAD"):
        return 405, TEXT, b"405: Method Not Allowed\n"
    if path == "/healthz":
        return 200, TEXT, b"ok\n"
    if path == "/readyz":
        return (200, TEXT, b"ready\n") if view.ready() else (503, TEXT, b"not ready\n")
    if path == "/metrics":
        return 200, CONTENT_TYPE, view.metrics()
    body = json.dumps(view.config(), indent=2, default=str) + "\n"
    return 200, JSON, body.encode()


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def config_view(settings: Settings) -> dict[str, Any]:
    """Every setting in force, defaults included, as /config shows it: the top-level keys
    (the running ``listen``, ``admin``, ``workers``, ``tls``), every timeout, ``defaults``
    with every CORS key, and each route with its name, upstream and whole CORS policy (its
    own keys over ``defaults``). Values are as written (origins, upstream URLs, TLS paths)."""
    written = settings.effective if isinstance(settings.effective, dict) else {}
    given = written.get("defaults")
    defaults = {k: list(v) if isinstance(v, tuple) else v for k, v in BUILTIN_CORS.items()}
    if isinstance(given, dict):
        defaults.update(given)
    upstream = written.get("upstream")
    entries = written.get("routes") if isinstance(written.get("routes"), list) else []
    compiled = settings.table.routes
    routes = []
    for index, entry in enumerate(entries):
        entry = entry if isinstance(entry, dict) else {}
        name = compiled[index].name if len(compiled) == len(entries) else entry.get("name")
        cors = entry.get("cors")
        routes.append(
            {
                "name": name,
                "path": entry.get("path"),
                "host": entry.get("host"),
                "upstream": entry.get("upstream", upstream),
                "cors": cors
                if cors == "passthrough"
                else {**defaults, **(cors if isinstance(cors, dict) else {})},
            }
        )
    tls = None
    if settings.tls is not None:
        shown = written.get("tls")
        tls = shown if isinstance(shown, dict) else dataclasses.asdict(settings.tls)
    return {
        "listen": host_port(settings.listen_host, settings.listen_port),
        "upstream": upstream,
        "admin": host_port(*settings.admin) if settings.admin is not None else None,
        "workers": settings.workers,
        "tls": tls,
        "timeouts": dataclasses.asdict(settings.timeouts),
        "preserve_host": settings.preserve_host,
        "trust_forwarded": settings.trust_forwarded,
        "access_log": settings.access_log,
        "defaults": defaults,
        "routes": routes,
    }


class AdminServer:
    def __init__(self, view: AdminView) -> None:
        self.view = view
        self.listener = Listener(self.handle, _ignore, _ignore, IDLE)

    def handle(self, request: Exchange, conn: ClientConnection) -> None:
        if request.invalid is not None:  # refused by the listener (malformed, over a limit)
            status, reason = request.invalid
            conn.answer(request, status, [TEXT_PLAIN], f"{reason}\n".encode())
            return
        status, content_type, body = admin_answer(self.view, request.method, request.target)
        lines = [f"Content-Type: {content_type}\r\n".encode()]
        if status == 405:
            lines.append(b"Allow: GET, HEAD\r\n")
        conn.answer(request, status, lines, body)

    async def cleanup(self) -> None:
        await self.listener.close(SHUTDOWN)


def _ignore(*_: object) -> None:
    pass


async def start_admin(view: AdminView, host: str, port: int) -> AdminServer:
    server = AdminServer(view)
    await server.listener.start(host, port, reuse_address=True)
    return server
