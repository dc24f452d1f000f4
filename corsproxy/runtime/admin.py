"""The admin listener (docs/operations.md): /healthz, /readyz, /metrics, /config, and the live page
(``/`` with ``/admin.css`` and ``/admin.js``, its data at ``/state.json``; see observe/live.py; its
suggested rules at ``/suggest.json`` and ``/suggest.yaml``, see observe/traffic.py).

Served by the proxy's own HTTP/1.1 listener: four fixed answers do not need a web framework,
and a worker that never sees a WebSocket then never loads aiohttp (about 11 MiB per process).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from corsproxy.http.listener import TEXT_PLAIN, ClientConnection, Exchange, Listener
from corsproxy.observe.metrics import CONTENT_TYPE

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
    state: Callable[[], dict[str, Any]] | None = None  # /state.json; None: no live page
    sample: Callable[[], object] | None = None  # called once a second (live.LiveState.sample)
    # /suggest.json and /suggest.yaml, given --min-count (traffic.Suggester.suggestion)
    suggestion: Callable[[int], dict[str, Any]] | None = None


# The live page: its own files only (no inline script or style), read-only, never framed.
PAGE_HEADERS = [
    b"Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; "
    b"connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
    b"frame-ancestors 'none'\r\n",
    b"X-Content-Type-Options: nosniff\r\n",
    b"Referrer-Policy: no-referrer\r\n",
    b"Cache-Control: no-store\r\n",
]
PAGE_FILES = {
    "/": ("admin.html", "text/html; charset=utf-8"),
    "/admin.css": ("admin.css", "text/css; charset=utf-8"),
    "/admin.js": ("admin.js", "text/javascript; charset=utf-8"),
}
VIEWED = 90.0  # seconds the rates keep being sampled after the page was last read
SUGGEST_PATHS = frozenset({"/suggest.json", "/suggest.yaml"})
LIVE_PATHS = frozenset({"/state.json", *PAGE_FILES, *SUGGEST_PATHS})
PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/config", *LIVE_PATHS})
YAML = "application/yaml; charset=utf-8"


@functools.cache
def page_file(name: str) -> bytes:
    """A file of the live page, shipped in the package (corsproxy/static)."""
    return resources.files("corsproxy").joinpath("static", name).read_bytes()


def admin_answer(view: AdminView, method: str, target: str) -> tuple[int, str, bytes]:
    """Status, content type and body for one admin request."""
    path = target.split("?", 1)[0]
    if path not in PATHS or (view.state is None and path in LIVE_PATHS):
        return 404, TEXT, b"404: Not Found\n"
    if path in SUGGEST_PATHS and view.suggestion is None:
        return 404, TEXT, b"404: Not Found\n"
    if method not in ("GET", "HEAD"):
        return 405, TEXT, b"405: Method Not Allowed\n"
    if path in PAGE_FILES:
        name, content_type = PAGE_FILES[path]
        return 200, content_type, page_file(name)
    if path == "/state.json":
        assert view.state is not None
        return 200, JSON, json.dumps(view.state(), separators=(",", ":")).encode()
    if path in SUGGEST_PATHS:
        assert view.suggestion is not None
        return suggestion_answer(view.suggestion, path, target)
    if path == "/healthz":
        return 200, TEXT, b"ok\n"
    if path == "/readyz":
        return (200, TEXT, b"ready\n") if view.ready() else (503, TEXT, b"not ready\n")
    if path == "/metrics":
        return 200, CONTENT_TYPE, view.metrics()
    body = json.dumps(view.config(), indent=2, default=str) + "\n"
    return 200, JSON, body.encode()


def suggestion_answer(
    suggestion: Callable[[int], dict[str, Any]], path: str, target: str
) -> tuple[int, str, bytes]:
    """``?min_count=N`` as ``corsproxy suggest --min-count N`` (default 1)."""
    query = parse_qs(target.partition("?")[2])
    given = query.get("min_count", ["1"])[-1]
    if not given.isdigit() or not 1 <= int(given) <= 1_000_000_000:
        return 400, TEXT, b"400: min_count must be a whole number, 1 or more\n"
    found = suggestion(int(given))
    if path == "/suggest.json":
        return 200, JSON, json.dumps(found, separators=(",", ":")).encode()
    if found["error"]:
        return 500, TEXT, f"500: {found['error']}\n".encode()
    return 200, YAML, found["yaml"].encode()


class AdminServer:
    def __init__(self, view: AdminView) -> None:
        self.view = view
        self.listener = Listener(self.handle, _ignore, _ignore, IDLE)
        self.port = 0
        self.sampler: asyncio.Future[None] | None = None
        self.viewed_at = 0.0  # when /state.json was last read (loop time)

    def handle(self, request: Exchange, conn: ClientConnection) -> None:
        if request.invalid is not None:  # refused by the listener (malformed, over a limit)
            status, reason = request.invalid
            conn.answer(request, status, [TEXT_PLAIN], f"{reason}\n".encode())
            return
        status, content_type, body = admin_answer(self.view, request.method, request.target)
        lines = [f"Content-Type: {content_type}\r\n".encode()]
        if status == 405:
            lines.append(b"Allow: GET, HEAD\r\n")
        elif status == 200 and request.target.split("?", 1)[0] in LIVE_PATHS:
            lines += PAGE_HEADERS
            if request.target.startswith("/state.json"):
                self.viewed()
        conn.answer(request, status, lines, body)

    def viewed(self) -> None:
        """The page is open: sample the rates while it is read, and not otherwise."""
        loop = asyncio.get_running_loop()
        self.viewed_at = loop.time()
        if self.sampler is None and self.view.sample is not None:
            self.sampler = asyncio.ensure_future(self.sampling())

    async def sampling(self) -> None:
        """Once a second while someone reads /state.json (and VIEWED seconds after), for the
        live page's per-second rates (a failure skips one): an admin listener nobody looks
        at does no work."""
        assert self.view.sample is not None
        loop = asyncio.get_running_loop()
        try:
            while loop.time() - self.viewed_at < VIEWED:
                with contextlib.suppress(Exception):
                    self.view.sample()
                await asyncio.sleep(1.0)
        finally:
            self.sampler = None

    async def cleanup(self) -> None:
        if self.sampler is not None:
            self.sampler.cancel()
        await self.listener.close(SHUTDOWN)


def _ignore(*_: object) -> None:
    pass


async def start_admin(view: AdminView, host: str, port: int) -> AdminServer:
    server = AdminServer(view)
    server.port = await server.listener.start(host, port, reuse_address=True)
    return server
